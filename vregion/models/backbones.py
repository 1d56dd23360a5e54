"""Vision backbone registry: kebab-case ids -> builders of image encoders.

A backbone turns images into a sequence of patch features that the projector maps into the LLM's
embedding space. Every backbone exposes the same small interface (`VisionBackbone`), so the VLM and the
data pipeline (which needs the resolution and normalisation) never branch on the backbone type.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from vregion.config import VisionConfig
from vregion.models.checkpoint import architecture_only
from vregion.models.efficientnet import build_efficientnet_lite0

# OpenAI CLIP's normalisation (also used by LLaVA-1.5's CLIP ViT-L/14-336); SigLIP maps pixels to [-1, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# Small enough for unit tests on CPU; 32 px / patch 8 gives 16 visual tokens per image.
TINY_VIT_DEFAULTS = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)


class VisionBackbone(nn.Module):
    """Interface of every backbone: images (M, 3, H, W) -> features (M, num_tokens, hidden_size).

    Attributes set by subclasses:
        num_tokens: visual tokens per image (what the data pipeline reserves in the text).
        hidden_size: feature width (the projector's input width).
        image_size: square input resolution the pipeline must resize to.
        image_mean, image_std: per-channel normalisation the pipeline must apply.
        image_aspect: how the pipeline makes a non-square image square (squash | pad | crop; set by
            `build_vision_backbone` from the config, so evaluation preprocesses as training did).
    """

    num_tokens: int
    hidden_size: int
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    image_aspect: str = "squash"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class HFViTBackbone(VisionBackbone):
    """A Hugging Face ViT tower (CLIP, SigLIP) read at one hidden layer, prefix (CLS) tokens dropped."""

    def __init__(
        self,
        model: nn.Module,
        feature_layer: int,
        num_prefix_tokens: int,
        image_mean: tuple[float, float, float],
        image_std: tuple[float, float, float],
        image_size: int | None = None,
    ):
        super().__init__()
        self.model = model
        self.feature_layer = feature_layer
        self.num_prefix_tokens = num_prefix_tokens
        config = model.config
        num_layers = config.num_hidden_layers
        # hidden_states holds num_layers + 1 entries (the embeddings first); reject indices outside it now.
        if not -(num_layers + 1) <= feature_layer <= num_layers:
            raise ValueError(
                f"vision feature_layer {feature_layer} out of range for a {num_layers}-layer tower "
                f"(valid: {-(num_layers + 1)}..{num_layers})"
            )
        self.image_size = image_size or config.image_size
        if self.image_size < config.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than one patch ({config.patch_size})")
        # A resolution other than the pretrained one needs interpolated position embeddings.
        self.interpolate = self.image_size != config.image_size
        # The patch embedding is a stride-`patch` convolution without padding: a side that is not a multiple of the
        # patch drops its last pixels (SigLIP-so400m: 384 px / 14 -> 27 x 27 = 729 tokens, as the tower was trained).
        self.num_tokens = (self.image_size // config.patch_size) ** 2
        self.hidden_size = config.hidden_size
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (M, 3, H, W), already normalised -> (M, num_tokens, hidden_size)."""
        pixel_values = pixel_values.to(self.model.dtype)
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
        out = self.model(pixel_values=pixel_values, output_hidden_states=True, **kwargs)
        hidden = out.hidden_states[self.feature_layer]  # (M, prefix + num_tokens, hidden)
        return hidden[:, self.num_prefix_tokens :]  # (M, num_tokens, hidden)


def _load_hf_tower(cfg: VisionConfig, model_cls: type, config_cls: type, tiny_defaults: dict) -> nn.Module:
    """The HF tower from cfg.path (folder or hub id), its architecture only for a folder without weights, or,
    with cfg.tiny, from a random tiny config."""
    if cfg.tiny is not None:
        overrides = dict(cfg.tiny)
        if cfg.image_size is not None:
            overrides.setdefault("image_size", cfg.image_size)
        return model_cls(config_cls(**(tiny_defaults | overrides)))
    if cfg.path is None:
        raise ValueError("model.vision needs either `path` (HF folder or hub id) or `tiny` (random config)")
    if architecture_only(cfg.path):
        return model_cls(config_cls.from_pretrained(cfg.path))
    return model_cls.from_pretrained(cfg.path)


def build_clip(cfg: VisionConfig) -> VisionBackbone:
    """CLIP ViT (e.g. openai/clip-vit-large-patch14-336); the CLS token is dropped as in LLaVA."""
    model = _load_hf_tower(cfg, CLIPVisionModel, CLIPVisionConfig, TINY_VIT_DEFAULTS)
    return HFViTBackbone(model, cfg.feature_layer, 1, CLIP_MEAN, CLIP_STD, cfg.image_size)


def build_siglip(cfg: VisionConfig) -> VisionBackbone:
    """SigLIP ViT (e.g. google/siglip-so400m-patch14-384); it has no CLS token."""
    # The attention-pooling head is unused (we read patch tokens), so tiny towers skip it.
    model = _load_hf_tower(cfg, SiglipVisionModel, SiglipVisionConfig, TINY_VIT_DEFAULTS | {"vision_use_head": False})
    return HFViTBackbone(model, cfg.feature_layer, 0, SIGLIP_MEAN, SIGLIP_STD, cfg.image_size)


BACKBONES: dict[str, Callable[[VisionConfig], VisionBackbone]] = {
    "clip": build_clip,
    "siglip": build_siglip,
    "efficientnet-lite0": build_efficientnet_lite0,  # the CPU demo's ImageNet CNN (49 tokens at 224 px)
}


def build_vision_backbone(cfg: VisionConfig) -> VisionBackbone:
    """Build the backbone named by cfg.type; an unknown id fails with the list of valid ones."""
    if cfg.type not in BACKBONES:
        raise ValueError(f"unknown vision backbone '{cfg.type}'; valid ids: {', '.join(sorted(BACKBONES))}")
    if cfg.feature_blocks is not None and cfg.type in ("clip", "siglip"):
        raise ValueError(f"vision feature_blocks applies to CNN towers (efficientnet-lite0); a {cfg.type} tower "
                         f"reads one hidden state, chosen by feature_layer")
    backbone = BACKBONES[cfg.type](cfg)
    backbone.image_aspect = cfg.image_aspect
    return backbone

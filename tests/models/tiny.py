"""Tiny configs shared by the model tests: every model here builds in well under a second on CPU."""

from __future__ import annotations

import torch

from vregion.config import LLMConfig, ModelConfig, ProjectorConfig, VisionConfig

# Tiny LLM variants that exercise every code path of the runner: plain causal (llama), per-layer sliding
# windows (qwen2 with use_sliding_window), and Gemma3's local/global rotary bases plus logit soft-capping.
LLM_VARIANTS = {
    "llama": {"family": "llama"},
    "qwen2": {"family": "qwen2", "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
    "gemma3": {"family": "gemma3", "final_logit_softcapping": 5.0},
}


def tiny_model_config(llm: str = "llama", vision: str = "clip", projector: str = "mlp2x_gelu", **kw) -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(type=vision, tiny={}),
        projector=ProjectorConfig(type=projector),
        llm=LLMConfig(tiny=dict(LLM_VARIANTS[llm])),
        **kw,
    )


def padded_mask(batch: int, length: int, padding: str) -> torch.Tensor:
    """(B, T) attention mask: row 0 full, rows 1.. padded by 3 and 6 tokens on the given side."""
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pad in zip(range(1, batch), (3, 6)):
        if padding == "right":
            mask[row, length - pad :] = 0
        elif padding == "left":
            mask[row, :pad] = 0
    return mask

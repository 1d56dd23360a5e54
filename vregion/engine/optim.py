"""AdamW over the trainable parameter groups, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from vregion.config import OptimConfig


def build_optimizer(groups: list[dict], cfg: OptimConfig, offload: bool) -> torch.optim.Optimizer:
    """AdamW on the given groups; DeepSpeed's CPU Adam when the optimizer state lives in CPU memory."""
    if not groups:
        raise ValueError("nothing to train: the region config leaves no trainable parameter")
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def lr_multiplier(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Share of each group's peak lr at optimizer step `step` (0-based): linear warmup, then cosine/constant."""
    warmup = int(math.ceil(cfg.warmup_ratio * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule != "cosine":
        raise ValueError(f"optim.schedule must be cosine or constant, got {cfg.schedule!r}")
    progress = (step - warmup) / max(1, total_steps - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """A LambdaLR scaling every group's own peak lr (projector and region keep their ratio)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, cfg))

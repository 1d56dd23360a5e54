"""The compression schedule and inference setting described by a run's `compress` config section."""

from __future__ import annotations

from typing import Optional

from vregion.compress.schedule import (
    Schedule,
    PoolingSetting,
    custom_schedule,
    get_schedule,
    inference_stage,
    parse_pooling,
    scale_layer,
)
from vregion.config import CompressConfig


def build_schedule(cfg: CompressConfig) -> Optional[Schedule]:
    """A preset name, a list of [K, S, fraction] / "K/S" phases, or None/"none" (no compression)."""
    if cfg.schedule is None or cfg.schedule == "none":
        return None
    if isinstance(cfg.schedule, str):
        return get_schedule(cfg.schedule)
    if isinstance(cfg.schedule, list):
        phases = [tuple(p) if isinstance(p, list) else p for p in cfg.schedule]
        return custom_schedule(phases)
    raise ValueError(f"compress.schedule must be a preset name or a list of phases, got {cfg.schedule!r}")


def inference_setting(text: str, where: str = "compress.inference") -> tuple[Optional[int], Optional[int]]:
    """(K, S) of an explicit inference setting "K/S" (K on the 32-layer reference scale) or "none" (None, None).

    Raises:
        ValueError: not "K/S" / "none", K outside [0, 32) or S < 1, naming `where`.
    """
    return parse_pooling(text, where)


def eval_stage(cfg: CompressConfig, schedule: Optional[Schedule], num_layers: int) -> PoolingSetting:
    """Pooling for evaluation: `auto` = the schedule's inference setting, `none`, or an explicit "K/S"."""
    if cfg.inference == "none" or (cfg.inference == "auto" and schedule is None):
        return PoolingSetting(-1, None, None)
    if cfg.inference == "auto":
        return inference_stage(schedule, num_layers=num_layers)
    k, s = inference_setting(cfg.inference)
    return PoolingSetting(-1, None, None) if k is None else PoolingSetting(-1, scale_layer(k, num_layers), s)

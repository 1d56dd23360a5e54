"""One run stage's compression: its schedule, the model's depth and the pooling implementation, built once.

Every caller that needs to know or apply the pooling (the trainer at each step and at held-out evaluation, the
before/after evaluation, `vregion eval`, the HF export check, the bench) asks this object instead of reassembling
`cfg.compress`, the schedule and the depth itself.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from vregion.compress.from_config import build_schedule, eval_stage
from vregion.compress.hook import apply_stage
from vregion.compress.schedule import PoolingSetting, Schedule, stage_at
from vregion.config import CompressConfig, from_dict

UNCOMPRESSED = PoolingSetting(-1, None, None)


class CompressionController:
    """The pooling of one run stage on a `num_layers`-deep LLM.

    Args:
        cfg: the stage's `compress` section (schedule, inference setting, implementation).
        num_layers: the LLM's decoder depth; schedule K values (given for 32 layers) are scaled to it.
    """

    def __init__(self, cfg: CompressConfig, num_layers: int):
        self.cfg = cfg
        self.num_layers = num_layers
        self.schedule: Optional[Schedule] = build_schedule(cfg)

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any], num_layers: int, inference: str = "auto"):
        """From a checkpoint's saved config dict; `inference` other than "auto" replaces its inference setting."""
        cfg = from_dict(CompressConfig, dict(config.get("compress") or {}), "compress")
        if inference != "auto":
            cfg.inference = inference
        return cls(cfg, num_layers)

    def at(self, step: int, total_steps: int) -> PoolingSetting:
        """The training setting for the optimizer step about to run (0-based): a function of the step alone, so
        gradient accumulation cannot shift it and a resumed run lands in the same phase. Without a schedule training
        is uncompressed (a `compress.inference` K/S applies to evaluation and generation only)."""
        if self.schedule is None:
            return UNCOMPRESSED
        return stage_at(self.schedule, step, total_steps, num_layers=self.num_layers)

    @property
    def inference(self) -> PoolingSetting:
        """The setting for evaluation and generation: `compress.inference` (auto = the schedule's own)."""
        return eval_stage(self.cfg, self.schedule, self.num_layers)

    def apply(self, model: Any, setting: PoolingSetting) -> None:
        """Install `setting` on the model's decoder runner (uncompressed removes any pooling)."""
        apply_stage(model, setting, impl=self.cfg.impl)

"""The one DeepSpeed engine factory: trainable groups -> AdamW + lr schedule -> `deepspeed.initialize`.

Training (`StageTrainer`) and `vregion bench` both build their engines here, so a change to ZeRO, the
optimizer or the schedule reaches both at once. The model comes in already built, its region applied.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vregion.config import Config
from vregion import distributed as dist
from vregion.engine.ds_config import build_ds_config
from vregion.engine.optim import build_optimizer, build_scheduler
from vregion.region import build_param_groups


class TrainableGroups(NamedTuple):
    """The optimizer's parameter groups as built: their names (in order, for per-group lr logging) and the
    trainable elements of the whole model (not a rank's ZeRO-3 partition)."""

    names: list[str]
    numel: int


def numel(p: torch.nn.Parameter) -> int:
    """Elements of a parameter, also once ZeRO-3 has partitioned it (its `numel()` is then 0 on every rank)."""
    return getattr(p, "ds_numel", p.numel())


def build_engine(cfg: Config, model: torch.nn.Module, total_steps: int):
    """Wrap `model` (region already applied) in a DeepSpeed engine over its trainable groups only.

    Args:
        total_steps: optimizer steps the lr schedule spans (warmup + cosine).

    Returns:
        (engine, optimizer, lr scheduler, TrainableGroups): the optimizer and scheduler as DeepSpeed wraps
        them; the groups counted before `deepspeed.initialize` partitions parameters under ZeRO-3.
    """
    groups = build_param_groups(model, cfg.optim)
    info = TrainableGroups([g.get("name", str(i)) for i, g in enumerate(groups)],
                           sum(numel(p) for g in groups for p in g["params"]))
    optimizer = build_optimizer(groups, cfg.optim, cfg.deepspeed.offload_optimizer)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    import deepspeed  # slow to import; only where an engine is built

    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=build_ds_config(cfg, dist.world_size())
    )
    return engine, optimizer, scheduler, info

"""The DeepSpeed config dict, derived from vregion's typed config (the only place that knows its schema)."""

from __future__ import annotations

from vregion.config import Config, TrainConfig, deep_merge
from vregion.constants import DTYPES


def grad_accum_steps(train: TrainConfig, world_size: int) -> int:
    """Micro-batches per optimizer step: from `global_batch_size` when set, else `grad_accum`."""
    if train.global_batch_size is None:
        return train.grad_accum
    per_pass = train.micro_batch_size * world_size
    if train.global_batch_size % per_pass:
        raise ValueError(
            f"train.global_batch_size={train.global_batch_size} is not a multiple of "
            f"micro_batch_size x ranks = {train.micro_batch_size} x {world_size}"
        )
    return train.global_batch_size // per_pass


def build_ds_config(cfg: Config, world_size: int) -> dict:
    """DeepSpeed JSON for this run: batch sizes, ZeRO stage/offload, precision, clipping."""
    ds, train = cfg.deepspeed, cfg.train
    accum = grad_accum_steps(train, world_size)
    if ds.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {ds.zero_stage}")
    if ds.precision not in DTYPES:
        raise ValueError(f"deepspeed.precision must be bf16, fp16 or fp32, got {ds.precision!r}")
    if ds.offload_params and ds.zero_stage != 3:
        raise ValueError("deepspeed.offload_params needs zero_stage 3")
    zero: dict = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero.update(overlap_comm=False, contiguous_gradients=True, reduce_bucket_size=5e8)
    if ds.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_param_persistence_threshold=1e4)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    config = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "train_batch_size": train.micro_batch_size * accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10**9,  # vregion logs its own metrics
        "wall_clock_breakdown": False,
        # vregion builds its own AdamW over the trainable groups only (frozen weights get no state).
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }
    return deep_merge(config, ds.extra)

"""Visual context compression (LLaVolta): pool visual tokens between decoder layers on a stage schedule.

- `pooling`: the pure-PyTorch reference (the spec): gather plan + row averaging + positions/labels/spans.
- `dispatch`: the same API with the hidden states pooled by the fused Triton kernel on CUDA.
- `schedule`: presets and custom schedules; the active stage as a function of the optimizer step.
- `hook`: install a (layer, stride) on a model's decoder runner.
- `controller`: one run stage's compression (schedule + depth + implementation), built once per stage.
"""

from vregion.compress.controller import UNCOMPRESSED, CompressionController

from vregion.compress.dispatch import IMPLS, pool_rows, pool_visual_spans, resolve_impl
from vregion.compress.from_config import build_schedule, eval_stage
from vregion.compress.hook import CompressionHook, apply_stage, get_compression, set_compression
from vregion.compress.pooling import IGNORE_INDEX, PooledSequence, PoolPlan, apply_plan, plan_pooling
from vregion.compress.schedule import (
    PRESETS,
    REFERENCE_LAYERS,
    Phase,
    Schedule,
    PoolingSetting,
    compression_ratio,
    custom_schedule,
    get_schedule,
    inference_stage,
    parse_pooling,
    scale_layer,
    stage_at,
    stage_boundaries,
)

__all__ = [
    "UNCOMPRESSED",
    "CompressionController",
    "build_schedule",
    "eval_stage",
    "IGNORE_INDEX",
    "IMPLS",
    "PRESETS",
    "REFERENCE_LAYERS",
    "CompressionHook",
    "Phase",
    "PoolPlan",
    "PooledSequence",
    "Schedule",
    "PoolingSetting",
    "apply_plan",
    "apply_stage",
    "compression_ratio",
    "custom_schedule",
    "get_compression",
    "get_schedule",
    "inference_stage",
    "parse_pooling",
    "plan_pooling",
    "pool_rows",
    "pool_visual_spans",
    "resolve_impl",
    "scale_layer",
    "set_compression",
    "stage_at",
    "stage_boundaries",
]

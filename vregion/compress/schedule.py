"""Compression schedules: which (layer K, stride S) is active at each optimizer step, as pure functions.

A schedule is a list of phases "K/S" (or "none") with the fraction of training each takes. LLaVolta's
presets split training evenly; their K values are for 32-layer LLMs and are scaled to the model's depth
(`scale_layer`). The stage is a function of the *optimizer* step, not of forward calls, so gradient
accumulation does not shift the stage pivots, and a resumed run (which restores its step) resumes the
stage too; nothing schedule-related needs saving in checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence, Union

REFERENCE_LAYERS = 32  # depth the preset K values are given for (LLaVA-1.5-7B's Vicuna)

# Preset -> phases, training split evenly; the inference setting is the last phase's (none but last-stage).
PRESETS: dict[str, tuple[str, ...]] = {
    "two": ("2/8", "none"),
    "three-deeper": ("2/8", "16/8", "none"),
    "three-wider": ("2/8", "2/2", "none"),
    "four-wider-then-deeper": ("2/8", "2/2", "16/2", "none"),  # the reference code's default
    "four-deeper-then-wider": ("2/8", "16/8", "16/2", "none"),
    "last-stage-compression": ("2/16", "16/16", "16/4"),  # inference keeps 16/4
}


@dataclass(frozen=True)
class Phase:
    """One schedule entry: compress at layer K with stride S (both None: uncompressed) for a fraction of training."""

    layer: Optional[int]
    stride: Optional[int]
    fraction: float

    def __str__(self) -> str:
        return "none" if self.layer is None else f"{self.layer}/{self.stride}"


@dataclass(frozen=True)
class Schedule:
    """Phases in training order; K values refer to a `reference_layers`-deep LLM."""

    name: str
    phases: tuple[Phase, ...]
    inference: tuple[Optional[int], Optional[int]]  # (K, S) used after training; (None, None) = uncompressed
    reference_layers: int = REFERENCE_LAYERS


@dataclass(frozen=True)
class PoolingSetting:
    """The active setting: `layer` K (scaled to the model when num_layers was given) and stride S, or None, None.

    `index` is the phase's position in the schedule (-1 for the inference setting).
    """

    index: int
    layer: Optional[int]
    stride: Optional[int]

    @property
    def compressed(self) -> bool:
        return self.layer is not None

    def __str__(self) -> str:
        return "none" if self.layer is None else f"{self.layer}/{self.stride}"


PhaseSpec = Union[str, Sequence]  # "K/S" | "none" | (K, S, fraction) | (None, None, fraction)


def _setting(layer: Optional[int], stride: Optional[int], reference_layers: int, where: str):
    """Validate one (K, S); S = 1 and K = None both mean uncompressed and normalise to (None, None)."""
    if stride == 1 or (layer is None and stride is None):
        return None, None
    if layer is None or stride is None:
        raise ValueError(f"{where}: give both K and S, or neither for an uncompressed phase")
    if not isinstance(layer, int) or not 0 <= layer < reference_layers:
        raise ValueError(f"{where}: K must be an int in [0, {reference_layers}) (0 pools before the LLM), got {layer}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"{where}: S must be an int >= 1, got {stride}")
    return layer, stride


def _split_setting(text: str, where: str) -> tuple[Optional[int], Optional[int]]:
    if text.strip().lower() == "none":
        return None, None
    try:
        k, s = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"{where}: expected 'K/S' or 'none', got '{text}'") from None
    return k, s


def parse_pooling(text: str, where: str,
                  reference_layers: int = REFERENCE_LAYERS) -> tuple[Optional[int], Optional[int]]:
    """(K, S) of a pooling setting "K/S" (K on the `reference_layers` scale, default 32) or "none" -> (None, None).

    The one parser of the "K/S" strings that schedules, `compress.inference`, `--compress` and bench/plan
    variants (`region@2/8`) are written in. S = 1 also means uncompressed and gives (None, None).

    Raises:
        ValueError: not "K/S" / "none", K outside [0, reference_layers) or S < 1, naming `where`.
    """
    return _setting(*_split_setting(text, where), reference_layers, where)


def custom_schedule(
    phases: Sequence[PhaseSpec],
    inference: Optional[Union[str, Sequence]] = None,
    reference_layers: int = REFERENCE_LAYERS,
    name: str = "custom",
) -> Schedule:
    """A schedule from explicit phases.

    Args:
        phases: (K, S, fraction) tuples (K = S = None, or S = 1, for uncompressed), or "K/S" / "none"
            strings, which split training evenly. Fractions must be positive and sum to 1.
        inference: "K/S", "none" or (K, S) kept after training; default: the last phase's setting.
        reference_layers: depth the K values refer to; pass the model's depth to disable scaling.
    """
    if not phases:
        raise ValueError("a schedule needs at least one phase")
    out = []
    for i, spec in enumerate(phases):
        where = f"phase {i}"
        if isinstance(spec, str):
            (k, s), fraction = parse_pooling(spec, where, reference_layers), 1.0 / len(phases)
        else:
            if len(spec) != 3:
                raise ValueError(f"{where}: expected (K, S, fraction), got {spec!r}")
            k, s, fraction = spec
        k, s = _setting(k, s, reference_layers, where)
        if not fraction > 0:
            raise ValueError(f"{where}: fraction must be > 0, got {fraction}")
        out.append(Phase(k, s, float(fraction)))
    if not math.isclose(sum(p.fraction for p in out), 1.0, rel_tol=1e-6):
        raise ValueError(f"phase fractions must sum to 1, got {[p.fraction for p in out]}")
    if inference is None:
        inference = (out[-1].layer, out[-1].stride)
    elif isinstance(inference, str):
        inference = parse_pooling(inference, "inference", reference_layers)
    else:
        inference = _setting(*inference, reference_layers, "inference")
    return Schedule(name, tuple(out), inference, reference_layers)


def get_schedule(name: str) -> Schedule:
    """A preset schedule by its kebab-case name."""
    if name not in PRESETS:
        raise ValueError(f"unknown compression schedule '{name}'; valid: {', '.join(PRESETS)}")
    return custom_schedule(PRESETS[name], name=name)


def scale_layer(layer: int, num_layers: int, reference_layers: int = REFERENCE_LAYERS) -> int:
    """Map K given for a `reference_layers`-deep LLM to a `num_layers`-deep one.

    K' = round(K * num_layers / reference_layers), halves rounded up, then clamped to [1, num_layers - 1]
    for K > 0 (a phase that compresses inside the LLM stays inside it, with layers on both sides);
    K = 0 (pool before the first layer) stays 0. E.g. 32 -> 40 layers: 2 -> 3 (2.5), 16 -> 20;
    32 -> 24: 2 -> 2 (1.5), 16 -> 12; 32 -> 2: 2 -> 1, 16 -> 1.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if layer == 0:
        return 0
    scaled = (2 * layer * num_layers + reference_layers) // (2 * reference_layers)  # exact round-half-up
    return max(0, min(max(scaled, 1), num_layers - 1))


def _stage(index: int, setting, schedule: Schedule, num_layers: Optional[int]) -> PoolingSetting:
    layer, stride = setting
    if layer is not None and num_layers is not None:
        layer = scale_layer(layer, num_layers, schedule.reference_layers)
    return PoolingSetting(index, layer, stride)


def stage_boundaries(schedule: Schedule, total_steps: int) -> list[int]:
    """First optimizer step of phases 1..n-1: floor(cumulative fraction * total_steps), in exact arithmetic."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    bounds, cumulative = [], Fraction(0)
    for phase in schedule.phases[:-1]:
        cumulative += Fraction(phase.fraction).limit_denominator(1_000_000)
        bounds.append(math.floor(cumulative * total_steps))
    return bounds


def stage_at(schedule: Schedule, step: int, total_steps: int, num_layers: Optional[int] = None) -> PoolingSetting:
    """The stage active at an optimizer step.

    Args:
        schedule: from `get_schedule` or `custom_schedule`.
        step: optimizer steps already taken (0 for the first update); every micro-batch of one
            accumulated step sees the same stage. Steps >= total_steps stay in the last phase.
        total_steps: optimizer steps in the whole training run the schedule spans.
        num_layers: the model's depth; when given, K is scaled with `scale_layer`.
    Returns:
        PoolingSetting(index, K, S), or PoolingSetting(index, None, None) for an uncompressed phase. Phase i runs on steps
        [bound_i, bound_{i+1}); with fewer steps than phases some phases get no step.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    index = sum(step >= b for b in stage_boundaries(schedule, total_steps))
    phase = schedule.phases[index]
    return _stage(index, (phase.layer, phase.stride), schedule, num_layers)


def inference_stage(schedule: Schedule, num_layers: Optional[int] = None) -> PoolingSetting:
    """The setting kept after training (index -1): uncompressed for every preset but last-stage-compression."""
    return _stage(-1, schedule.inference, schedule, num_layers)


def compression_ratio(num_layers: int, layer: Optional[int], stride: Optional[int], visual_tokens: int = 576) -> float:
    """LLaVolta's CR = N*L / ((N-K)*ceil(L/S) + K*L): visual-token work across layers, uncompressed / compressed."""
    if layer is None or stride is None:
        return 1.0
    pooled = -(-visual_tokens // stride)
    return num_layers * visual_tokens / ((num_layers - layer) * pooled + layer * visual_tokens)

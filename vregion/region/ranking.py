"""Layer ranking from importance scores: pure functions from a per-layer score list to layer indices.

Convention: a larger score means a more important layer (a layer that changes its input more). Scores may
contain None (metric undefined for that layer, e.g. the top of a block metric): such layers count as most
important, so they are never pruned and ranked first only after every scored layer.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

METRICS = ("angular", "angular_block", "bi", "bi_multimodal", "bi_visual", "bi_text",
           "param_l2", "param_angular", "param_relative")


def scores_from_table(table: Sequence, metric: str) -> list[Optional[float]]:
    """The `metric` column of a layer table (LayerStats or dicts), indexed by layer."""
    if metric not in METRICS:
        raise ValueError(f"unknown layer metric '{metric}'; valid: {', '.join(METRICS)}")
    rows = [r if isinstance(r, dict) else r.as_dict() for r in table]
    rows.sort(key=lambda r: r["layer"])
    if [r["layer"] for r in rows] != list(range(len(rows))):
        raise ValueError("layer table must hold every layer 0..N-1 exactly once")
    values = [r.get(metric) for r in rows]
    if all(v is None for v in values):
        raise ValueError(f"metric '{metric}' is empty (parameter metrics need a base checkpoint)")
    return values


def _key(score: Optional[float]) -> float:
    return math.inf if score is None or math.isnan(score) else score


def rank_layers(scores: Sequence[Optional[float]], count: int, spread: bool = False) -> list[int]:
    """The `count` most important layers, sorted by index.

    Args:
        scores: per-layer importance, index = layer.
        count: how many layers to pick.
        spread: if True, no two picked layers are adjacent (greedy by score).
    Raises:
        ValueError: count out of range, or no non-adjacent set of that size is found greedily.
    """
    if not 0 <= count <= len(scores):
        raise ValueError(f"count must be in [0, {len(scores)}], got {count}")
    # Ties go to the lower layer index so results are deterministic.
    order = sorted(range(len(scores)), key=lambda i: (-_key(scores[i]), i))
    if not spread:
        return sorted(order[:count])
    picked: list[int] = []
    for i in order:
        if len(picked) == count:
            break
        if all(abs(i - j) > 1 for j in picked):
            picked.append(i)
    if len(picked) < count:
        raise ValueError(f"cannot spread {count} layers over {len(scores)} without adjacent picks")
    return sorted(picked)


def least_important_outside(scores: Sequence[Optional[float]], region: Sequence[int], n: int) -> list[int]:
    """The `n` least important layers NOT in `region`, sorted by index (the paper's pruning choice).

    Raises:
        ValueError: fewer than n layers lie outside the region, or a region index is out of range.
    """
    protected = set(region)
    if any(not 0 <= i < len(scores) for i in protected):
        raise ValueError(f"region {sorted(protected)} has indices outside [0, {len(scores)})")
    candidates = [i for i in range(len(scores)) if i not in protected]
    if not 0 <= n <= len(candidates):
        raise ValueError(f"can drop 0..{len(candidates)} layers outside the region, asked for {n}")
    return sorted(sorted(candidates, key=lambda i: (_key(scores[i]), i))[:n])

"""Pick the decoder layers of the visual region: a pure function from a strategy and a depth to indices.

Strategies live in a small registry; `select_layers` resolves the layer count from `count` / `fraction`
and dispatches. Application to a model (freezing, LoRA) is separate: see `vregion.region.apply`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence


def _uniform(num_layers: int, n: int) -> list[int]:
    """Sparse, mirror-symmetric spread of `n` of `num_layers` layers (the paper's rule, generalised).

    With N = num_layers, step = N / n and h = n // 2:
      lower half  l_k = round(N * (4k + 1) / (4n)) = round((k + 1/4) * step),  k = 0 .. h-1
      upper half  u_k = N - l_k                       (mirror x -> N - x, so layer 1 pairs with layer N-1)
      odd n       one more layer at the centre, N // 2 (its own mirror when N is even)
    Rounding is half-up in exact integer arithmetic. For n <= N / 2 (step >= 2) the points are at least
    two layers apart, so they are always distinct and in [1, N-1]; layer 0 is never picked.
    Denser regions (n > N / 2) are the complement of the sparse set of the N - n *skipped* layers, so the
    gaps stay evenly spread; they always contain layer 0 (which has no mirror partner).

    Examples: 32/8 -> [1, 5, 9, 13, 19, 23, 27, 31] (the paper's set); 40/9 -> [1, 6, 10, 14, 20, 26, 30,
    34, 39]; 30/8 -> [1, 5, 8, 12, 18, 22, 25, 29]; 24/6 -> [1, 5, 9, 15, 19, 23]; 32/1 -> [16].
    """
    if n == 0:
        return []
    if 2 * n > num_layers:
        skipped = set(_uniform(num_layers, num_layers - n))
        return [i for i in range(num_layers) if i not in skipped]
    lower = [((4 * k + 1) * num_layers + 2 * n) // (4 * n) for k in range(n // 2)]
    picked = lower + [num_layers - i for i in lower]
    if n % 2:
        picked.append(num_layers // 2)
    return sorted(picked)


def _bottom(num_layers: int, n: int) -> list[int]:
    return list(range(n))


def _top(num_layers: int, n: int) -> list[int]:
    return list(range(num_layers - n, num_layers))


def _middle(num_layers: int, n: int) -> list[int]:
    start = (num_layers - n) // 2  # an odd surplus goes above the block
    return list(range(start, start + n))


def _bottom_top(num_layers: int, n: int) -> list[int]:
    """The first ceil(n/2) and the last floor(n/2) layers."""
    return _bottom(num_layers, n - n // 2) + _top(num_layers, n // 2)


# Strategies that need a layer count. `none`, `all` and `list` are handled in select_layers.
COUNTED_STRATEGIES: dict[str, Callable[[int, int], list[int]]] = {
    "uniform": _uniform,
    "bottom": _bottom,
    "top": _top,
    "middle": _middle,
    "bottom-top": _bottom_top,
}
STRATEGIES = ("none", "all", *COUNTED_STRATEGIES, "list")


def resolve_count(num_layers: int, count: Optional[int] = None, fraction: Optional[float] = None) -> int:
    """Number of region layers: `count` if given, else max(1, round-half-up(fraction * num_layers))."""
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"region count must be an integer, got {count!r}")
        if not 1 <= count <= num_layers:
            raise ValueError(f"region count must be in [1, {num_layers}], got {count}")
        return count
    if fraction is None:
        raise ValueError("set a region count or fraction")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"region fraction must be in (0, 1], got {fraction}")
    # Half-up (not Python's half-to-even) so 18 layers * 0.25 gives 5, like 10 * 0.25 gives 3; the epsilon
    # absorbs float error such as 0.35 * 10 = 3.4999999999999996.
    return min(num_layers, max(1, math.floor(fraction * num_layers + 0.5 + 1e-9)))


def _validate_list(num_layers: int, layers: Optional[Sequence[int]]) -> list[int]:
    if not layers:
        raise ValueError("strategy 'list' needs a non-empty `layers` list of 0-based indices")
    seen: set[int] = set()
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"region layer index {i!r} is not an integer")
        if not 0 <= i < num_layers:
            raise ValueError(f"region layer index {i} is out of range [0, {num_layers - 1}]")
        if i in seen:
            raise ValueError(f"region layer index {i} is listed twice")
        seen.add(i)
    return sorted(seen)


def select_layers(
    strategy: str,
    num_layers: int,
    count: Optional[int] = None,
    fraction: Optional[float] = None,
    layers: Optional[Sequence[int]] = None,
) -> list[int]:
    """Sorted 0-based indices of the decoder layers in the region.

    Args:
        strategy: none | all | uniform | bottom | top | middle | bottom-top | list.
        num_layers: decoder depth of the LLM.
        count: number of region layers; wins over `fraction`.
        fraction: share of layers when `count` is None (count = max(1, round-half-up(fraction * N))).
        layers: explicit indices for strategy `list` (validated: integers, in range, unique).

    Returns:
        Sorted, distinct indices in [0, num_layers). `none` gives [], `all` gives every layer.

    Raises:
        ValueError: unknown strategy (the message lists the valid ones), bad count / fraction / index.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    if strategy == "none":
        return []
    if strategy == "all":
        return list(range(num_layers))
    if strategy == "list":
        return _validate_list(num_layers, layers)
    if strategy not in COUNTED_STRATEGIES:
        raise ValueError(f"unknown region strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    n = resolve_count(num_layers, count, fraction)
    picked = COUNTED_STRATEGIES[strategy](num_layers, n)
    assert len(set(picked)) == n and all(0 <= i < num_layers for i in picked), (strategy, num_layers, n)
    return picked

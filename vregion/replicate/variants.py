"""Stage-2 variants of the replication, by name: which region each one tunes, as `vregion train` overrides.

Names (N = number of decoder layers tuned):
  full                        every layer (strategy `all`): the baseline every "% of full" refers to
  projector                   no LLM layer, projector only (strategy `none`): what tuning layers adds at all
  uniform-N | bottom-N | middle-N | top-N | bottom-top-N      the rule-based regions of `vregion.region.select`
  metric-N                    the N layers ranked highest by angular distance (`vregion analyze` of the
                              seed's stage-1 checkpoint); metric-M-N ranks by another hidden-state metric M
                              (bi, bi_multimodal, ...), or by a parameter metric (param_relative, ...) of the
                              seed's full-tuning run against its stage-1 checkpoint (the paper's "parameter change")
  REGION+PRESET               REGION trained under a compression schedule preset (e.g. uniform-8+two)

Metric-ranked regions take the plain top N (`region.spread=false`), as the paper's metric baselines do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vregion.compress.schedule import PRESETS
from vregion.region.ranking import METRICS
from vregion.region.select import COUNTED_STRATEGIES

FULL, PROJECTOR = "full", "projector"
BLOCKS = ("bottom", "middle", "top")  # the paper's contiguous blocks
DEFAULT_VARIANTS = (FULL, PROJECTOR, "uniform-1", "uniform-2", "uniform-4", "uniform-8", "uniform-15",
                    "bottom-8", "middle-8", "top-8", "metric-8")
DEFAULT_METRIC = "angular"
PARAM_METRICS = tuple(m for m in METRICS if m.startswith("param_"))

_COUNTED = re.compile(r"^(%s)-(\d+)$" % "|".join(sorted(COUNTED_STRATEGIES, key=len, reverse=True)))
_METRIC = re.compile(r"^metric-(?:(%s)-)?(\d+)$" % "|".join(METRICS))


@dataclass(frozen=True)
class RegionVariant:
    """One stage-2 configuration (a region to tune; not the bench's `vregion.bench.variant.Variant`).
    `kind`: full | projector | uniform | block | metric | other (bottom-top)."""

    name: str
    kind: str
    strategy: str
    count: Optional[int] = None  # None: every layer (full) or none (projector)
    metric: Optional[str] = None  # strategy metric: the ranked column
    schedule: Optional[str] = None  # compression preset; None: uncompressed

    @property
    def region(self) -> str:
        """The uncompressed variant this one compresses (itself when uncompressed)."""
        return self.name.split("+", 1)[0]

    @property
    def needs_param_scores(self) -> bool:
        return self.metric in PARAM_METRICS

    def overrides(self, scores: Optional[Path] = None) -> list[str]:
        """`vregion train` overrides selecting this variant's region (and schedule); `scores`: layers.json."""
        out = [f"region.strategy={self.strategy}"]
        if self.count is not None:
            out.append(f"region.count={self.count}")
        if self.strategy == "metric":
            if scores is None:
                raise ValueError(f"variant {self.name} needs a layers.json of `vregion analyze`")
            out += [f"region.scores={scores}", f"region.metric={self.metric}", "region.spread=false"]
        if self.schedule is not None:
            out.append(f"compress.schedule={self.schedule}")
        return out


def parse_variant(name: str) -> RegionVariant:
    """The RegionVariant a name describes; ValueError naming the valid forms otherwise."""
    region, _, schedule = name.partition("+")
    if schedule and schedule not in PRESETS:
        raise ValueError(f"unknown compression preset {schedule!r} in {name!r}; valid: {', '.join(PRESETS)}")
    base = _parse_region(region, name)
    return RegionVariant(name, base.kind, base.strategy, base.count, base.metric, schedule or None)


def _parse_region(region: str, name: str) -> RegionVariant:
    if region == FULL:
        return RegionVariant(region, FULL, "all")
    if region == PROJECTOR:
        return RegionVariant(region, PROJECTOR, "none")
    counted = _COUNTED.match(region)
    if counted:
        strategy, count = counted.group(1), int(counted.group(2))
        kind = "uniform" if strategy == "uniform" else "block" if strategy in BLOCKS else "other"
        return _checked(RegionVariant(region, kind, strategy, count), name)
    metric = _METRIC.match(region)
    if metric:
        count, ranked = int(metric.group(2)), metric.group(1) or DEFAULT_METRIC
        return _checked(RegionVariant(region, "metric", "metric", count, ranked), name)
    raise ValueError(
        f"unknown variant {name!r}; valid: full, projector, <strategy>-N ({', '.join(COUNTED_STRATEGIES)}), "
        f"metric-N, metric-<metric>-N ({', '.join(METRICS)}), each optionally +<preset> ({', '.join(PRESETS)})")


def _checked(variant: RegionVariant, name: str) -> RegionVariant:
    if variant.count < 1:
        raise ValueError(f"variant {name!r}: the layer count must be >= 1")
    return variant


def parse_variants(names: list[str]) -> list[RegionVariant]:
    """Variants in the given order, duplicates dropped; `full` is required (it is the baseline of every ratio)."""
    variants = [parse_variant(n) for n in dict.fromkeys(names)]
    if FULL not in {v.name for v in variants}:
        raise ValueError("the variants must include 'full': every '% of full' is relative to it")
    return variants


def compressed(region: RegionVariant, presets: list[str]) -> list[RegionVariant]:
    """`region` under each compression preset (the schedule comparison on the best region)."""
    return [parse_variant(f"{region.name}+{p}") for p in presets]

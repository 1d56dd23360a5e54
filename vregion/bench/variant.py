"""The compared variants of `vregion bench` and `--plan`: a region setting by name, with optional pooling.

A variant string is `NAME` or `NAME@K/S`: NAME one of VARIANT_REGIONS (full, region, region-lora, projector),
K/S a pooling setting in `vregion.compress.parse_pooling`'s form (K on the 32-layer reference scale, scaled
to the model's depth where it is applied). `region@2/8` trains the configured region and pools the visual
tokens with stride 8 before layer 2 of 32. (Not the replication's stage-2 `RegionVariant`s, uniform-8 etc.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vregion.compress.schedule import parse_pooling
from vregion.config import RegionConfig, from_dict, to_dict

# Region overrides of each variant name, applied over the config's own region section.
VARIANT_REGIONS = {
    "full": {"strategy": "all", "mode": "full"},
    "region": {"strategy": "uniform", "mode": "full"},
    "region-lora": {"strategy": "uniform", "mode": "lora"},
    "projector": {"strategy": "none"},
}


@dataclass(frozen=True)
class Variant:
    """One compared setting: its name as written, a region config and optional pooling (K of 32, stride S)."""

    name: str
    region: RegionConfig
    pooling: Optional[tuple[int, int]] = None

    @property
    def base(self) -> str:
        """The region setting's name without pooling (`region-lora@2/8` -> `region-lora`): variants with the
        same base train the same parameters, so the bench runs them on one engine."""
        return self.name.partition("@")[0]


def parse_variant(spec: str, region: RegionConfig) -> Variant:
    """`region-lora@2/8` -> `region` with VARIANT_REGIONS' overrides, pooling at K=2 of 32 with stride 8.

    Raises:
        ValueError: an unknown NAME (listing the valid ones) or a malformed / out-of-range K/S.
    """
    name, _, pooling = spec.partition("@")
    if name not in VARIANT_REGIONS:
        raise ValueError(f"unknown variant {name!r} in {spec!r}; valid: {', '.join(VARIANT_REGIONS)} (+ optional @K/S)")
    overrides = {**to_dict(region), **VARIANT_REGIONS[name]}  # flat keys: a shallow merge is enough
    k, s = parse_pooling(pooling, f"variant {spec!r}") if pooling else (None, None)
    return Variant(spec, from_dict(RegionConfig, overrides, "region"), None if k is None else (k, s))

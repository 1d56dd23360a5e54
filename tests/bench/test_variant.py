"""The one parser of bench/plan variant strings (`region-lora@2/8`), shared by `vregion bench` and `--plan`."""

from __future__ import annotations

import pytest

from vregion.bench.variant import parse_variant
from vregion.config import RegionConfig


def test_name_sets_the_region_over_the_config_and_pooling_is_k_of_32_and_stride():
    base = RegionConfig(strategy="list", layers=[1], count=3)
    v = parse_variant("region-lora@2/8", base)
    assert (v.name, v.base, v.pooling) == ("region-lora@2/8", "region-lora", (2, 8))
    assert (v.region.strategy, v.region.mode, v.region.count) == ("uniform", "lora", 3)  # the rest from the config
    full = parse_variant("full", base)
    assert (full.base, full.pooling, full.region.strategy, full.region.mode) == ("full", None, "all", "full")
    assert parse_variant("projector", base).region.strategy == "none"
    # S = 1 and `none` pool nothing, as in compression schedules
    assert parse_variant("region@4/1", base).pooling is None and parse_variant("region@none", base).pooling is None


@pytest.mark.parametrize("spec, message", [
    ("regoin", "unknown variant 'regoin' in 'regoin'; valid: full, region, region-lora, projector"),
    ("region@2-8", "variant 'region@2-8': expected 'K/S' or 'none', got '2-8'"),
    ("region@32/8", "variant 'region@32/8': K must be an int in [0, 32)"),
    ("full@2/0", "variant 'full@2/0': S must be an int >= 1"),
])
def test_bad_variants_name_the_problem(spec, message):
    with pytest.raises(ValueError) as err:
        parse_variant(spec, RegionConfig())
    assert message in str(err.value)

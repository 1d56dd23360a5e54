"""Replication variants: names -> region strategies and `vregion train` overrides; bad names are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vregion.replicate.variants import DEFAULT_VARIANTS, compressed, parse_variant, parse_variants


def test_default_variants_cover_the_issue_list():
    kinds = {v.name: (v.kind, v.count) for v in parse_variants(list(DEFAULT_VARIANTS))}
    assert [kinds[f"uniform-{n}"] for n in (1, 2, 4, 8, 15)] == [("uniform", n) for n in (1, 2, 4, 8, 15)]
    assert [kinds[f"{b}-8"] for b in ("bottom", "middle", "top")] == [("block", 8)] * 3
    assert kinds["metric-8"] == ("metric", 8) and kinds["full"] == ("full", None)


def test_overrides_select_the_region_and_schedule():
    assert parse_variant("full").overrides() == ["region.strategy=all"]
    assert parse_variant("projector").overrides() == ["region.strategy=none"]
    assert parse_variant("bottom-top-4").overrides() == ["region.strategy=bottom-top", "region.count=4"]
    assert parse_variant("bottom-top-4").kind == "other"  # not "bottom" (the longer strategy name wins)
    metric = parse_variant("metric-8")
    assert metric.overrides(Path("/s/layers.json")) == [
        "region.strategy=metric", "region.count=8", "region.scores=/s/layers.json", "region.metric=angular",
        "region.spread=false"]
    assert parse_variant("metric-param_relative-8").needs_param_scores
    assert not metric.needs_param_scores and parse_variant("metric-bi-4").metric == "bi"
    with pytest.raises(ValueError, match="needs a layers.json"):
        metric.overrides()
    two = parse_variant("uniform-8+two")
    assert (two.region, two.schedule, two.kind) == ("uniform-8", "two", "uniform")
    assert two.overrides()[-1] == "compress.schedule=two"
    assert [v.name for v in compressed(parse_variant("top-8"), ["two", "three-wider"])] == ["top-8+two",
                                                                                            "top-8+three-wider"]


@pytest.mark.parametrize("name,message", [("uniform", "unknown variant"), ("random-8", "unknown variant"),
                                          ("metric-foo-8", "unknown variant"), ("uniform-0", ">= 1"),
                                          ("uniform-8+fast", "unknown compression preset")])
def test_bad_names_say_what_is_valid(name, message):
    with pytest.raises(ValueError, match=message):
        parse_variant(name)


def test_full_is_required_and_duplicates_dropped():
    with pytest.raises(ValueError, match="must include 'full'"):
        parse_variants(["uniform-8"])
    assert [v.name for v in parse_variants(["full", "uniform-8", "full"])] == ["full", "uniform-8"]

"""Schedules: presets, depth scaling of K, stage boundaries by optimizer step, custom lists, errors."""

import pytest

from vregion.compress import (
    PRESETS,
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


def settings(schedule):
    return [str(p) for p in schedule.phases]


def test_presets_match_llavolta():
    assert settings(get_schedule("two")) == ["2/8", "none"]
    assert settings(get_schedule("three-deeper")) == ["2/8", "16/8", "none"]
    assert settings(get_schedule("three-wider")) == ["2/8", "2/2", "none"]
    assert settings(get_schedule("four-wider-then-deeper")) == ["2/8", "2/2", "16/2", "none"]
    assert settings(get_schedule("four-deeper-then-wider")) == ["2/8", "16/8", "16/2", "none"]
    last = get_schedule("last-stage-compression")
    assert settings(last) == ["2/16", "16/16", "16/4"] and [p.fraction for p in last.phases] == [1 / 3] * 3
    assert inference_stage(last) == PoolingSetting(-1, 16, 4)
    for name in PRESETS:
        if name != "last-stage-compression":
            assert inference_stage(get_schedule(name)) == PoolingSetting(-1, None, None), name


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="valid: two, three-deeper, .*last-stage-compression"):
        get_schedule("four")


@pytest.mark.parametrize(
    "layer,num_layers,expected",
    [(2, 32, 2), (16, 32, 16), (2, 40, 3), (16, 40, 20), (2, 24, 2), (16, 24, 12), (3, 24, 2),
     (2, 2, 1), (16, 2, 1), (16, 4, 2), (0, 40, 0), (16, 1, 0), (31, 32, 31), (31, 8, 7)],
)
def test_scale_layer(layer, num_layers, expected):
    assert scale_layer(layer, num_layers) == expected


def test_stage_at_boundaries_four_even_stages():
    schedule = get_schedule("four-wider-then-deeper")
    assert stage_boundaries(schedule, 100) == [25, 50, 75]
    got = {step: str(stage_at(schedule, step, 100)) for step in (0, 24, 25, 49, 50, 74, 75, 99, 150)}
    assert got == {
        0: "2/8", 24: "2/8", 25: "2/2", 49: "2/2", 50: "16/2", 74: "16/2", 75: "none", 99: "none", 150: "none"
    }
    assert [stage_at(schedule, s, 100).index for s in (24, 25, 75)] == [0, 1, 3]


def test_thirds_are_exact():
    """1/3 + 1/3 in floats is not 2/3: boundaries use exact fractions (10 steps -> 3, 6)."""
    schedule = get_schedule("three-deeper")
    assert stage_boundaries(schedule, 10) == [3, 6]
    assert stage_boundaries(schedule, 3) == [1, 2]
    assert [stage_at(schedule, s, 3).index for s in range(3)] == [0, 1, 2]


def test_stage_scaled_to_model_depth():
    schedule = get_schedule("last-stage-compression")
    assert stage_at(schedule, 0, 9, num_layers=40) == PoolingSetting(0, 3, 16)
    assert stage_at(schedule, 8, 9, num_layers=40) == PoolingSetting(2, 20, 4)
    assert inference_stage(schedule, num_layers=4) == PoolingSetting(-1, 2, 4)
    assert stage_at(get_schedule("two"), 5, 9, num_layers=40) == PoolingSetting(1, None, None)


def test_custom_schedule():
    schedule = custom_schedule([(2, 8, 0.25), (None, None, 0.75)])
    assert [stage_at(schedule, s, 8).index for s in (0, 1, 2, 7)] == [0, 0, 1, 1]
    assert inference_stage(schedule) == PoolingSetting(-1, None, None)
    unscaled = custom_schedule(["1/4", "none"], inference="1/2", reference_layers=2)
    assert stage_at(unscaled, 0, 10, num_layers=2) == PoolingSetting(0, 1, 4)
    assert inference_stage(unscaled, num_layers=2) == PoolingSetting(-1, 1, 2)
    assert str(custom_schedule([(4, 1, 1.0)]).phases[0]) == "none"  # S = 1 is no compression


@pytest.mark.parametrize(
    "phases,match",
    [
        ([(2, 8, 0.5), (None, None, 0.4)], "sum to 1"),
        ([(2, 8, 0.0), (None, None, 1.0)], "fraction must be > 0"),
        ([(32, 8, 1.0)], r"K must be an int in \[0, 32\)"),
        ([(2, None, 1.0)], "both K and S"),
        (["2-8"], "expected 'K/S' or 'none'"),
        ([], "at least one phase"),
    ],
)
def test_custom_schedule_errors(phases, match):
    with pytest.raises(ValueError, match=match):
        custom_schedule(phases)


def test_parse_pooling_is_the_one_k_s_parser():
    assert parse_pooling("2/8", "x") == (2, 8)
    assert parse_pooling(" None ", "x") == parse_pooling("16/1", "x") == (None, None)  # S = 1: uncompressed
    assert parse_pooling("20/4", "x", reference_layers=24) == (20, 4)
    for text, match in [("2-8", "where: expected 'K/S' or 'none', got '2-8'"), ("32/8", r"where: K must .*\[0, 32\)"),
                        ("2/0", "where: S must be an int >= 1")]:
        with pytest.raises(ValueError, match=match):
            parse_pooling(text, "where")


def test_bad_steps_rejected():
    schedule = get_schedule("two")
    with pytest.raises(ValueError, match="step must be >= 0"):
        stage_at(schedule, -1, 10)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        stage_at(schedule, 0, 0)


def test_compression_ratio_matches_paper():
    assert int(100 * compression_ratio(32, 2, 8)) == 556  # LLaVolta reports "CR 556%" (5.565) for 2/8, 7B
    assert compression_ratio(32, None, None) == 1.0
    assert compression_ratio(32, 0, 4) == 4.0

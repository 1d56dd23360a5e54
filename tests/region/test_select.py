"""select_layers: the paper's set, the generalised uniform rule, every strategy and its errors."""

import pytest

from vregion.region.select import STRATEGIES, resolve_count, select_layers


def test_paper_set_32_layers_8():
    expected = [1, 5, 9, 13, 19, 23, 27, 31]
    assert select_layers("uniform", 32, count=8) == expected
    assert select_layers("uniform", 32, fraction=0.25) == expected
    # lower half 1 + 4k, upper half 31 - 4k
    assert expected == sorted([1 + 4 * k for k in range(4)] + [31 - 4 * k for k in range(4)])


@pytest.mark.parametrize(
    "num_layers, count, expected",
    [
        (40, 9, [1, 6, 10, 14, 20, 26, 30, 34, 39]),  # LLaVA-1.5-13B depth
        (30, 8, [1, 5, 8, 12, 18, 22, 25, 29]),
        (24, 6, [1, 5, 9, 15, 19, 23]),
        (18, 5, [1, 5, 9, 13, 17]),
        (18, 4, [1, 6, 12, 17]),
        (32, 1, [16]),
        (32, 2, [4, 28]),
        (32, 4, [2, 10, 22, 30]),
        (32, 16, list(range(1, 32, 2))),
        (2, 1, [1]),
        (2, 2, [0, 1]),
        (1, 1, [0]),
        (3, 2, [0, 2]),  # dense: complement of the sparse pick [1]
    ],
)
def test_uniform_documented_examples(num_layers, count, expected):
    assert select_layers("uniform", num_layers, count=count) == expected


@pytest.mark.parametrize("num_layers", [2, 18, 24, 30, 32, 40])
def test_uniform_every_count_is_distinct_in_range_and_mirrored(num_layers):
    for n in range(1, num_layers + 1):
        picked = select_layers("uniform", num_layers, count=n)
        assert len(picked) == n
        assert picked == sorted(set(picked))
        assert all(0 <= i < num_layers for i in picked)
        chosen = set(picked)
        if 2 * n <= num_layers:  # sparse: mirror x -> N - x, layer 0 never picked
            assert 0 not in chosen
            assert chosen == {num_layers - i for i in chosen}, (num_layers, n, picked)
        else:  # dense: layer 0 plus a mirrored set
            assert 0 in chosen
            rest = chosen - {0}
            assert rest == {num_layers - i for i in rest}, (num_layers, n, picked)


def test_uniform_odd_depth_odd_count_centre_is_floor_of_half():
    # N odd: N/2 is not a layer; the centre is N // 2, the pairs stay mirrored.
    assert select_layers("uniform", 9, count=3) == [1, 4, 8]
    assert select_layers("uniform", 25, count=5) == [1, 6, 12, 19, 24]


@pytest.mark.parametrize(
    "num_layers, fraction, count",
    [(32, 0.25, 8), (40, 0.225, 9), (30, 0.25, 8), (24, 0.25, 6), (18, 0.25, 5), (2, 0.25, 1), (2, 0.1, 1),
     (10, 0.35, 4), (8, 1.0, 8)],
)
def test_fraction_resolves_half_up_with_floor_of_one(num_layers, fraction, count):
    assert resolve_count(num_layers, fraction=fraction) == count
    assert len(select_layers("uniform", num_layers, fraction=fraction)) == count


def test_count_wins_over_fraction():
    assert select_layers("uniform", 32, count=4, fraction=0.5) == [2, 10, 22, 30]
    assert select_layers("bottom", 32, count=3, fraction=0.9) == [0, 1, 2]


@pytest.mark.parametrize(
    "strategy, num_layers, count, expected",
    [
        ("bottom", 32, 8, list(range(0, 8))),
        ("top", 32, 8, list(range(24, 32))),
        ("middle", 32, 8, list(range(12, 20))),
        ("middle", 8, 3, [2, 3, 4]),
        ("bottom-top", 32, 8, [0, 1, 2, 3, 28, 29, 30, 31]),
        ("bottom-top", 10, 5, [0, 1, 2, 8, 9]),
        ("bottom-top", 10, 1, [0]),
        ("top", 5, 5, [0, 1, 2, 3, 4]),
    ],
)
def test_block_strategies(strategy, num_layers, count, expected):
    assert select_layers(strategy, num_layers, count=count) == expected


def test_none_and_all_ignore_count():
    assert select_layers("none", 32, count=8) == []
    assert select_layers("all", 6, count=2) == [0, 1, 2, 3, 4, 5]


def test_list_is_sorted_and_validated():
    assert select_layers("list", 32, layers=[31, 0, 7]) == [0, 7, 31]
    with pytest.raises(ValueError, match="index 32 is out of range"):
        select_layers("list", 32, layers=[1, 32])
    with pytest.raises(ValueError, match="index -1 is out of range"):
        select_layers("list", 32, layers=[-1])
    with pytest.raises(ValueError, match="index 5 is listed twice"):
        select_layers("list", 32, layers=[5, 6, 5])
    with pytest.raises(ValueError, match="not an integer"):
        select_layers("list", 32, layers=[1.0])
    with pytest.raises(ValueError, match="non-empty"):
        select_layers("list", 32, layers=None)


def test_unknown_strategy_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        select_layers("sparse", 32, count=8)
    for name in STRATEGIES:
        assert name in str(err.value)
    assert "'sparse'" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(count=0), r"count must be in \[1, 32\]"),
        (dict(count=33), r"count must be in \[1, 32\]"),
        (dict(count=2.0), "must be an integer"),
        (dict(fraction=0.0), r"fraction must be in \(0, 1\]"),
        (dict(fraction=1.5), r"fraction must be in \(0, 1\]"),
        (dict(), "count or fraction"),
    ],
)
def test_bad_count_or_fraction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_layers("uniform", 32, **kwargs)


@pytest.mark.parametrize("num_layers", [0, -3, 2.0, True])
def test_bad_depth(num_layers):
    with pytest.raises(ValueError, match="num_layers"):
        select_layers("uniform", num_layers, count=1)

"""Replication report: aggregation over seeds (mean, sample std, paired % of full), conclusions that follow the
numbers (flip the numbers, the verdict flips), the markdown tables and the plot."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from tests.replicate.runs import write_run
from vregion.replicate.conclusions import AGREES, DISAGREES, INCONCLUSIVE, conclusions
from vregion.replicate.report import write_report
from vregion.replicate.results import ALIGN, RunResult, Stat, build_row, build_rows, read_run, train_time

N = 30  # demo depth
U8 = [1, 5, 8, 12, 18, 22, 25, 29]


def result(variant, seed, accuracy, layers=U8, caption=2.0, ppl=10.0, train_s=100.0, samples=200) -> RunResult:
    return RunResult(variant, seed, layers, 1000, 80, train_s, accuracy, samples, caption, ppl)


def rows_of(runs: dict) -> dict:
    return build_rows(runs, list(runs))


def verdicts(runs: dict, best=None) -> dict[str, str]:
    return {c.topic: c.verdict for c in conclusions(rows_of(runs), runs, N, 8, best)}


def baseline(seeds=(0,), full_acc=0.80) -> dict:
    return {ALIGN: {s: result(ALIGN, s, 0.30, layers=[], ppl=10.0, train_s=50.0) for s in seeds},
            "full": {s: result("full", s, full_acc, layers=list(range(N)), ppl=12.0, train_s=100.0) for s in seeds}}


def test_rows_from_run_files_mean_std_and_paired_percent_of_full(tmp_path):
    runs: dict = {}
    figures = {"full": [(0.80, 2.0, 12.0, 2.0), (0.70, 2.2, 13.0, 2.2)],
               "uniform-8": [(0.76, 2.1, 11.0, 1.3), (0.70, 2.4, 11.5, 1.5)]}
    for seed in (0, 1):
        write_run(tmp_path / ALIGN / str(seed), [], 0.3, 3.0, ppl=10.0 + seed)
        runs.setdefault(ALIGN, {})[seed] = read_run(tmp_path / ALIGN / str(seed), ALIGN, seed)
        for name, per_seed in figures.items():
            acc, cap, ppl, step = per_seed[seed]
            layers = list(range(N)) if name == "full" else U8
            d = write_run(tmp_path / name / str(seed), layers, acc, cap, ppl, step_time=step, steps=80)
            runs.setdefault(name, {})[seed] = read_run(d, name, seed)
    row = build_row("uniform-8", "uniform", runs["uniform-8"], runs["full"], runs[ALIGN])
    assert row.accuracy.mean == pytest.approx(73.0) and row.accuracy.std == pytest.approx(statistics.stdev([76, 70]))
    # Paired by seed: 76/80 and 70/70 -> 95 and 100 -> 97.5 (the ratio of means, 73/75 = 97.33, would be wrong).
    assert row.accuracy_pct.values == pytest.approx([95.0, 100.0])
    assert row.accuracy_pct.mean == pytest.approx(97.5)
    assert row.caption_pct.mean == pytest.approx((2.1 / 2.0 + 2.4 / 2.2) * 50)
    assert row.time_pct.values == pytest.approx([65.0, 1.5 / 2.2 * 100])  # summed step times, 80 steps each
    assert row.ppl_before.values == [10.0, 11.0] and row.ppl_after.values == [11.0, 11.5]
    assert row.count == 8 and row.layer_sets == [U8] and row.eval_samples == 200
    # One seed: a mean, no std, no "±".
    one = build_row("uniform-8", "uniform", {0: runs["uniform-8"][0]}, runs["full"], runs[ALIGN])
    assert one.accuracy.std is None and one.accuracy.fmt() == "76.0" and "±" in row.accuracy.fmt()


def test_train_time_sums_logged_steps_and_survives_sparse_logging(tmp_path):
    d = write_run(tmp_path / "r", U8, 0.5, 2.0, 10.0, step_time=1.5, steps=4)
    summary = json.loads((d / "summary.json").read_text())
    assert train_time(d, summary) == pytest.approx(6.0)  # not the summary's wall time (6.5)
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines if r["step"] % 2 == 0))
    assert train_time(d, summary) == pytest.approx(6.0)  # 2 logged of 4 steps: the mean scaled to all 4
    (d / "metrics.jsonl").unlink()
    assert train_time(d, summary) == pytest.approx(6.5)


def test_accuracy_error_combines_seed_spread_and_held_out_sampling():
    runs = baseline()
    runs["uniform-8"] = {0: result("uniform-8", 0, 0.5)}
    row = rows_of(runs)["uniform-8"]
    q = (0.5 * 200 + 0.5) / 201
    assert row.accuracy_se() == pytest.approx(100 * math.sqrt(q * (1 - q) / 200))
    runs["uniform-8"][1] = result("uniform-8", 1, 0.6)
    runs["full"][1] = result("full", 1, 0.8, layers=list(range(N)))
    row = rows_of(runs)["uniform-8"]
    q = (55.0 / 100 * 400 + 0.5) / 401
    expected = math.sqrt(q * (1 - q) / 400 * 100 ** 2 + statistics.stdev([50, 60]) ** 2 / 2)
    assert row.accuracy_se() == pytest.approx(expected)


def test_retention_verdict_follows_the_numbers():
    runs = baseline()
    runs["uniform-8"] = {0: result("uniform-8", 0, 0.79)}  # 98.75% of full: within noise of the paper's 99.4%
    claims = conclusions(rows_of(runs), runs, N, 8, None)
    retention = next(c for c in claims if c.topic.startswith("Region keeps full"))
    assert retention.verdict == AGREES and "98.8% of full" in retention.text and "99.4%" in retention.text
    runs["uniform-8"] = {0: result("uniform-8", 0, 0.50)}  # 62.5%: far below
    retention = next(c for c in conclusions(rows_of(runs), runs, N, 8, None) if c.topic.startswith("Region keeps full"))
    assert retention.verdict == DISAGREES and "62.5% of full" in retention.text and "beyond noise" in retention.text


@pytest.mark.parametrize("uniform,middle,expected", [(0.80, 0.60, AGREES), (0.60, 0.80, DISAGREES),
                                                     (0.70, 0.69, INCONCLUSIVE)])
def test_uniform_vs_block_verdict_flips_with_the_numbers(uniform, middle, expected):
    runs = baseline()
    runs["uniform-8"] = {0: result("uniform-8", 0, uniform)}
    runs["middle-8"] = {0: result("middle-8", 0, middle, layers=list(range(11, 19)))}
    claim = next(c for c in conclusions(rows_of(runs), runs, N, 8, None) if c.topic.startswith("Sparse uniform"))
    assert claim.verdict == expected
    diff = f"{100 * (uniform - middle):+.1f}".replace("-", "−")
    assert f"(middle-8): {diff} points" in claim.text


@pytest.mark.parametrize("uniform,top,expected", [((2.0, 2.02), (2.3, 2.32), AGREES),
                                                  ((2.3, 2.32), (2.0, 2.02), DISAGREES),
                                                  ((2.0, 2.3), (2.1, 2.2), INCONCLUSIVE)])
def test_uniform_vs_block_on_caption_loss_judged_by_the_seed_spread(uniform, top, expected):
    runs = baseline(seeds=(0, 1))
    runs["uniform-8"] = {s: result("uniform-8", s, 0.7, caption=c) for s, c in enumerate(uniform)}
    runs["top-8"] = {s: result("top-8", s, 0.7, caption=c, layers=list(range(22, 30))) for s, c in enumerate(top)}
    runs["bottom-8"] = {s: result("bottom-8", s, 0.7, caption=3.0, layers=list(range(8))) for s in (0, 1)}
    claim = next(c for c in conclusions(rows_of(runs), runs, N, 8, None) if c.topic.endswith("(caption loss)"))
    assert claim.verdict == expected
    assert "best block by this measure, top-8" in claim.text and "bottom-8 150.0%" in claim.text  # full's is 2.0
    gap = 50 * (sum(uniform) - sum(top)) / 2.0  # mean of paired % of full (full: 2.0 both seeds)
    assert f"{gap:+.1f} points".replace("-", "−") in claim.text


def test_sweep_metric_time_and_text_verdicts_flip():
    runs = baseline()
    for n, acc in ((1, 0.40), (8, 0.79), (15, 0.80)):
        runs[f"uniform-{n}"] = {0: result(f"uniform-{n}", 0, acc, layers=list(range(n)), ppl=10.15, train_s=60.0)}
    runs["metric-8"] = {0: result("metric-8", 0, 0.50, layers=list(range(8)))}
    v = verdicts(runs)
    assert v["More layers help up to 8"] == AGREES and v["Little gain beyond 8 layers"] == AGREES
    assert v["Uniform beats angular-ranked layers"] == AGREES
    assert v["Region trains faster"] == INCONCLUSIVE  # 60% of full's time, but one seed: no noise estimate
    assert v["Region keeps text ability"] == AGREES  # 10 -> 10.15: +1.5%, within the 2% "kept"
    runs["uniform-1"][0].accuracy, runs["uniform-15"][0].accuracy = 0.95, 0.99
    runs["uniform-8"][0] = result("uniform-8", 0, 0.40, layers=U8, ppl=14.0, train_s=140.0)
    v = verdicts(runs)
    assert v["More layers help up to 8"] == DISAGREES and v["Little gain beyond 8 layers"] == DISAGREES
    assert v["Uniform beats angular-ranked layers"] == DISAGREES
    assert v["Region trains faster"] == INCONCLUSIVE  # one seed
    assert v["Region keeps text ability"] == INCONCLUSIVE  # 10 -> 14, but one seed: no noise estimate


@pytest.mark.parametrize("times,expected", [((60.0, 62.0), AGREES), ((140.0, 138.0), DISAGREES),
                                            ((99.0,), INCONCLUSIVE), ((98.0, 103.0), INCONCLUSIVE)])
def test_time_verdict_needs_a_noise_estimate(times, expected):
    """A 1% timing difference on one seed once read "disagrees": with no error bar the verdict is inconclusive."""
    seeds = tuple(range(len(times)))
    runs = baseline(seeds=seeds)
    runs["uniform-8"] = {s: result("uniform-8", s, 0.79, train_s=t) for s, t in zip(seeds, times)}
    assert verdicts(runs)["Region trains faster"] == expected


def test_compression_verdict_needs_less_time_and_kept_accuracy():
    name = "uniform-8+four-wider-then-deeper"
    runs = baseline(seeds=(0, 1))
    runs["uniform-8"] = {s: result("uniform-8", s, 0.78, train_s=80.0) for s in (0, 1)}
    runs[name] = {0: result(name, 0, 0.78, train_s=60.0), 1: result(name, 1, 0.78, train_s=61.6)}

    def claim():
        return next(c for c in conclusions(rows_of(runs), runs, N, 8, "uniform-8") if c.topic.startswith("Compression"))

    assert claim().verdict == AGREES and "training time −24.0%" in claim().text and "−15.7% time" in claim().text
    runs[name][0].train_s, runs[name][1].train_s = 100.0, 101.6
    assert claim().verdict == DISAGREES and "training time +26.0%" in claim().text
    del runs[name][1], runs["uniform-8"][1]  # one seed: no noise estimate for the time
    runs[name][0].train_s = 60.0
    assert claim().verdict == INCONCLUSIVE


def test_report_files_tables_and_plot(tmp_path):
    runs = baseline(seeds=(0, 1))
    runs["full"][1].accuracy = 0.70
    runs["uniform-8"] = {0: result("uniform-8", 0, 0.76, train_s=65.0), 1: result("uniform-8", 1, 0.70, train_s=70.0)}
    runs["uniform-8+two"] = {0: result("uniform-8+two", 0, 0.74, train_s=60.0)}
    rows = rows_of(runs)
    settings = {"config": "demo", "seeds": [0, 1], "align_steps": 40, "steps": 80, "vqa": "fashion",
                "captions": "emoji", "text": "licences", "max_samples": 200}
    claims = conclusions(rows, runs, N, 8, "uniform-8")
    md = write_report(tmp_path, list(rows.values()), runs, claims, settings, N, "uniform-8")
    assert md == (tmp_path / "replicate.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| uniform-8 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "8: " + ",".join(map(str, U8)) and cells[3] == "2"
    assert cells[4] == f"73.0 ± {statistics.stdev([76, 70]):.1f}" and cells[5] == "97.5 ± 3.5"
    assert cells[10] == f"{statistics.fmean([65, 70]):.1f} ± {statistics.stdev([65, 70]):.1f}"
    assert "| 30 (all) |" in md and "| stage 1 only (projector align) | 0 |" in md
    two = next(x for x in md.splitlines() if x.startswith("| two |"))
    assert "| 74.0 | -2.0 ±" in two and two.endswith("| 92.3 |")  # 60 s of 65 s, seed 0 only
    data = json.loads((tmp_path / "replicate.json").read_text())
    assert data["best_region"] == "uniform-8" and {r["variant"] for r in data["rows"]} == set(runs)
    assert [c["verdict"] for c in data["conclusions"]] == [c.verdict for c in claims]
    png = (tmp_path / "replicate.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 20_000


def test_stat_formats_std_only_with_two_values():
    assert Stat([]).fmt() == "-" and Stat([1.0]).fmt() == "1.0" and Stat([1.0, 3.0]).fmt() == "2.0 ± 1.4"


@pytest.mark.parametrize("after,expected", [((9.5, 10.6), AGREES), ((11.0, 12.1), DISAGREES),
                                            ((10.1, 11.5), INCONCLUSIVE)])
def test_text_ability_is_kept_within_2_percent_paired_by_seed(after, expected):
    """Stage-1 perplexity 10 (seed 0) and 11 (seed 1): the region's rise is paired with its own seed's start."""
    runs = {ALIGN: {s: result(ALIGN, s, 0.30, layers=[], ppl=10.0 + s) for s in (0, 1)},
            "full": {s: result("full", s, 0.80, layers=list(range(N)), ppl=12.0) for s in (0, 1)},
            "uniform-8": {s: result("uniform-8", s, 0.78, ppl=after[s]) for s in (0, 1)}}
    claim = next(c for c in conclusions(rows_of(runs), runs, N, 8, None) if c.topic == "Region keeps text ability")
    assert claim.verdict == expected

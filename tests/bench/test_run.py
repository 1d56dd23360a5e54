"""`vregion bench`: a real interleaved bench on the tiny config, and the report's arithmetic on made-up timings."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from vregion.compress import get_schedule
from vregion.config import load_config
from vregion.bench import plan
from vregion.bench.report import Projection, StepTiming, add_ratios, log_wandb, schedule_average, variant_row
from vregion.bench.run import default_variants, run_bench
from vregion.bench.shapes import shape_from_config
from vregion.bench.variant import parse_variant
from vregion.engine.prepare import prepare_data

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROJECTION = Projection(samples=10_000, epochs=2.0, global_batch=64, gpus=4)


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    """One round of one step each of full fine-tuning, the same on packed rows and region + pooling on the tiny
    model (~1 minute)."""
    root = tmp_path_factory.mktemp("bench")
    cfg = load_config(CONFIGS / "tiny.yaml", [f"run.output_dir={root / 'run'}", "data.max_length=768"]).stage_configs()[-1]
    cfg = prepare_data(cfg, root / "run")
    result = run_bench(cfg, ["full", "region@2/8", "full+packed"], rounds=1, steps_per_round=1,
                       out_dir=root / "out", projection=PROJECTION)
    return cfg, result, root / "out"


def test_bench_writes_md_json_png_with_the_new_columns(tiny_bench):
    _, result, out = tiny_bench
    assert json.loads((out / "bench.json").read_text()) == json.loads(json.dumps(result))
    md = (out / "bench.md").read_text()
    for column in ("samples/s", "tokens/s", "padding", "TFLOP/s", "MFU", "optimizer state / rank", "peak mem / rank",
                   "4-GPU wall h", "GPU-hours", "vs full"):
        assert column in md.splitlines()[0]
    assert [line.split("|")[1].strip() for line in md.splitlines()[2:4]] == ["full", "region@2/8"]
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert result["meta"]["memory_kind"] == "rss" and "measured" in result["meta"]["peak_source"]
    assert f"{result['meta']['other_processes_cores']:.2f} of " in md  # how busy the shared machine was


def test_bench_throughput_mfu_and_projection_are_consistent(tiny_bench):
    _, result, _ = tiny_bench
    peak = result["meta"]["peak_tflops"]
    full, pooled, packed = result["rows"]
    for r in (full, pooled, packed):
        assert r["samples_per_step"] == 8 and r["steps_timed"] == 1  # samples, not packed rows
        assert r["samples_per_s"] == pytest.approx(8 / r["median_step_s"])
        assert r["achieved_tflops"] == pytest.approx(r["flops_per_sample"] * r["samples_per_s"] / 1e12)
        assert r["mfu"] == pytest.approx(r["achieved_tflops"] / peak)
        total = PROJECTION.samples * PROJECTION.epochs
        assert r["projected_gpu_hours"] == pytest.approx(total / r["projected_samples_per_s"] / 3600 * 4)
        assert r["projected_gpu_hours"] == pytest.approx(r["projected_wall_h"] * 4)
    assert pooled["tokens_per_s_ratio"] == pytest.approx(pooled["tokens_per_s"] / full["tokens_per_s"])
    assert pooled["gpu_hours_ratio"] == pytest.approx(pooled["projected_gpu_hours"] / full["projected_gpu_hours"])
    assert full["tokens_per_s_ratio"] == 1.0


def test_bench_padding_share_is_the_padded_positions_of_the_batches_it_trained_on(tiny_bench):
    """Padding share = 1 - real tokens / (rows x padded length), from the very batches the bench consumed: the
    same loader, seed and step count give the same batches here."""
    import itertools

    from vregion.engine.inputs import StageData
    from vregion.models import build_vlm

    cfg, result, _ = tiny_bench
    model, tokenizer = build_vlm(cfg.model)
    batches = StageData(cfg, model, tokenizer).train_loader()
    for row in result["rows"]:
        assert 0.0 < row["padding_share"] < 1.0  # the generated data varies in length: some padding
    # `full` has its own engine and stream: the step that creates the optimizer state, one warm-up step, then
    # the timed one (1 round x 1 step, grad-accum 1)
    *_, timed = itertools.islice(batches, 3)
    expected = 1.0 - float(timed["attention_mask"].sum()) / timed["attention_mask"].numel()
    assert result["rows"][0]["padding_share"] == pytest.approx(expected)
    # `full+packed` shares full's engine but has its own packed stream: one warm-up step, then the timed one
    packed_cfg = copy.deepcopy(cfg)  # the fixture's cfg is shared by the other tests
    packed_cfg.data.packing = True
    packed = list(itertools.islice(StageData(packed_cfg, model, tokenizer).train_loader(), 2))[-1]
    # (rows are as wide as the cost model chooses: for this attention-bound tiny model, one sample a row)
    assert packed["num_samples"] == 8 and "segment_ids" in packed and packed["input_ids"].shape[0] <= 8
    packed_cfg.data.packing_rows = "full"  # rows of 768 hold three of the ~250-token samples
    full_rows = list(itertools.islice(StageData(packed_cfg, model, tokenizer).train_loader(), 1))[0]
    assert full_rows["input_ids"].shape[0] < full_rows["num_samples"] == 8
    expected = 1.0 - float(packed["attention_mask"].sum()) / packed["attention_mask"].numel()
    row = next(r for r in result["rows"] if r["variant"] == "full+packed")
    assert row["padding_share"] == pytest.approx(expected)  # (the tiny data's samples are nearly equal in
    # length, so packing does not beat padding here; bench-llava-small measures it on LLaVA-665K lengths)


def test_plan_padding_estimate_by_hand():
    """One micro-batch of 4: padded to 10 -> 40 positions for 24 real tokens; packed into rows of 12:
    [10, 2] and [6, 6] -> 24; grouped sorts images first, then text, still one batch -> 40."""
    from vregion.bench.padding import estimate_padding

    estimate = estimate_padding([(10, True), (2, True), (6, False), (6, False)], micro_batch=4, max_length=12)
    assert estimate.real_tokens_per_sample == 6
    assert estimate.cost[None] == pytest.approx(40 / 24) and estimate.cost["grouped"] == pytest.approx(40 / 24)
    assert estimate.cost["packed"] == pytest.approx(1.0) and estimate.share("packed") == pytest.approx(0.0)
    two = estimate_padding([(10, True), (2, True), (6, False), (6, False)], micro_batch=2, max_length=12, seed=3)
    assert two.cost["grouped"] == pytest.approx((2 * 10 + 2 * 6) / 24)  # [2, 10] and [6, 6]


def test_bench_flops_lie_between_hand_bounds(tiny_bench):
    cfg, result, _ = tiny_bench
    full, pooled, _ = result["rows"]
    shape = shape_from_config(cfg.model)
    # Full tuning does at least forward + activation grad + weight grad (3 x 2 x params per token) of every
    # decoder linear on every non-pad token, and at most the plan's cost of max_length tokens with the head
    # on all of them.
    low = 3 * 2 * shape.llm.layers * shape.llm.linear_params * full["tokens_per_sample"]
    high = plan.sample_flops(shape, parse_variant("full", cfg.region), cfg.data.max_length).model
    assert low < full["flops_per_sample"] <= high


def test_bench_flops_are_the_plans_for_the_batch_it_trained_on(tiny_bench):
    from vregion.compress import IGNORE_INDEX
    from vregion.engine.inputs import StageData
    from vregion.models import build_vlm

    cfg, result, _ = tiny_bench
    model, tokenizer = build_vlm(cfg.model)
    batches = iter(StageData(cfg, model, tokenizer).train_loader())
    # each engine's loader has the same seed, so the same order: an optimizer-state step, a warm-up step, then
    # the timed step
    next(batches), next(batches)
    batch = next(batches)
    samples, length = batch["input_ids"].shape
    supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert result["rows"][0]["tokens_per_sample"] == float(batch["attention_mask"].sum()) / samples
    shape = shape_from_config(cfg.model)
    for row in result["rows"][:2]:  # the padded stream's batch (full+packed trains on packed rows)
        f = plan.sample_flops(shape, parse_variant(row["variant"], cfg.region), length,
                              head_tokens=supervised / samples)
        assert row["flops_per_sample"] == pytest.approx(f.model)
    # freezing 6 of 8 layers' weights and pooling 16 visual tokens to 2 from layer 1 (of ~230) cut ~20%
    assert 0.7 < result["rows"][1]["flops_per_sample"] / result["rows"][0]["flops_per_sample"] < 0.85


def test_measured_optimizer_state_and_memory_match_the_plan(tiny_bench):
    _, result, _ = tiny_bench
    full, pooled, packed = result["rows"]
    assert packed["optimizer_state_bytes_per_rank"] == full["optimizer_state_bytes_per_rank"]  # one engine
    for r in (full, pooled):
        assert r["optimizer_state_bytes_per_rank"] == r["plan_optimizer_state_bytes_per_rank"]  # fp32 Adam moments
        assert r["trainable_params"] == r["plan_trainable_params"]
    # region: 2 of 8 layers (hidden 64, inter 128, 4 heads, 2 kv heads) + projector, by hand (see test_plan)
    assert pooled["optimizer_state_bytes_per_rank"] == 8 * (2 * (8192 + 4096 + 24576 + 128) + 2112 + 4160)
    assert full["optimizer_state_bytes_per_rank"] == 8 * full["trainable_params"] \
        > 4 * pooled["optimizer_state_bytes_per_rank"]
    # a process training full fine-tuning holds at least its fp32 weights, gradients and Adam moments
    assert full["peak_mem_bytes_per_rank"] >= 4 * full["trainable_params"] * 2 + full["optimizer_state_bytes_per_rank"]
    assert 0 < pooled["peak_mem_bytes_per_rank"] < 2**31


def test_default_matrix_follows_the_schedule():
    demo = load_config(CONFIGS / "demo.yaml").stage_configs()[-1]
    variants, schedule = default_variants(demo)
    assert schedule.name == "four-wider-then-deeper"
    assert variants == ["full", "region", "region-lora", "full@2/8", "full@2/2", "full@16/2", "region@2/8"]
    last = load_config(CONFIGS / "demo.yaml", ["compress.schedule=last-stage-compression"]).stage_configs()[-1]
    variants, _ = default_variants(last)
    assert variants[3:] == ["full@2/16", "full@16/16", "full@16/4", "region@2/16"]  # heaviest: 2/16


def _steps(seconds: float, optimizer: float, flops: float) -> list[StepTiming]:
    return [StepTiming(seconds, 0.25 * seconds, 0.5 * seconds, optimizer, 100.0 * 16, 16, flops)] * 2


def test_projection_and_schedule_average_by_hand():
    proj = Projection(samples=6400, epochs=1.0, global_batch=64, gpus=2)
    row = variant_row("full", _steps(10.0, 2.0, 8e12), 1000, 8000, 2.0, proj, peak_mem_bytes=300)
    # forward + backward: (10 - 2) / 16 = 0.5 s per sample; 32 samples per GPU per step + the 2 s optimizer
    # step = 18 s per step; 100 steps -> 1800 s wall, 1 GPU-hour on 2 GPUs
    assert row["projected_wall_h"] == pytest.approx(0.5)
    assert row["projected_gpu_hours"] == pytest.approx(1.0)
    assert row["achieved_tflops"] == pytest.approx(0.8) and row["mfu"] == pytest.approx(0.4)
    schedule = get_schedule("two")  # 2/8 for half the run, then none
    pooled = variant_row("full@2/8", _steps(5.0, 2.0, 4e12), 1000, 8000, 2.0, proj, peak_mem_bytes=200)
    avg = schedule_average([row, pooled], schedule, "full", 2.0, proj)
    # half the samples at 10/16 s, half at 5/16 s -> 15/32 s per sample
    assert avg["samples_per_s"] == pytest.approx(32 / 15)
    assert avg["tokens_per_s"] == pytest.approx(100 * 32 / 15)
    assert avg["achieved_tflops"] == pytest.approx((0.5 * 8e12 / 16 + 0.5 * 4e12 / 16) / (15 / 32) / 1e12)
    assert avg["projected_gpu_hours"] == pytest.approx(0.5 * 1.0 + 0.5 * pooled["projected_gpu_hours"])
    assert avg["peak_mem_bytes_per_rank"] == 300
    assert row["padding_share"] is None  # positions not recorded: no padding share, not a made-up 0%
    padded = [StepTiming(1.0, 0.2, 0.5, 0.1, 300.0, 4, None, positions=400.0)] * 2
    assert variant_row("p", padded, 1, 1, 1.0, proj)["padding_share"] == pytest.approx(0.25)
    rows = add_ratios([row, pooled, avg])
    assert rows[1]["tokens_per_s_ratio"] == pytest.approx(2.0) and rows[1]["peak_mem_ratio"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="needs the variant 'full@2/8'"):
        schedule_average([row], schedule, "full", 2.0, proj)


def test_rows_without_a_flop_model_leave_tflops_and_mfu_out():
    from vregion.bench.report import format_table

    proj = Projection(samples=640, global_batch=64)
    rows = add_ratios([variant_row("gemma", [StepTiming(4.0, 1.0, 2.0, 0.5, 1600.0, 16, None)], 10, 80, 1.0, proj)])
    assert rows[0]["mfu"] is None and rows[0]["achieved_tflops"] is None and rows[0]["samples_per_s"] == 4.0
    meta = dict(device="cpu", rounds=1, steps_per_round=1, micro_batch_size=16, grad_accum=1, peak_tflops=1.0,
                peak_source="given", memory_kind=None, projection=vars(proj), other_processes_cores=None, cpu_count=2)
    cells = format_table(rows, meta).splitlines()[2].split("|")
    assert [c.strip() for c in cells[7:9]] == ["-", "-"] and cells[4].strip() == "4.00"


def test_wandb_offline_run_logs_the_table(tmp_path, monkeypatch):
    from vregion.config import WandbConfig

    proj = Projection(samples=640, global_batch=64)
    rows = add_ratios([variant_row("full", _steps(10.0, 2.0, 8e12), 1000, 8000, 2.0, proj)])
    png = tmp_path / "bench.png"
    png.write_bytes(b"")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert log_wandb(rows, {}, WandbConfig(mode="offline"), tmp_path, png) is None  # WANDB_MODE=disabled wins
    monkeypatch.setenv("WANDB_MODE", "offline")
    from vregion.bench.report import plot

    plot(rows, png, "full")
    folder = log_wandb(rows, {"gpus": 1}, WandbConfig(mode="disabled", project="bench-test"), tmp_path, png)
    assert Path(folder).is_relative_to(tmp_path / "wandb")
    assert any(p.suffix == ".wandb" for p in (tmp_path / "wandb").rglob("*"))


def test_bench_under_zero3_counts_trainable_params_before_partitioning(tmp_path):
    """ZeRO-3 partitions every parameter at engine start (`numel()` 0 on each rank); the count must not follow."""
    cfg = load_config(CONFIGS / "tiny.yaml", [f"run.output_dir={tmp_path / 'run'}", "deepspeed.zero_stage=3"])
    cfg = prepare_data(cfg.stage_configs()[-1], tmp_path / "run")
    result = run_bench(cfg, ["region"], rounds=1, steps_per_round=1, out_dir=tmp_path / "out", memory=False)
    row = result["rows"][0]
    # 2 of 8 layers + projector, by hand (see test_plan)
    assert row["trainable_params"] == row["plan_trainable_params"] == 2 * (8192 + 4096 + 24576 + 128) + 2112 + 4160
    assert row["optimizer_state_bytes_per_rank"] == row["plan_optimizer_state_bytes_per_rank"] > 0  # 1 rank: all
    header = (tmp_path / "out" / "bench.md").read_text().splitlines()[0]
    assert "| 80,256 | " in (tmp_path / "out" / "bench.md").read_text() and "optimizer state / rank" in header


def test_overrides_after_flags_apply(capsys):
    from vregion.cli import main

    assert main(["bench", "tiny", "--plan", "train.micro_batch_size=2", "--gpus", "2", "deepspeed.zero_stage=3"]) == 0
    assert "plan: 2 x h100, ZeRO-3 fp32, micro-batch 2," in capsys.readouterr().out
    from vregion.cli import parse_args

    args = parse_args(["train", "tiny", "optim.lr=1e-4", "--resume", "region.count=8"])
    assert args.resume and args.overrides == ["optim.lr=1e-4", "region.count=8"]
    for argv in (["bench", "tiny", "--plan", "--no-such-flag"], ["data", "synth", "out", "a=1"]):
        with pytest.raises(SystemExit) as stop:
            parse_args(argv)
        assert stop.value.code == 2

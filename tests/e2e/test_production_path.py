"""Every CLI verb that takes a model, on the production path: tiny CLIP + llama, LoRA with dropout on the uniform
region, ZeRO-3, a compression schedule that keeps pooling at inference, two ranks for train and resume.

The demo's EfficientNet once hid defects that every real config had; this file runs what users run, the way they
run it (`python -m vregion.cli ...` in real processes), and checks values an independent computation gives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.launch import REPO, kill_after_checkpoint, read_metrics, run_train, train_env
from vregion.config import load_config
from vregion.engine.optim import lr_multiplier

STEPS = 12
# LoRA r=4 with the paper's dropout 0.05 on the uniform region, ZeRO-3 in fp32, a schedule that keeps 16/4 pooling
# at inference; the region has 2 of 8 layers (uniform 25%).
PRODUCTION = ["stages=[]", "region.mode=lora", "region.lora.r=4", "region.lora.dropout=0.05",
              "deepspeed.zero_stage=3", "deepspeed.precision=fp32", "compress.schedule=last-stage-compression",
              f"train.max_steps={STEPS}", "train.save_every=4", "data.synthetic.num_train=128",
              "data.synthetic.num_eval=16", "eval.before_after=false", "train.eval_every=0"]


def vregion(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vregion.cli", *args], cwd=REPO, env=train_env(),
                          capture_output=True, text=True, timeout=timeout)


def step_records(run: Path) -> list[dict]:
    """metrics.jsonl's optimizer-step lines (held-out evaluations are lines of their own)."""
    return [r for r in read_metrics(run) if "loss" in r]


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 2-rank run, and one killed (SIGKILL) after its step-4 checkpoint and resumed."""
    root = tmp_path_factory.mktemp("production")
    run_train("configs/tiny.yaml", PRODUCTION + [f"run.output_dir={root / 'clean'}"], nproc=2)
    killed = PRODUCTION + [f"run.output_dir={root / 'killed'}"]
    kill_after_checkpoint("configs/tiny.yaml", killed, root / "killed", step=4, nproc=2)
    run_train("configs/tiny.yaml", killed, nproc=2, resume=True)
    return root


def test_resume_after_a_kill_repeats_every_loss_and_lr(runs):
    """Exact resume with LoRA dropout under ZeRO-3 across compression stages (the dropout masks depend on the
    restored RNG; a loader that drew from it shifted them: step-5 loss 3.94 vs 3.93)."""
    clean, resumed = step_records(runs / "clean"), step_records(runs / "killed")
    assert [r["step"] for r in clean] == [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(clean, resumed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7), a["step"]
        assert b["lr"] == a["lr"] and b["compress_stage"] == a["compress_stage"], a["step"]
    assert [r["compress_stage"] for r in clean] == [0] * 4 + [1] * 4 + [2] * 4


def test_logged_lr_is_the_one_each_step_used(runs):
    """Step s runs with the schedule's multiplier at s - 1 (the scheduler steps after the optimizer)."""
    cfg = load_config(REPO / "configs/tiny.yaml", PRODUCTION).optim
    logged = [r["lr"] for r in step_records(runs / "clean")]
    expected = [cfg.lr * lr_multiplier(s, STEPS, cfg) for s in range(STEPS)]
    assert logged == pytest.approx(expected, rel=1e-9)
    assert logged[0] == pytest.approx(cfg.lr / 2) and logged[1] == pytest.approx(cfg.lr)  # 2 warm-up steps
    assert logged[-1] > 0


@pytest.fixture(scope="module")
def base(runs):
    """`vregion convert` of the step-8 ZeRO-3 checkpoint (the run keeps its last two): the base for parameter change."""
    out = runs / "step8"
    ok(vregion("convert", str(runs / "clean" / "checkpoints" / "step-000008"), str(out)))
    return out


def test_analyze_with_base_measures_the_llm_region_only(runs, base):
    """Only the region's LoRA layers moved between step 8 and the end: parameter change is positive there and
    exactly zero on every frozen layer (CLIP's encoder layers once matched the same name pattern)."""
    final, data = runs / "clean" / "final", runs / "clean" / "data" / "eval"
    ok(vregion("analyze", str(final), "--data", str(data), "--base", str(base), "--out", str(runs / "analysis"),
               "--max-samples", "8"))
    layers = json.loads((runs / "analysis" / "layers.json").read_text())["layers"]
    region = json.loads((runs / "clean" / "summary.json").read_text())["region_layers"]
    assert len(layers) == 8 and len(region) == 2
    for row in layers:
        if row["layer"] in region:
            assert row["param_l2"] > 0, row
        else:
            assert row["param_l2"] == 0.0, row


def test_prune_with_base_prints_only_json_and_keeps_the_region(runs, base):
    final, data = runs / "clean" / "final", runs / "clean" / "data" / "eval"
    proc = ok(vregion("prune", str(final), "--drop", "2", "--metric", "param_l2", "--data", str(data),
                      "--base", str(base), "--out", str(runs / "pruned"), "--max-samples", "8"))
    report = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    region = json.loads((runs / "clean" / "summary.json").read_text())["region_layers"]
    assert len(report["dropped"]) == 2 and not set(report["dropped"]) & set(region)
    assert (runs / "pruned" / "model.safetensors").exists()


def test_eval_applies_the_schedules_inference_pooling(runs):
    final, data = runs / "clean" / "final", runs / "clean" / "data" / "eval"
    auto = json.loads(ok(vregion("eval", str(final), "--loss", str(data), "--max-samples", "8")).stdout)
    none = json.loads(ok(vregion("eval", str(final), "--loss", str(data), "--max-samples", "8",
                                 "--compress", "none")).stdout)
    assert auto["compression"] == {"layer": 4, "stride": 4}  # 16/4 of 32 layers on 8 layers
    assert none["compression"] is None
    assert auto["loss"]["samples"] == none["loss"]["samples"] > 0
    assert auto["loss"]["loss"] != none["loss"]["loss"]


def test_export_refuses_to_drop_inference_pooling_silently(runs):
    final = runs / "clean" / "final"
    refused = vregion("export", str(final), str(runs / "hf-refused"), "--format", "hf")
    assert refused.returncode == 2 and "stride" in refused.stderr and not (runs / "hf-refused").exists()
    ok(vregion("export", str(final), str(runs / "hf"), "--format", "hf", "--allow-uncompressed"))
    record = json.loads((runs / "hf" / "vregion_export.json").read_text())
    assert "16/4" in json.dumps(record) or '"stride": 4' in json.dumps(record)

    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(runs / "hf")
    assert model.config.text_config.num_hidden_layers == 8


def test_transfer_from_the_trained_checkpoint(runs):
    """VPG transfer of the trained vision side + projector to a wider qwen2, projector warm-up, then training."""
    target = "model.llm.tiny={family: qwen2, num_hidden_layers: 2, hidden_size: 96, initializer_range: 0.15}"
    ok(vregion("transfer", "configs/tiny.yaml", "stages=[]", "train.max_steps=1", "train.save_every=0",
               "data.synthetic.num_train=64", "data.synthetic.num_eval=0", "eval.before_after=false", target,
               "deepspeed.zero_stage=3", "region.mode=lora", f"run.output_dir={runs / 'transfer'}",
               f"transfer.source={runs / 'clean' / 'final'}", "transfer.warmup_steps=1"))
    assert (runs / "transfer" / "train" / "final" / "model.safetensors").exists()
    assert json.loads((runs / "transfer" / "warmup" / "summary.json").read_text())["steps"] == 1


def test_bench_under_zero3_counts_the_trainable_parameters(runs):
    out = runs / "bench"
    ok(vregion("bench", "configs/tiny.yaml", *PRODUCTION, f"run.output_dir={runs / 'bench-run'}",
               "--variants", "full,region-lora", "--rounds", "1", "--steps", "1", "--no-memory", "--out", str(out)))
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["full", "region-lora"]
    for row in rows:
        assert row["trainable_params"] == row["plan_trainable_params"] > 0, row
    assert rows[1]["trainable_params"] < rows[0]["trainable_params"]


def test_bench_plan_takes_overrides_after_its_flags(runs):
    plain = ok(vregion("bench", "configs/tiny.yaml", *PRODUCTION, "--plan")).stdout
    later = ok(vregion("bench", "configs/tiny.yaml", "--plan", *PRODUCTION)).stdout
    assert plain == later and "lora" in plain.lower()

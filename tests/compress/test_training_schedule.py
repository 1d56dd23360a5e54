"""Compression inside real DeepSpeed training: stage by optimizer step, ZeRO-3 with two ranks, exact resume."""

from __future__ import annotations

import json

import pytest

from tests.engine.launch import kill_after_checkpoint, read_metrics, run_train, train_losses

COMMON = ["stages=[]", "data.synthetic.num_eval=0", "eval.before_after=false", "compress.schedule=four-wider-then-deeper"]


def stages_by_step(run_dir) -> dict[int, tuple]:
    return {r["step"]: (r["compress_stage"], r["compress_layer"], r["compress_stride"])
            for r in read_metrics(run_dir) if "loss" in r}


def test_two_rank_zero3_with_accumulation_follows_the_optimizer_step(tmp_path):
    """8 optimizer steps of 2 micro-batches each: the four stages get 2 steps apiece (not 2 forwards)."""
    run_dir = tmp_path / "run"
    overrides = COMMON + [f"run.output_dir={run_dir}", "deepspeed.zero_stage=3", "train.grad_accum=2",
                          "train.micro_batch_size=4", "train.max_steps=8", "train.save_every=0"]
    run_train("configs/tiny.yaml", overrides, nproc=2)
    # tiny llama has 8 layers: K=2 -> 1 and K=16 -> 4 after scaling from 32 layers.
    expected = {1: (0, 1, 8), 2: (0, 1, 8), 3: (1, 1, 2), 4: (1, 1, 2), 5: (2, 4, 2), 6: (2, 4, 2),
                7: (3, -1, 1), 8: (3, -1, 1)}
    assert stages_by_step(run_dir) == expected
    losses = train_losses(run_dir)
    assert all(0 < loss < 10 for loss in losses.values())
    assert min(losses[7], losses[8]) < losses[1]
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2


def test_resume_mid_schedule_continues_in_the_same_stage_with_the_same_losses(tmp_path):
    common = COMMON + ["train.max_steps=16", "train.save_every=3"]
    clean = tmp_path / "clean"
    run_train("configs/tiny.yaml", common + [f"run.output_dir={clean}"])

    killed = tmp_path / "killed"
    overrides = common + [f"run.output_dir={killed}"]
    kill_after_checkpoint("configs/tiny.yaml", overrides, killed, step=6)  # step 6: inside stage 1 (steps 5-8)
    run_train("configs/tiny.yaml", overrides, resume=True)
    assert stages_by_step(killed) == stages_by_step(clean)
    expected, resumed = train_losses(clean), train_losses(killed)
    assert sorted(resumed) == list(range(1, 17))
    for step in range(1, 17):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step

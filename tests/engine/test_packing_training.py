"""Packing and length grouping in real `vregion train` runs on LLaVA-665K-shaped data (tiny CLIP + tiny llama):
a packed run optimises exactly what the padded run does (same losses), and a packed, length-grouped 2-rank
ZeRO-3 LoRA run killed with SIGKILL resumes to the uninterrupted run's losses."""

from __future__ import annotations

import pytest

from tests.engine.launch import kill_after_checkpoint, read_metrics, run_train, train_losses
from vregion.data.profile_synth import make_profile_shards

COMMON = ["stages=[]", "data.synthetic.num_train=0", "data.synthetic.num_eval=0", "eval.before_after=false",
          "data.max_length=384", "train.micro_batch_size=4", "data.shuffle_buffer=16"]


@pytest.fixture(scope="module")
def profile_shards(tmp_path_factory):
    """LLaVA-665K lengths (byte tokens, truncated at 384: 16 visual + text), text-only samples mixed in."""
    out = tmp_path_factory.mktemp("llava665k")
    make_profile_shards(out, "llava-665k", 192, image_size=32, seed=0, samples_per_shard=32)
    return str(out)


def test_packed_run_has_the_padded_runs_losses(tmp_path, profile_shards):
    """Same samples per micro-batch, loss normalised over the step's supervised tokens: same objective."""
    common = COMMON + [f"data.train_shards={profile_shards}", "train.max_steps=4", "train.save_every=0",
                       "train.grad_accum=2", "deepspeed.zero_stage=2"]
    run_train("configs/tiny.yaml", common + [f"run.output_dir={tmp_path / 'padded'}"])
    # full rows: several samples per row (auto would keep this attention-bound tiny model at one a row)
    run_train("configs/tiny.yaml", common + [f"run.output_dir={tmp_path / 'packed'}", "data.packing=true",
                                             "data.packing_rows=full"])
    padded, packed = (read_metrics(tmp_path / name) for name in ("padded", "packed"))
    padded = {r["step"]: r for r in padded if "loss" in r}
    packed = {r["step"]: r for r in packed if "loss" in r}
    assert sorted(packed) == list(range(1, 5))
    for step in packed:
        assert packed[step]["loss"] == pytest.approx(padded[step]["loss"], rel=1e-5), step
    assert packed[1]["loss"] != pytest.approx(packed[4]["loss"], rel=1e-3)  # it trained


def test_packed_grouped_zero3_lora_two_ranks_resume_exactly(tmp_path, profile_shards):
    common = COMMON + [f"data.train_shards={profile_shards}", "train.max_steps=8", "train.save_every=4",
                       "data.packing=true", "data.packing_rows=full", "data.group_by_length=3",
                       "deepspeed.zero_stage=3",
                       "region.mode=lora", "region.lora.r=4", "region.lora.alpha=8", "region.lora.dropout=0.1"]
    clean = tmp_path / "clean"
    run_train("configs/tiny.yaml", common + [f"run.output_dir={clean}"], nproc=2)
    killed = tmp_path / "killed"
    overrides = common + [f"run.output_dir={killed}"]
    kill_after_checkpoint("configs/tiny.yaml", overrides, killed, step=4, nproc=2)
    run_train("configs/tiny.yaml", overrides, nproc=2, resume=True)
    expected, resumed = train_losses(clean), train_losses(killed)
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step

"""Real DeepSpeed training on CPU: frozen means frozen, LoRA stays in the region, loss falls, resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.launch import (
    REPO, kill_after_checkpoint, read_metrics, run_train, train_command, train_env, train_losses,
)
from vregion.config import load_config
from vregion.engine.exit_status import read_exit_status
from vregion.engine.trainer import seed_everything
from vregion.models import build_vlm
from vregion.region import select_layers

# One stage, region training from random init: enough steps that every trainable tensor moves.
SINGLE_STAGE = ["stages=[]", "train.max_steps=3", "train.save_every=0", "data.synthetic.num_eval=0",
                "eval.before_after=false"]


def initial_weights(overrides: list[str]) -> dict[str, torch.Tensor]:
    """The weights the trainer starts from (same seed, same build order)."""
    cfg = load_config(REPO / "configs/tiny.yaml", overrides).stage_configs()[0]
    seed_everything(cfg.run.seed)
    model, _ = build_vlm(cfg.model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def region_layer_prefixes(layers: list[int]) -> tuple[str, ...]:
    return tuple(f"llm.model.layers.{i}." for i in layers)


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_frozen_parameters_bitwise_unchanged_and_without_optimizer_state(tmp_path, zero_stage):
    check_frozen_and_state(tmp_path, [f"deepspeed.zero_stage={zero_stage}"], nproc=2, copies=2 if zero_stage == 0 else 1)


def test_zero3_with_cpu_offload_keeps_frozen_frozen(tmp_path):
    """ZeRO-Offload: optimizer state and parameters in CPU memory (DeepSpeed's CPU Adam)."""
    overrides = ["deepspeed.zero_stage=3", "deepspeed.offload_optimizer=true", "deepspeed.offload_params=true"]
    check_frozen_and_state(tmp_path, overrides, nproc=1, copies=1)


def check_frozen_and_state(tmp_path, extra: list[str], nproc: int, copies: int) -> None:
    """Train a few steps, then: frozen tensors bitwise equal to the initial ones, every trainable weight
    matrix moved, and Adam state for exactly the trainable elements (`copies` full copies over all ranks)."""
    overrides = SINGLE_STAGE + [f"run.output_dir={tmp_path}/run"] + extra
    run_train("configs/tiny.yaml", overrides, nproc=nproc)
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == nproc
    zero_stage = next(int(o.split("=")[1]) for o in extra if o.startswith("deepspeed.zero_stage"))
    layers = summary["region_layers"]
    assert layers == select_layers("uniform", 8, fraction=0.25) and len(layers) == 2
    trained = load_file(run_dir / "final" / "model.safetensors")
    start = initial_weights(overrides)
    assert set(trained) == set(start)
    trainable_prefixes = region_layer_prefixes(layers) + ("projector.",)
    trainable_numel = 0
    for name, before in start.items():
        after = trained[name]
        if name.startswith(trainable_prefixes):
            trainable_numel += before.numel()
            if before.dim() > 1:  # every weight matrix of the region and projector moved
                assert not torch.equal(before, after), f"{name} did not train"
        else:
            assert torch.equal(before, after), f"frozen {name} changed under ZeRO-{zero_stage}"
    assert summary["trainable_params"] == trainable_numel
    # Adam keeps two moments per trainable element and none for frozen weights. Summed over the ranks:
    # without ZeRO each rank holds a full copy; ZeRO-2/3 partition it (padding partitions a little).
    state = summary["optimizer_state_numel"]
    assert 2 * trainable_numel * copies <= state <= 2 * trainable_numel * copies + 4096, (state, trainable_numel)


def test_lora_mode_changes_only_the_region_linears(tmp_path):
    overrides = SINGLE_STAGE + [
        f"run.output_dir={tmp_path}/run",
        "region.mode=lora",
        "region.lora.r=4",
        "region.lora.alpha=8",
        "region.lora.dropout=0.0",
        "deepspeed.zero_stage=3",
        "train.max_steps=4",
    ]
    run_train("configs/tiny.yaml", overrides, nproc=2)
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    layers = summary["region_layers"]
    trained = load_file(run_dir / "final" / "model.safetensors")
    start = initial_weights(overrides)
    assert set(trained) == set(start), "LoRA must be merged into plain weights in the final checkpoint"
    linears = [f"self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    linears += [f"mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")]
    changed = {name for name in start if not torch.equal(start[name], trained[name])}
    expected = {f"llm.model.layers.{i}.{linear}.weight" for i in layers for linear in linears}
    projector = {n for n in start if n.startswith("projector.")}
    assert changed - projector == expected
    assert projector <= changed


def test_tiny_config_runs_from_any_directory_and_learns(tmp_path):
    """`vregion train tiny` from an unrelated folder: both stages run, the loss falls, outputs are complete."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    run_train("tiny", ["run.output_dir=out", "stages.1.train.max_steps=30", "stages.1.train.eval_every=10",
                       "eval.in_training=true"], cwd=workdir)
    run_dir = workdir / "out"
    assert (run_dir / "config.yaml").exists()
    align, region = train_losses(run_dir / "align"), train_losses(run_dir / "region")
    assert sorted(align) == list(range(1, 11)) and sorted(region) == list(range(1, 31))
    first, last = align[1], min(region[s] for s in range(26, 31))
    assert last < 0.5 * first, (first, last)
    for stage in ("align", "region"):
        summary = json.loads((run_dir / stage / "summary.json").read_text())
        assert summary["eval_loss"] is not None and summary["eval_loss"] < first
        assert (run_dir / stage / "final" / "model.safetensors").exists()
    assert json.loads((run_dir / "align" / "summary.json").read_text())["region_layers"] == []
    records = read_metrics(run_dir / "region")
    assert all(r["tokens_per_s"] > 0 and r["step_time_s"] > 0 for r in records if "loss" in r)
    # eval.in_training: an accuracy curve, whose last point is the final model's held-out accuracy.
    curve = {r["step"]: r["eval_vqa_accuracy"] for r in records if "eval_vqa_accuracy" in r}
    assert sorted(curve) == [0, 10, 20, 30]
    after = json.loads((run_dir / "eval_after.json").read_text())
    assert curve[30] == after["vqa"]["accuracy"] == json.loads((run_dir / "region" / "summary.json").read_text())[
        "eval_vqa_accuracy"]


def test_multi_rank_cpu_run_leaves_no_shared_memory_behind(tmp_path):
    """DeepSpeed's CPU all-reduce buffer is a ~69 MB /dev/shm segment per rank that it never unlinks; vregion
    unlinks them once every rank has mapped them, so a finished (or killed) run holds no RAM afterwards."""
    command = train_command("configs/tiny.yaml", SINGLE_STAGE + [f"run.output_dir={tmp_path / 'run'}"], nproc=2)
    port = command[command.index("--master_port") + 1]
    proc = subprocess.run(command, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "deepspeed_shm_comm_op built successfully" in proc.stdout + proc.stderr  # the buffers were made
    leftovers = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))
    assert leftovers == []


def test_killed_run_resumes_with_identical_losses(tmp_path):
    """SIGKILL a 2-rank run after a checkpoint, resume it, and compare every step's loss with a clean run."""
    common = ["stages=[]", "data.synthetic.num_eval=0", "train.max_steps=24", "train.save_every=4"]
    clean = tmp_path / "clean"
    run_train("configs/tiny.yaml", common + [f"run.output_dir={clean}"], nproc=2)

    killed = tmp_path / "killed"
    overrides = common + [f"run.output_dir={killed}"]
    kill_after_checkpoint("configs/tiny.yaml", overrides, killed, step=8, nproc=2)

    run_train("configs/tiny.yaml", overrides, nproc=2, resume=True)
    expected, resumed = train_losses(clean), train_losses(killed)
    assert sorted(resumed) == list(range(1, 25))
    for step in range(1, 25):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step


def test_existing_run_directory_needs_resume(tmp_path):
    overrides = SINGLE_STAGE + [f"run.output_dir={tmp_path}/run", "train.max_steps=1"]
    run_train("configs/tiny.yaml", overrides)
    with pytest.raises(AssertionError, match="pass --resume"):
        run_train("configs/tiny.yaml", overrides)


def test_corrupt_samples_are_skipped_and_counted_in_metrics(tmp_path):
    """Undecodable images and sample without an answer are skipped, counted, and training goes on."""
    import io

    from PIL import Image

    from vregion.data import write_shards

    def png(colour):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
        return buf.getvalue()

    good = [
        {"id": f"g{i}", "images": [png((255, 0, 0))],
         "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]}
        for i in range(14)
    ]
    bad_image = {"id": "bad", "images": [b"\x89PNG not really"],
                 "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]}
    no_answer = {"id": "noans", "images": [], "conversations": [{"from": "human", "value": "hello"}]}
    write_shards(good[:7] + [bad_image] + good[7:] + [no_answer], tmp_path / "shards", samples_per_shard=8)
    overrides = [
        "stages=[]", f"run.output_dir={tmp_path}/run", f"data.train_shards={tmp_path}/shards",
        "data.synthetic.num_train=0", "data.synthetic.num_eval=0", "data.shuffle_buffer=0",
        "train.max_steps=2", "train.micro_batch_size=8",
    ]
    run_train("configs/tiny.yaml", overrides)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped"] == {"bad_image": 1, "no_supervised_tokens": 1}
    last = read_metrics(tmp_path / "run")[-1]
    assert last["skipped_bad_image"] == 1 and last["skipped_no_supervised_tokens"] == 1


def test_sigterm_checkpoints_exits_75_and_resume_matches_an_uninterrupted_run(tmp_path):
    """Preemption: SIGTERM mid-run -> the step finishes, a checkpoint is written, exit code 75; --resume
    (what a requeued job runs) continues to the same losses as a run never interrupted."""
    common = ["stages=[]", "data.synthetic.num_eval=0", "eval.before_after=false", "train.max_steps=30",
              "train.save_every=0"]
    clean = tmp_path / "clean"
    run_train("configs/tiny.yaml", common + [f"run.output_dir={clean}"])

    stopped = tmp_path / "stopped"
    overrides = common + [f"run.output_dir={stopped}"]
    # VREGION_STATUS_DIR: where train.sbatch has each rank say how it ended (its launcher's exit code may not).
    status_dir = tmp_path / "status"
    proc = subprocess.Popen(train_command("configs/tiny.yaml", overrides), cwd=REPO,
                            env={**train_env(), "VREGION_STATUS_DIR": str(status_dir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((stopped / "metrics.jsonl").exists() and len(read_metrics(stopped)) >= 3):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "stopped by SIGTERM after step" in err and "continue with --resume" in err
    step = int((stopped / "checkpoints" / "latest").read_text().split("-")[1])
    assert 3 <= step < 30 and not (stopped / "final").exists()
    assert read_exit_status(status_dir / "rank-0.status") == {"exit": "75", "step": str(step), "signal": "SIGTERM"}
    run_train("configs/tiny.yaml", overrides, resume=True)
    expected, resumed = train_losses(clean), train_losses(stopped)
    assert sorted(resumed) == list(range(1, 31))
    for s in range(1, 31):
        assert resumed[s] == pytest.approx(expected[s], rel=1e-6, abs=1e-7), s

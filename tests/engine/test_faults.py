"""Faults during real training: a rank killed outright ends the job quickly, a crash mid-save loses nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import psutil
import pytest

from tests.engine.launch import REPO, read_metrics, run_train, train_command, train_env
from vregion.engine import checkpoint

LOCAL_SH = REPO / "launch" / "local.sh"
SINGLE_STAGE = ["stages=[]", "data.synthetic.num_eval=0", "eval.before_after=false"]


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: its parent, or a non-reaping init, has just not collected it yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(300)
def test_sigkill_of_one_rank_ends_the_launch_with_an_error_within_60_s(tmp_path):
    """launch/local.sh with 2 ranks; `kill -9` of rank 1 mid-training must not leave rank 0 waiting in a gloo
    collective until the 30-minute process-group timeout: the launcher stops it and exits non-zero."""
    run = tmp_path / "run"
    overrides = SINGLE_STAGE + [f"run.output_dir={run}", "train.max_steps=1000", "train.save_every=0"]
    env = {**train_env(), "NPROC": "2", "LOG_DIR": str(tmp_path / "logs")}
    launcher = subprocess.Popen(["bash", str(LOCAL_SH), "tiny", *overrides], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not ((run / "metrics.jsonl").exists() and len(read_metrics(run)) >= 2):
            assert launcher.poll() is None, "training ended before the kill"
            assert time.time() < deadline, "training did not start within 180 s"
            time.sleep(0.1)
        # local.sh execs DeepSpeed's launcher, whose children are the ranks.
        ranks = {int(p.environ()["RANK"]): p.pid for p in psutil.Process(launcher.pid).children()}
        assert sorted(ranks) == [0, 1]
        killed_at = time.monotonic()
        os.kill(ranks[1], signal.SIGKILL)
        code = launcher.wait(timeout=60)
        elapsed = time.monotonic() - killed_at
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert code not in (0, 75), code  # a failure, not success and not "preempted, resume me"
    assert elapsed < 60, elapsed
    assert _gone(ranks[0]), "the surviving rank outlived its launcher"
    assert not (run / "final").exists()


def _freeze_during_save(proc: subprocess.Popen, root, first_step: int, every: int, last_step: int) -> int:
    """SIGSTOP the run's process group while checkpoint folder `step-N` exists without its COMPLETE marker
    (DeepSpeed is writing it), for the first N >= first_step where polling catches that window; returns N."""
    for step in range(first_step, last_step, every):
        folder = root / checkpoint.tag_for(step)
        deadline = time.time() + 120
        while not folder.exists():
            assert proc.poll() is None, "the run ended before a save could be interrupted"
            assert time.time() < deadline
            time.sleep(0.001)
        os.killpg(proc.pid, signal.SIGSTOP)
        if not (folder / checkpoint.COMPLETE).exists():
            return step
        os.killpg(proc.pid, signal.SIGCONT)  # that save finished before the stop: try the next one
    raise AssertionError(f"no save between step {first_step} and {last_step} was caught unfinished")


@pytest.mark.timeout(300)
def test_crash_during_checkpoint_save_leaves_the_previous_checkpoint_latest_and_resumable(tmp_path):
    """SIGKILL while checkpoint N is half-written: `latest` still names N-2, which loads, and --resume
    continues from it to the end; the half-written folder never counts as a checkpoint."""
    run = tmp_path / "run"
    root = run / "checkpoints"
    overrides = SINGLE_STAGE + [f"run.output_dir={run}", "train.max_steps=12", "train.save_every=2"]
    proc = subprocess.Popen(train_command("configs/tiny.yaml", overrides), cwd=REPO, env=train_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (root / checkpoint.tag_for(2) / checkpoint.COMPLETE).exists():
            assert proc.poll() is None and time.time() < deadline, "no first checkpoint"
            time.sleep(0.05)
        step = _freeze_during_save(proc, root, first_step=4, every=2, last_step=12)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    half = root / checkpoint.tag_for(step)
    assert half.is_dir() and not (half / checkpoint.COMPLETE).exists()
    previous = checkpoint.tag_for(step - 2)
    assert (root / "latest").read_text() == previous
    assert checkpoint.latest_tag(root) == previous
    assert not (run / "final").exists()

    resumed = run_train("configs/tiny.yaml", overrides, resume=True)
    match = re.search(r"resuming \S+ from \S+/(step-\d+)", resumed.stdout)
    assert match and match.group(1) == previous, resumed.stdout[-2000:]
    assert sorted({r["step"] for r in read_metrics(run) if "loss" in r}) == list(range(1, 13))
    assert checkpoint.latest_tag(root) == checkpoint.tag_for(12)
    # Pruning removed the half-written folder (or the resumed run rewrote it completely).
    assert all((p / checkpoint.COMPLETE).exists() for p in root.glob("step-*"))
    assert (run / "final" / "model.safetensors").exists()

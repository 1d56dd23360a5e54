"""train.sbatch's exit handling and preflight on the real two-node cluster: the time-limit warning sent to the
batch shell (B:USR1) requeues, a plain scancel stops with "cancelled after a checkpoint at step N", and a node
whose environment differs stops the job within a minute with a table naming it."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.engine.launch import read_metrics
from tests.launch.test_slurm import RUN, SBATCH, first_lines, job_logs, wait_for_file


def _latest_step(run: Path) -> int:
    return int((run / "checkpoints" / "latest").read_text().split("-")[1])


def _status(logs: Path) -> list[dict]:
    return [dict(line.split("=", 1) for line in p.read_text().splitlines()) for p in sorted(logs.glob("rank-*.status"))]


@pytest.mark.timeout(420)
def test_batch_shell_usr1_requeues_and_a_plain_scancel_of_the_resumed_job_says_cancelled_at_its_step(
        slurm_cluster, tmp_path):
    """`scancel -b --signal=USR1` (what `--signal=B:USR1@T` sends) reaches only the batch shell, which forwards it
    to the steps: checkpoint, exit 75, requeue. The requeued job resumes; a plain `scancel` then makes the ranks
    checkpoint on SIGTERM, and although DeepSpeed's launcher exits 1, the script reports the cancel at the
    checkpoint's step and does not requeue."""
    run = tmp_path / "run"
    job = slurm_cluster.sbatch("-N", "2", str(SBATCH), "tiny", f"run.output_dir={run}", *RUN,
                               "train.max_steps=400", "train.save_every=0")
    logs = job_logs(run, job)
    try:
        wait_for_file(slurm_cluster, job, run / "metrics.jsonl", 240, logs / "job.out")
        slurm_cluster.run("scancel", "--batch", "--signal=USR1", str(job))
        deadline = time.time() + 120
        while slurm_cluster.job(job)["Restarts"] != "1":
            assert time.time() < deadline, (logs / "job.out").read_text()
            time.sleep(0.5)
        out = (logs / "job.out").read_text()
        warned = re.search(r"time-limit warning \(SIGUSR1\): checkpoint at step (\d+); requeueing job", out)
        assert warned, out
        first_stop = int(warned.group(1))
        assert (run / "checkpoints" / f"step-{first_stop:06d}" / "COMPLETE").exists()
        assert {s["signal"] for s in _status(logs)} == {"SIGUSR1"}

        # The second attempt: wait until it trained past its resume point, then cancel it outright.
        slurm_cluster.wait_job(job, {"RUNNING"}, timeout=120)
        deadline = time.time() + 240
        while max((r["step"] for r in read_metrics(run) if "loss" in r), default=0) < first_stop + 2:
            assert slurm_cluster.job(job)["JobState"] == "RUNNING", (logs / "job.out").read_text()
            assert time.time() < deadline
            time.sleep(0.2)
        slurm_cluster.run("scancel", str(job))
        info = slurm_cluster.wait_job(job, {"CANCELLED"}, timeout=120)
        # The batch shell runs on after slurm marks the job cancelled: wait for its last line.
        deadline = time.time() + 60
        while "cancelled" not in (logs / "job.out").read_text():
            assert time.time() < deadline, (logs / "job.out").read_text()
            time.sleep(0.5)
        out = (logs / "job.out").read_text()
    finally:
        first_lines(job).unlink(missing_ok=True)
    cancelled = re.search(r"vregion: cancelled after a checkpoint at step (\d+) \(SIGTERM\); not requeued", out)
    assert cancelled, out
    step = int(cancelled.group(1))
    assert step > first_stop + 1 and _latest_step(run) == step, out
    assert (run / "checkpoints" / f"step-{step:06d}" / "COMPLETE").exists()
    assert info["Restarts"] == "1", out
    assert out.count("requeueing") == 1
    assert "training exited with code" not in out
    assert _status(logs) == [{"exit": "75", "step": str(step), "signal": "SIGTERM"}] * 2
    # The launchers did exit 1 (their own SIGTERM handling): the status files are what told the truth.
    assert sorted(p.read_text().strip() for p in logs.glob("node-*.rc")) == ["1", "1"]


def _can_hide_a_folder() -> bool:
    """Whether this machine lets a process mount over a folder in its own mount namespace (root, unshare)."""
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True).returncode == 0


@pytest.mark.timeout(300)
def test_a_node_with_another_transformers_and_without_the_output_folder_fails_preflight_within_60_s(
        slurm_cluster, tmp_path):
    """The second node runs another environment: PYTHON points to a wrapper that, on node 1 only, puts a
    transformers 9.9.9 first on the path and (where the machine allows it) mounts an empty folder over the run
    directory, as a node without the shared filesystem would see it. The job fails in the preflight step, with
    exit 78 and a table naming that node and both differences, and trains nothing."""
    run = tmp_path / "run"
    run.mkdir()
    shim = tmp_path / "node1-site"
    (shim / "transformers-9.9.9.dist-info").mkdir(parents=True)
    (shim / "transformers-9.9.9.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: transformers\nVersion: 9.9.9\n")
    hide = _can_hide_a_folder()
    node1 = f'export PYTHONPATH="{shim}:$PYTHONPATH"\n'
    if hide:
        node1 += f'exec unshare -m sh -c \'mount -t tmpfs none "{run}" && exec "$0" "$@"\' python "$@"\n'
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nif [ "${{SLURM_NODEID:-0}}" = 1 ]; then\n{node1}fi\nexec python "$@"\n')
    wrapper.chmod(0o755)

    env = {**slurm_cluster.env, "PYTHON": str(wrapper)}
    started = time.time()
    job = int(subprocess.run(["sbatch", "--parsable", "-N", "2", str(SBATCH), "tiny", f"run.output_dir={run}", *RUN],
                             env=env, capture_output=True, text=True, check=True).stdout.split(";")[0])
    logs = job_logs(run, job)
    try:
        info = slurm_cluster.wait_job(job, {"FAILED"}, timeout=90)
        elapsed = time.time() - started
        out = (logs / "job.out").read_text()
    finally:
        first_lines(job).unlink(missing_ok=True)
    assert elapsed < 60, (elapsed, out)
    assert info["ExitCode"] == "78:0", out
    assert "preflight check failed" in out and "nothing was trained" in out
    assert re.search(r"n2 \(task 1\): transformers is '9\.9\.9', the first node has '\d", out), out
    header = next(line for line in out.splitlines() if line.startswith("check "))
    assert "n1 (task 0)" in header and "n2 (task 1)" in header
    if hide:
        assert re.search(r"n2 \(task 1\): output_dir is 'NOT VISIBLE: .*', the first node has 'ok'", out), out
    assert not list(logs.glob("*_rank*.log")) and not (run / "metrics.jsonl").exists()

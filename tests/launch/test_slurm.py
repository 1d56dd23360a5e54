"""launch/slurm/train.sbatch on a real two-node SLURM cluster: world size 2, preemption and requeue, a dead rank."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psutil
import pytest

from tests.engine.launch import REPO, read_metrics
from tests.launch.conftest import repository_files

SBATCH = REPO / "launch" / "slurm" / "train.sbatch"
RUN = ["stages=[]", "data.synthetic.num_eval=0", "eval.before_after=false", "train.max_steps=16",
       "train.save_every=4"]


def job_logs(run: Path, job: int) -> Path:
    """train.sbatch's default LOG_DIR: job.out, per-rank logs, node exit codes and rank status files."""
    return run / "logs" / f"vregion-{job}"


def first_lines(job: int) -> Path:
    """Where the batch output goes before the run directory is known (#SBATCH --output=/tmp/%x-%j.out)."""
    return Path(f"/tmp/vregion-{job}.out")


def wait_for_file(cluster, job: int, path: Path, timeout: float, out: Path) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        info = cluster.job(job)
        assert info["JobState"] in ("PENDING", "RUNNING"), (info, out.read_text() if out.exists() else "")
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.2)


@pytest.mark.timeout(420)
def test_two_node_job_trains_and_after_the_time_limit_warning_requeues_and_resumes(slurm_cluster, tmp_path):
    """sbatch -N 2 (one CPU rank per node), submitted from the repository root with the script's defaults. When a
    checkpoint exists, the job gets the USR1 that `--signal=USR1@120` sends before the time limit: the ranks
    checkpoint and exit 75, the script requeues the job, and its second start resumes from that checkpoint and
    finishes the run. The job writes nothing into the repository: its output is under the run directory."""
    run = tmp_path / "run"
    before = repository_files()
    job = slurm_cluster.sbatch("-N", "2", str(SBATCH), "tiny", f"run.output_dir={run}", *RUN)
    logs = job_logs(run, job)
    try:
        wait_for_file(slurm_cluster, job, run / "checkpoints" / "step-000004" / "COMPLETE", 240, logs / "job.out")
        # The same signal slurmctld sends at the warning time: to every process of the job's steps, not the batch
        # shell.
        slurm_cluster.run("scancel", "--signal=USR1", str(job))

        info = slurm_cluster.wait_job(job, {"COMPLETED"}, timeout=300)
        out = (logs / "job.out").read_text()
        assert info["Restarts"] == "1", out
        assert info["ExitCode"] == "0:0", out
        stopped = re.search(r"time-limit warning \(SIGUSR1\): checkpoint at step (\d+); requeueing job (\d+)", out)
        assert stopped and int(stopped.group(2)) == job, out
        assert "vregion: training finished" in out
        # Before the run directory was known, the batch output held one line: where the rest went.
        assert f"output continues in {logs}/job.out" in first_lines(job).read_text()
    finally:
        first_lines(job).unlink(missing_ok=True)
    assert repository_files() == before

    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 16
    assert sorted({r["step"] for r in read_metrics(run) if "loss" in r}) == list(range(1, 17))
    assert (run / "checkpoints" / "latest").read_text() == "step-000016"
    assert (run / "checkpoints" / "step-000016" / "COMPLETE").exists()
    assert (run / "final" / "model.safetensors").exists()

    # Per-rank logs of both attempts (the launcher names them <start time>_rank<r>.log), one rank per node.
    rank_logs = sorted(logs.glob("*_rank*.log"))
    assert sorted(p.name.split("_")[1] for p in rank_logs) == ["rank0.log", "rank0.log", "rank1.log", "rank1.log"]
    first_attempt, second_attempt = sorted(logs.glob("*_rank0.log"))  # the names start with the time
    assert "resuming" not in first_attempt.read_text()
    resumed = re.search(r"resuming \S+ from \S+/step-(\d+)", second_attempt.read_text())
    assert resumed, "the requeued job did not resume from a checkpoint"
    assert int(resumed.group(1)) == int(stopped.group(1)) and 4 <= int(resumed.group(1)) < 16
    # Each node's launcher exit code and each rank's status of the last attempt.
    assert sorted(p.read_text().strip() for p in logs.glob("node-*.rc")) == ["0", "0"]
    assert sorted(p.read_text() for p in logs.glob("rank-*.status")) == ["exit=0\n", "exit=0\n"]


def _job_ranks(job: int) -> dict[int, psutil.Process]:
    """The training processes of SLURM job `job` on this machine (both test nodes), by global rank."""
    ranks = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            env = p.environ() if "vregion.cli" in (p.info["cmdline"] or []) else {}
            # The launcher's command line names vregion.cli too; only the ranks have RANK.
            if env.get("SLURM_JOB_ID") == str(job) and "RANK" in env and p.status() != psutil.STATUS_ZOMBIE:
                ranks[int(env["RANK"])] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return ranks


@pytest.mark.timeout(300)
def test_a_rank_killed_on_one_node_fails_the_two_node_job_within_60_s(slurm_cluster, tmp_path):
    """kill -9 of the rank on the second node: its launcher fails, srun --kill-on-bad-exit ends the first node,
    and the job fails with that exit code (no requeue: it was not a preemption) instead of hanging."""
    run = tmp_path / "run"
    job = slurm_cluster.sbatch(
        "-N", "2", f"--chdir={tmp_path}", f"--output={tmp_path}/job.out",
        str(SBATCH), "tiny", f"run.output_dir={run}", *RUN, "train.max_steps=1000", "train.save_every=0",
    )
    logs = job_logs(run, job)
    deadline = time.time() + 240
    while not ((run / "metrics.jsonl").exists() and len(read_metrics(run)) >= 2):
        assert slurm_cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), (tmp_path / "job.out").read_text()
        assert time.time() < deadline, "training did not start within 240 s"
        time.sleep(0.2)
    ranks = _job_ranks(job)
    assert sorted(ranks) == [0, 1]
    ranks[1].kill()
    info = slurm_cluster.wait_job(job, {"FAILED"}, timeout=60)
    out = (logs / "job.out").read_text()
    assert info["Restarts"] == "0" and info["ExitCode"] != "0:0", out
    assert "requeueing" not in out and "exited with code" in out
    # An explicit --output gets the first lines; the rest is in LOG_DIR/job.out.
    assert f"output continues in {logs}/job.out" in (tmp_path / "job.out").read_text()
    # The second node's launcher reports its rank's SIGKILL (-9 -> 247); the first node was stopped.
    assert (logs / "node-1.rc").read_text().strip() == "247"
    assert _job_ranks(job) == {}, "a rank outlived the job"

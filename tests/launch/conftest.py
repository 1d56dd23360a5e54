"""A real two-node SLURM cluster on localhost (launch/slurm/local_cluster.sh), started once per test session."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engine.launch import REPO, train_env

CLUSTER_SCRIPT = REPO / "launch" / "slurm" / "local_cluster.sh"
SLURM_BINARIES = ("slurmctld", "slurmd", "slurmstepd", "munged", "mungekey", "sbatch", "srun", "scontrol", "scancel")


@dataclass
class SlurmCluster:
    """The running cluster: `env` points sbatch/scontrol at it (SLURM_CONF) and carries the CPU training env."""

    dir: Path
    env: dict

    def run(self, *args: str, cwd: Path = REPO) -> str:
        proc = subprocess.run(list(args), cwd=cwd, env=self.env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}{self.logs()}")
        return proc.stdout

    def sbatch(self, *args: str, cwd: Path = REPO) -> int:
        return int(self.run("sbatch", "--parsable", *args, cwd=cwd).strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, ...)."""
        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "show", "job", "-o", str(job_id))))

    def wait_job(self, job_id: int, states: set[str], timeout: float) -> dict[str, str]:
        """Poll until the job is in one of `states` (or any finished state, which fails the wait)."""
        finished = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
        deadline = time.time() + timeout
        while True:
            info = self.job(job_id)
            if info["JobState"] in states:
                return info
            assert info["JobState"] not in finished, f"job {job_id} ended {info['JobState']}: {info}"
            assert time.time() < deadline, f"job {job_id} still {info['JobState']} after {timeout} s"
            time.sleep(1)

    def logs(self) -> str:
        return "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((self.dir / "log").glob("*.log")))


def repository_files() -> set[str]:
    """Untracked and ignored files in the repository, except the caches Python and pytest write themselves:
    compared before and after a job, it shows whether the job wrote anything into the source tree."""
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    caches = ("__pycache__/", ".pytest_cache/", ".egg-info/")
    return {line[3:] for line in out.splitlines()
            if not any(c in line for c in caches) and not line.endswith(".pyc")}


# One cluster per test session: starting it takes seconds, and every launch test module shares it.
@pytest.fixture(scope="session")
def slurm_cluster():
    missing = [b for b in SLURM_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge")
    # A short path: munge's unix socket lives inside, and socket paths are limited to 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="vregion-slurm-"))
    start = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start", str(folder)], capture_output=True, text=True,
                           timeout=120)
    # SLURM_* of an enclosing job (CI under SLURM) would leak into the test jobs.
    env = {k: v for k, v in train_env().items() if not k.startswith("SLURM_")}
    # The jobs run this checkout's code whatever folder they start in (not another installed copy of vregion).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cluster = SlurmCluster(folder, {**env, "SLURM_CONF": str(folder / "slurm.conf")})
    try:
        if start.returncode != 0:
            raise RuntimeError(f"local_cluster.sh start failed:\n{start.stdout}{start.stderr}{cluster.logs()}")
        yield cluster
    finally:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(folder)], timeout=120)
        shutil.rmtree(folder, ignore_errors=True)

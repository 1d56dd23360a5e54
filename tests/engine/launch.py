"""Start real `vregion train` processes (one rank or several via the deepspeed launcher) for integration tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_env() -> dict:
    # A test that initialised torch.distributed in this process left its rendezvous in the environment;
    # a child must choose its own (it would otherwise collide with this process's TCP store).
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", WANDB_MODE="disabled", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def train_command(config: str, overrides: list[str], nproc: int = 1, resume: bool = False) -> list[str]:
    tail = ["train", config, *overrides] + (["--resume"] if resume else [])
    if nproc == 1:
        return [sys.executable, "-m", "vregion.cli", *tail]
    return [
        sys.executable, "-m", "deepspeed.launcher.runner",
        "--num_gpus", str(nproc), "--master_port", str(free_port()),
        "--module", "vregion.cli", *tail,
    ]


def run_train(config: str, overrides: list[str], nproc: int = 1, resume: bool = False, cwd=None, timeout=600):
    """Run training to completion; fail the test with the process output if it exits non-zero."""
    proc = subprocess.run(
        train_command(config, overrides, nproc, resume),
        cwd=cwd or REPO,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def read_metrics(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line]


def train_losses(stage_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(stage_dir) if "loss" in r}


def kill_after_checkpoint(config: str, overrides: list[str], run_dir: Path, step: int, nproc: int = 1) -> None:
    """Start training, SIGKILL its whole process group once checkpoint `step` is complete, and check the run
    was still going (so resuming it tests something)."""
    import signal
    import time

    proc = subprocess.Popen(
        train_command(config, overrides, nproc), cwd=REPO, env=train_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    marker = run_dir / "checkpoints" / f"step-{step:06d}" / "COMPLETE"
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "final").exists(), "the run finished before the kill: nothing was tested"

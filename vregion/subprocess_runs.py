"""Run `vregion` verbs as resumable subprocesses (shared by `vregion replicate` and the transfer demo)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def vregion(args: list[str], done: Path, label: str, tag: str = "replicate") -> None:
    """One `vregion` subprocess, skipped when `done` exists; a failure stops the caller's sequence with its label.
    `tag` names the command running the sequence in the progress lines."""
    if done.exists():
        print(f"[{tag}] done already: {label}", flush=True)
        return
    print(f"[{tag}] {label}: vregion {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "vregion.cli", *args])
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed (exit {proc.returncode}); run the same command again to continue")


def drop_resumable_state(run_dir: Path) -> None:
    """Delete the DeepSpeed checkpoints of a finished run (every stage's), keeping its metrics and final/ weights."""
    for checkpoints in sorted(run_dir.rglob("checkpoints")):
        shutil.rmtree(checkpoints)

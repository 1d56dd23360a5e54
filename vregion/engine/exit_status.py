"""How a training process ended, as a small file a batch script can read (`VREGION_STATUS_DIR`).

Why: under SLURM, a plain `scancel` sends SIGTERM to DeepSpeed's launcher as well as to the ranks; the launcher
then exits 1 whatever its ranks did, so the batch script cannot learn from exit codes alone that the ranks
wrote a checkpoint and stopped cleanly (exit 75). Each rank therefore writes `rank-<RANK>.status` with
`key=value` lines (exit, step, signal) that a shell reads with grep.
"""

from __future__ import annotations

import os
from pathlib import Path

STATUS_DIR_ENV = "VREGION_STATUS_DIR"


def status_path(folder: str | Path, rank: int | str) -> Path:
    return Path(folder) / f"rank-{rank}.status"


def write_exit_status(exit_code: int, step: int | None = None, signal_name: str | None = None) -> Path | None:
    """Write this rank's status into $VREGION_STATUS_DIR (nothing without it); return the file written."""
    folder = os.environ.get(STATUS_DIR_ENV)
    if not folder:
        return None
    fields = {"exit": exit_code, "step": step, "signal": signal_name}
    text = "".join(f"{key}={value}\n" for key, value in fields.items() if value is not None)
    path = status_path(folder, os.environ.get("RANK", "0"))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole, then renamed: a reader never sees half a file, even if the rank is killed meanwhile.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def read_exit_status(path: str | Path) -> dict[str, str]:
    """The fields of a status file (for tests and tools; the batch script greps them)."""
    return dict(line.split("=", 1) for line in Path(path).read_text().splitlines() if "=" in line)

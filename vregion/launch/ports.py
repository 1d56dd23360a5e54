"""The rendezvous port: outside Linux's ephemeral range, derived from the SLURM job id, checked free here.

Why outside the ephemeral range (32768-60999 by default): the kernel hands those ports to outgoing connections,
so a rendezvous port inside it can be taken by any client socket on the master node at the moment the job
starts, and the job then fails with "address already in use" (or, worse, waits for a peer that never comes).
`python -m vregion.launch.ports JOB_ID` prints the port train.sbatch uses when MASTER_PORT is not set.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_EPHEMERAL = (32768, 60999)  # the kernel's default, used where the file cannot be read
BASE = 20000  # below it sit many well-known services (databases, web servers, Jupyter's 8888, ...)
MIN_WINDOW = 1000  # a narrower window would make two jobs' ports collide too often
TRIES = 64


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range, inclusive (from /proc; Linux's default when unreadable)."""
    try:
        low, high = (int(v) for v in path.read_text().split())
        return low, high
    except (OSError, ValueError):
        return LINUX_EPHEMERAL


def port_window(ephemeral: tuple[int, int]) -> range:
    """Ports a job may use: from BASE up to the ephemeral range, else above it, else below BASE."""
    low, high = ephemeral
    candidates = [range(BASE, low), range(high + 1, 65536), range(1024, min(low, BASE))]
    for window in candidates:
        if len(window) >= MIN_WINDOW:
            return window
    widest = max(candidates, key=len)  # an odd kernel setting: the widest gap left
    if not widest:
        raise RuntimeError(f"every port from 1024 is in the ephemeral range {low}-{high}: set MASTER_PORT")
    return widest


def default_port(job_id: int, ephemeral: tuple[int, int] | None = None) -> int:
    """The first port tried for a job: the same on every node, different for neighbouring job ids."""
    window = port_window(ephemeral or ephemeral_range())
    return window[job_id % len(window)]


def is_free(port: int, host: str = "") -> bool:
    """Whether a listening socket could bind `port` now (SO_REUSEADDR, as torch's TCP store binds it, so a
    closed connection's TIME_WAIT does not count as busy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(job_id: int, ephemeral: tuple[int, int] | None = None, tries: int = TRIES) -> int:
    """The job's default port, or the next free one after it in the window; RuntimeError if `tries` are taken."""
    window = port_window(ephemeral or ephemeral_range())
    start = job_id % len(window)
    for i in range(tries):
        port = window[(start + i) % len(window)]
        if is_free(port):
            return port
    raise RuntimeError(f"no free port among {tries} tried from {window[start]} (window {window.start}-"
                       f"{window.stop - 1}): set MASTER_PORT")


def in_ephemeral_range(port: int, ephemeral: tuple[int, int] | None = None) -> bool:
    low, high = ephemeral or ephemeral_range()
    return low <= port <= high


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m vregion.launch.ports JOB_ID   (prints a free rendezvous port)", file=sys.stderr)
        return 2
    try:
        print(choose_port(int(argv[0])))
    except RuntimeError as e:
        print(f"vregion: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

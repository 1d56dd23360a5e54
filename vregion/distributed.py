"""Process-group set-up: DeepSpeed on CUDA (nccl) or CPU (gloo), launched by a launcher or standalone."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_s: int = 1800) -> None:
    """Initialise torch.distributed through DeepSpeed.

    Without a GPU, DeepSpeed must be told to use its CPU accelerator (gloo) before it is imported.
    A plain `vregion train` (no launcher) becomes a world of one.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import datetime

    import deepspeed

    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        _unlink_shm_allreduce_buffer()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())


def _unlink_shm_allreduce_buffer() -> None:
    """Remove the name of DeepSpeed's CPU shared-memory all-reduce buffer once every rank has mapped it.

    Why: on the CPU accelerator, when all ranks share a machine (LOCAL_SIZE == WORLD_SIZE, as under the deepspeed
    launcher), DeepSpeed creates a ~69 MB POSIX shared-memory segment per rank and never unlinks it, so every
    run left ~69 MB per rank in /dev/shm (RAM) until reboot, and a later run on the same port could map a stale
    one. Each rank maps all peers' segments inside `init_distributed`; after a barrier the names are no longer
    needed, and an unlinked segment is freed when its last process exits, even one that is killed.
    """
    if torch.cuda.is_available() or os.environ.get("LOCAL_SIZE") != str(world_size()):
        return
    barrier()
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_" \
           f"{os.environ.get('MASTER_PORT', '')}_{rank()}"
    Path("/dev/shm", name).unlink(missing_ok=True)  # shm_unlink() on Linux is an unlink in /dev/shm


def shutdown(wait_for_peers: bool = True) -> None:
    """Leave the process group: wait until every rank is done (unless told not to), then destroy it.

    Why: a gloo group still alive when the interpreter finalises leaves its C++ worker threads running, and a
    rank that finished all its steps then aborts ("terminate called without an active exception", SIGABRT),
    which the launcher reports as a failed run.
    """
    if not torch.distributed.is_initialized():
        return
    if wait_for_peers:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few floats over ranks (float64 so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device())
    if torch.distributed.is_initialized() and world_size() > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order (a one-item list without a process group)."""
    if not (torch.distributed.is_initialized() and world_size() > 1):
        return [obj]
    gathered = [None] * world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered

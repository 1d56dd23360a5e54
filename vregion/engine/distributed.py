"""Process-group set-up: DeepSpeed on CUDA (nccl) or CPU (gloo), launched by a launcher or standalone."""

from __future__ import annotations

import os
import socket
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
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())


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

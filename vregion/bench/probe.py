"""Machine figures for `vregion bench`: the peak TFLOP/s behind MFU, per-variant peak memory, CPU contention.

Peak: a datasheet bf16 dense peak for known GPUs (plan.PEAK_TFLOPS), a given number, or else the best
rate of a large matmul measured here in the training dtype. A CPU has no meaningful datasheet figure that
torch reaches, so its MFU is relative to that measured matmul rate ("how close to this machine's best GEMM").

Peak memory: `MemoryMeter` reads the CUDA allocator, or on CPU the process's RSS made attributable to one
variant at a time (freed memory handed back to the OS before each reading, the peak-RSS mark reset per step).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time
from typing import Optional

import torch

from vregion.bench import plan


def proc_status_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(f"{field} not in /proc/self/status")


def measure_matmul_tflops(dtype: torch.dtype, device: torch.device, n: Optional[int] = None,
                          seconds: float = 1.0) -> float:
    """Best TFLOP/s of an n x n @ n x n matmul in `dtype` over ~`seconds` (the best, not the mean: the peak
    the hardware reached, less sensitive to a shared machine's bad moments)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best, deadline, runs = float("inf"), time.perf_counter() + seconds, 0
    torch.mm(a, b)  # warm-up: kernel selection, first-touch allocation
    while runs < 3 or time.perf_counter() < deadline:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best, runs = min(best, time.perf_counter() - start), runs + 1
    return 2 * n**3 / best / 1e12


def resolve_peak(given: Optional[str], dtype: torch.dtype, device: torch.device) -> tuple[float, str]:
    """(peak TFLOP/s, where it comes from) for MFU: `given` (h100 | h200 | a100 | h100-pcie | a number),
    else a known GPU's bf16 dense peak, else a measured matmul rate in `dtype`."""
    if given is not None:
        return plan.peak_tflops(given), f"given: --peak-tflops {given}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        key = plan.known_gpu(name)
        if key is not None:
            note = "" if dtype == torch.bfloat16 else f"; this run trains in {dtype}, so MFU understates"
            return plan.PEAK_TFLOPS[key], f"{name}: bf16 dense datasheet peak{note}"
        return measure_matmul_tflops(dtype, device), f"{name}: unknown GPU, best measured {dtype} matmul"
    return measure_matmul_tflops(dtype, device), (
        f"best measured 1024x1024 {str(dtype).removeprefix('torch.')} matmul on this CPU with "
        f"{torch.get_num_threads()} threads; a measured rate, not a datasheet peak")


class OtherLoad:
    """CPU cores that other processes (other ranks included) kept busy since construction (Linux /proc/stat).

    On a shared machine they matter more than their share suggests: torch's OpenMP threads meet at a barrier
    after every op, so one thread descheduled for another process stalls all of them, and small-op models
    (EfficientNet's depthwise convolutions) slow down by up to 20x on 2 cores with one busy neighbour.
    """

    def __init__(self):
        self._start = self._sample()

    @staticmethod
    def _sample() -> Optional[tuple[float, float, float]]:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait, in clock ticks
        return busy / os.sysconf("SC_CLK_TCK"), time.process_time(), time.perf_counter()

    def cores(self) -> Optional[float]:
        """Mean cores used by other processes (this one's threads excluded), or None without /proc/stat."""
        end = self._sample()
        if self._start is None or end is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self._start, end))
        return max(0.0, (busy - own) / wall)


class MemoryMeter:
    """Peak memory of one variant while other variants' engines live in the same process.

    CUDA: the caching allocator's allocated bytes. CPU: RSS, made attributable by two Linux/glibc facilities:
    `malloc_trim(0)` hands freed heap pages back to the OS (otherwise RSS keeps every past peak and the next
    variant silently reuses it), and writing 5 to /proc/self/clear_refs resets the peak RSS (VmHWM), so a
    step's rise can be read per variant. `kind` is None when disabled or where these do not exist.
    """

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device = device
        self._libc = _rss_tools() if enabled and device.type != "cuda" else None
        self.kind = None if not enabled else "cuda" if device.type == "cuda" else "rss" if self._libc else None

    def settle(self) -> int:
        """Free what can be freed and return the bytes in use now."""
        gc.collect()
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        self._libc.malloc_trim(0)
        return proc_status_bytes("VmRSS")

    def start_peak(self) -> int:
        """Settle, start a new peak window, and return the bytes in use at its start."""
        start = self.settle()
        if self.kind == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return start

    def peak(self) -> int:
        """The most bytes in use since `start_peak`."""
        if self.kind == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return proc_status_bytes("VmHWM")


def _rss_tools() -> Optional[ctypes.CDLL]:
    """glibc (for malloc_trim) when this process can also read and reset its peak RSS; else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # glibc only  # noqa: B018
        proc_status_bytes("VmHWM")
        with open("/proc/self/clear_refs", "w") as f:  # Linux >= 4.0; may be read-only in some sandboxes
            f.write("5")
    except (OSError, AttributeError, KeyError):
        return None
    return libc

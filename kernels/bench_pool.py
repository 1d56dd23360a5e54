"""Benchmark the fused pooling kernel against the PyTorch reference (forward + backward) on CUDA.

LLaVA-1.5 shapes: B samples of `prefix` text tokens, one 576-token image, then text up to 1176 tokens;
D = 4096 (7B) or 5120 (13B). Reports time per forward+backward, achieved bandwidth (bytes read + written
by the kernel's minimum traffic, divided by its time) and the speed-up.

    python -m vregion_kernels.bench_pool [--dims 4096 5120] [--strides 2 4 8 16] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_pool_rows(hidden: torch.Tensor, start: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The reference algorithm (same as vregion.compress.pooling.pool_rows; kernels/ may not import vregion)."""
    B, T, D = hidden.shape
    total = torch.zeros(*start.shape, D, dtype=torch.float32, device=hidden.device)  # (B, T', D)
    for k in range(int(count.max())):
        index = (start + k).clamp(max=T - 1)
        row = hidden.gather(1, index[..., None].expand(-1, -1, D)).float()
        total = total + torch.where((k < count)[..., None], row, 0.0)
    return (total / count.clamp(min=1)[..., None]).to(hidden.dtype)


def llava_plan(batch: int, stride: int, visual: int = 576, text: int = 600, prefix: int = 35, device="cuda"):
    """(B, T') start and count pooling one `visual`-token image per sample, text copied; T = visual + text."""
    windows = torch.arange(0, visual, stride)
    starts = torch.cat([torch.arange(prefix), prefix + windows, torch.arange(prefix + visual, visual + text)])
    counts = torch.cat([torch.ones(prefix), (visual - windows).clamp(max=stride), torch.ones(text - prefix)])
    start = starts.long().expand(batch, -1).contiguous().to(device)
    count = counts.long().expand(batch, -1).contiguous().to(device)
    return start, count


def time_ms(fn: Callable[[], None], iters: int, warmup: int = 3) -> float:
    """Median milliseconds of fn() over `iters` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end))
    return statistics.median(times)


def benchmark(
    dims=(4096, 5120), strides=(2, 4, 8, 16), batch: int = 16, dtype: torch.dtype = torch.bfloat16, iters: int = 20
) -> list[dict]:
    """Time fused vs reference forward+backward for each (D, S); returns one dict per case."""
    from vregion_kernels.pool_visual import pool_rows as fused_pool_rows

    results = []
    for D in dims:
        for S in strides:
            start, count = llava_plan(batch, S)
            T, T_out = 576 + 600, start.shape[1]
            hidden = torch.randn(batch, T, D, device="cuda", dtype=dtype, requires_grad=True)  # (B, T, D)
            grad = torch.randn(batch, T_out, D, device="cuda", dtype=dtype)  # (B, T', D)

            def step(fn, x, g):
                def run():
                    x.grad = None
                    fn(x, start, count).backward(g)

                return run

            fused = time_ms(step(fused_pool_rows, hidden, grad), iters)
            reference = time_ms(step(torch_pool_rows, hidden, grad), iters)
            # Minimum traffic: forward reads B*T rows and writes B*T' rows; backward the reverse.
            moved = 2 * batch * (T + T_out) * D * hidden.element_size()
            results.append(dict(D=D, S=S, T=T, T_out=T_out, fused_ms=fused, reference_ms=reference,
                                fused_gbs=moved / fused / 1e6, reference_gbs=moved / reference / 1e6,
                                speedup=reference / fused))
            del hidden, grad
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[4096, 5120], help="hidden sizes D")
    parser.add_argument("--strides", type=int, nargs="+", default=[2, 4, 8, 16], help="pooling strides S")
    parser.add_argument("--batch", type=int, default=16, help="samples per batch B")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="hidden-state dtype")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations (median reported)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_pool needs a CUDA GPU (the CPU interpreter is for correctness tests, not timing)")
    print(f"{torch.cuda.get_device_name()}  B={args.batch}  dtype={args.dtype}  fwd+bwd, median of {args.iters}")
    print(f"{'D':>5} {'S':>3} {'T->T_out':>10} {'fused ms':>9} {'GB/s':>7} {'ref ms':>8} {'GB/s':>7} {'speedup':>8}")
    for r in benchmark(args.dims, args.strides, args.batch, DTYPES[args.dtype], args.iters):
        print(f"{r['D']:>5} {r['S']:>3} {r['T']:>5}->{r['T_out']:<4} {r['fused_ms']:>9.3f} {r['fused_gbs']:>7.0f} "
              f"{r['reference_ms']:>8.3f} {r['reference_gbs']:>7.0f} {r['speedup']:>7.1f}x")


if __name__ == "__main__":
    main()

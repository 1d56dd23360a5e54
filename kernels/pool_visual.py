"""Fused Triton kernel for visual-token pooling: average runs of consecutive rows of (B, T, D) hidden states.

The gather plan is two (B, T') integer tensors: output row (b, j) is the mean of input rows
`start[b, j] .. start[b, j] + count[b, j] - 1` of sample b. Text rows have count 1 (a copy), pooled visual
windows count <= S, and padding rows count 0 (written as zeros). Rows with count > 0 must cover disjoint
input ranges; input rows that no output row covers (dropped padding) get zero gradient.

Forward is one pass: each program reads its `count` input rows once, accumulates in fp32 and writes one
output row. Backward is one pass over *input* rows: each reads the output-gradient row that covers it and
scales it by 1/count, so no atomics and no zero-initialisation of the (B, T, D) gradient are needed.
Works for fp32, bf16 and fp16 (accumulation is always fp32); runs on CPU under TRITON_INTERPRET=1.

This module imports nothing of vregion: the plan is built by `vregion.compress.pooling.plan_pooling`, and
the pure-PyTorch `vregion.compress.pooling.pool_rows` (the spec) has the same signature.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_D = 1024  # columns per program: 4 KiB of fp32 accumulator, enough loads in flight to hide latency


@triton.jit
def _pool_rows_fwd(
    x_ptr,  # (B, T, D) input rows, contiguous
    start_ptr,  # (B, T') int64 first input row of each output row
    count_ptr,  # (B, T') int64 rows averaged (0 = padding, written as zeros)
    out_ptr,  # (B, T', D) output rows, contiguous
    T,
    T_out,
    D,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # flat output row b * T' + j
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = cols < D
    b = row // T_out
    start = tl.load(start_ptr + row).to(tl.int64)
    count = tl.load(count_ptr + row).to(tl.int64)
    base = x_ptr + (b * T + start) * D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(0, count):
        acc += tl.load(base + i * D + cols, mask=mask, other=0.0).to(tl.float32)
    scale = 1.0 / tl.maximum(count, 1).to(tl.float32)
    tl.store(out_ptr + row * D + cols, (acc * scale).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pool_rows_bwd(
    grad_out_ptr,  # (B, T', D) gradient of the output rows, contiguous
    dest_ptr,  # (B, T) int64 output row covering each input row, -1 if none
    count_ptr,  # (B, T') int64 as in forward
    grad_in_ptr,  # (B, T, D) gradient of the input rows, contiguous
    T,
    T_out,
    D,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # flat input row b * T + t
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = cols < D
    b = row // T
    dest = tl.load(dest_ptr + row).to(tl.int64)
    safe = tl.maximum(dest, 0)  # keeps the address of uncovered rows in bounds; their loads are masked off
    count = tl.load(count_ptr + b * T_out + safe).to(tl.int64)
    scale = 1.0 / tl.maximum(count, 1).to(tl.float32)
    readable = cols < tl.where(dest >= 0, D, 0)  # uncovered rows (dropped padding) read nothing: zero gradient
    g = tl.load(grad_out_ptr + (b * T_out + safe) * D + cols, mask=readable, other=0.0).to(tl.float32)
    tl.store(grad_in_ptr + row * D + cols, (g * scale).to(grad_in_ptr.dtype.element_ty), mask=mask)


# True when the kernels were defined under TRITON_INTERPRET=1 (the only way they run on CPU tensors).
INTERPRETED = type(_pool_rows_fwd).__name__ == "InterpretedFunction"


def _block_d(D: int) -> int:
    return min(triton.next_power_of_2(D), MAX_BLOCK_D)


def covering_rows(start: torch.Tensor, count: torch.Tensor, T: int) -> torch.Tensor:
    """Inverse of the plan: (B, T') start/count -> (B, T) index of the output row covering each input row, or -1.

    Assumes the ranges of rows with count > 0 are disjoint (the plan's contract).
    """
    B, T_out = start.shape
    device = start.device
    real = count > 0  # (B, T')
    j = torch.arange(T_out, device=device).expand(B, T_out)
    # Mark each range's first input row with (its start, its output row); carry the latest mark forward.
    marks = torch.full((B, T + 1), -1, dtype=torch.long, device=device)  # column T absorbs padding rows
    marks.scatter_(1, torch.where(real, start, T), torch.where(real, start, -1))
    owner = torch.full((B, T + 1), -1, dtype=torch.long, device=device)
    owner.scatter_(1, torch.where(real, start, T), torch.where(real, j, -1))
    last_start = marks[:, :T].cummax(1).values  # (B, T) start of the latest range beginning at or before t
    first = last_start.clamp(min=0)
    row_of_range = owner[:, :T].gather(1, first)  # (B, T)
    length = torch.where(row_of_range >= 0, count.gather(1, row_of_range.clamp(min=0)), 0)
    t = torch.arange(T, device=device)
    covered = (last_start >= 0) & (t < last_start + length)
    return torch.where(covered, row_of_range, -1)


class PoolRows(torch.autograd.Function):
    """Autograd wrapper: forward and backward are one fused kernel launch each."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, start: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        hidden = hidden.contiguous()
        start = start.to(torch.long).contiguous()
        count = count.to(torch.long).contiguous()
        B, T, D = hidden.shape
        T_out = start.shape[1]
        out = torch.empty(B, T_out, D, dtype=hidden.dtype, device=hidden.device)  # (B, T', D)
        if out.numel():
            block = _block_d(D)
            _pool_rows_fwd[(B * T_out, triton.cdiv(D, block))](hidden, start, count, out, T, T_out, D, BLOCK_D=block)
        ctx.save_for_backward(start, count)
        ctx.T = T
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        start, count = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        B, T_out, D = grad_out.shape
        T = ctx.T
        dest = covering_rows(start, count, T)  # (B, T)
        grad_in = torch.empty(B, T, D, dtype=grad_out.dtype, device=grad_out.device)  # (B, T, D)
        if grad_in.numel():
            block = _block_d(D)
            _pool_rows_bwd[(B * T, triton.cdiv(D, block))](grad_out, dest, count, grad_in, T, T_out, D, BLOCK_D=block)
        return grad_in, None, None


def pool_rows(hidden: torch.Tensor, start: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Average runs of consecutive rows with the fused kernel.

    Args:
        hidden: (B, T, D) fp32, bf16 or fp16; on CUDA, or on CPU with TRITON_INTERPRET=1.
        start: (B, T') first input row of each output row.
        count: (B, T') number of rows averaged; 0 writes a zero row (padding).
    Returns:
        (B, T', D) in hidden's dtype; differentiable with respect to hidden.
    """
    if hidden.dim() != 3 or start.shape != count.shape or start.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"expected hidden (B, T, D) and start/count (B, T'), got {tuple(hidden.shape)}, "
            f"{tuple(start.shape)}, {tuple(count.shape)}"
        )
    return PoolRows.apply(hidden, start, count)

"""Choose the pooling implementation: the fused Triton kernel on CUDA, the PyTorch reference elsewhere.

`impl` is "auto" (Triton for CUDA tensors when Triton imports, else the reference), "triton" (forced; on
CPU it needs TRITON_INTERPRET=1 set before the kernel module is first imported, which the tests do) or
"torch" (the reference). Only the hidden states go through the kernel: the plan, positions and labels
are small integer work done in PyTorch either way.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

from vregion.compress.pooling import PooledSequence, PoolRowsFn, apply_plan, has_images, plan_pooling
from vregion.compress.pooling import pool_rows as torch_pool_rows

IMPLS = ("auto", "triton", "torch")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreted() -> bool:
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    from vregion_kernels.pool_visual import INTERPRETED

    return INTERPRETED


def resolve_impl(impl: str, hidden: torch.Tensor) -> str:
    """'auto' | 'triton' | 'torch' -> the implementation that runs on `hidden` ('triton' or 'torch')."""
    if impl not in IMPLS:
        raise ValueError(f"unknown pooling impl '{impl}'; valid: {', '.join(IMPLS)}")
    if impl == "auto":
        return "triton" if hidden.is_cuda and triton_available() else "torch"
    if impl == "triton":
        if not triton_available():
            raise RuntimeError("impl='triton' needs the triton package; use impl='torch' or 'auto'")
        if not hidden.is_cuda and not _interpreted():
            raise RuntimeError(
                f"impl='triton' on {hidden.device} tensors needs TRITON_INTERPRET=1, set before "
                "vregion_kernels.pool_visual is first imported; use impl='auto' or 'torch' off CUDA"
            )
    return impl


def pool_rows_fn(impl: str, hidden: torch.Tensor) -> PoolRowsFn:
    """The `pool_rows(hidden, start, count)` implementation chosen for `hidden`."""
    if resolve_impl(impl, hidden) == "triton":
        from vregion_kernels.pool_visual import pool_rows  # imported lazily: triton import is slow

        return pool_rows
    return torch_pool_rows


def pool_rows(hidden: torch.Tensor, start: torch.Tensor, count: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """(B, T, D) hidden, (B, T') start and count -> (B, T', D) run means, with the chosen implementation."""
    return pool_rows_fn(impl, hidden)(hidden, start, count)


def pool_visual_spans(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    labels: Optional[torch.Tensor],
    image_spans: Optional[torch.Tensor],
    stride: int,
    impl: str = "auto",
    segment_ids: Optional[torch.Tensor] = None,
) -> PooledSequence:
    """`vregion.compress.pooling.pool_visual_spans` with the hidden states pooled by `impl`.

    Same arguments, result and semantics as the reference; S = 1 or no real image returns the inputs.
    """
    fn = pool_rows_fn(impl, hidden)  # validates impl even when nothing is pooled
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if stride == 1 or not has_images(image_spans):
        return PooledSequence(hidden, attention_mask, position_ids, labels, image_spans, segment_ids)
    plan = plan_pooling(attention_mask, image_spans, stride)
    return apply_plan(plan, hidden, position_ids, labels, pool_rows_fn=fn, segment_ids=segment_ids)

"""Reference (pure PyTorch) visual-token pooling: the spec the Triton kernel is tested against.

LLaVolta compresses each image's visual tokens with 1D average pooling, kernel = stride = S, at the input
of decoder layer K. Here pooling is split into a *gather plan* and its application:

- `plan_pooling(attention_mask, image_spans, S)` decides, for every output row, the run of input rows it
  averages (`start`, `count`): a text token is a run of 1, a visual window a run of <= S (a last partial
  window averages what it holds, so any span length works), padding a run of 0. Each sample is re-compacted
  (its padding dropped, wherever it was) and re-padded to the new longest sample on the sample's own side.
- `pool_rows(hidden, start, count)` averages the runs; the fused kernel `vregion_kernels.pool_visual`
  has the same signature and semantics.
- `apply_plan` carries the rest of the sequence along: attention mask, positions, labels, image spans.

Position ids: a pooled token gets the exact (float) mean of the positions it pools, and text keeps its
original positions (a gap follows each pooled image). Why not re-index contiguously: text-to-text distances
then stay identical in layers < K and >= K, across compressed and uncompressed training stages and at
uncompressed inference, and each pooled token sits at the centre of the tokens it summarises. The mean is
kept exact rather than truncated to an int (the reference code's bias of up to half a position); rotary
embeddings accept float positions (`DecoderRunner.refresh` rebuilds them from `state.position_ids`).
Masks ignore positions when an attention mask is given (the runner always gives one), and flash-attention's
packed-sequence detection (batch size 1, no padding) still finds one sequence: the smallest position occurs
once. Sliding windows count tokens, so after pooling a window reaches further back in the original text.

Padding side: a row whose first token is padding is left-padded; a row without padding follows the batch
(left if any row is left-padded, else right), so a left-padded batch stays left-padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from vregion.constants import IGNORE_INDEX

PoolRowsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PoolPlan:
    """Gather plan for one batch: output row (b, j) averages input rows start[b, j] .. + count[b, j] - 1."""

    start: torch.Tensor  # (B, T') long, first input row
    count: torch.Tensor  # (B, T') long, rows averaged: 1 text, 1..S visual window, 0 padding
    visual: torch.Tensor  # (B, T') bool, row is a pooled visual window
    attention_mask: torch.Tensor  # (B, T') 1 = real token, in the input mask's dtype
    image_spans: torch.Tensor  # (M, 3) [sample, start, length] in the output sequence; dummy rows unchanged


@dataclass
class PooledSequence:
    """A sequence after pooling; every per-token tensor has the new length T'."""

    hidden: torch.Tensor  # (B, T', D)
    attention_mask: torch.Tensor  # (B, T')
    position_ids: torch.Tensor  # (B, T') float32 after pooling (means of pooled positions), unchanged if S = 1
    labels: Optional[torch.Tensor]  # (B, T') IGNORE_INDEX at visual rows, padding and each first token
    image_spans: Optional[torch.Tensor]  # (M, 3) new starts and lengths ceil(L / S)
    segment_ids: Optional[torch.Tensor] = None  # (B, T') packed rows: sample of each row (a window's own sample)


def _padding_left(real: torch.Tensor) -> torch.Tensor:
    """(B, T) bool real-token mask -> (B,) bool: rows to right-align after compaction."""
    row_left = ~real[:, 0] & real.any(1)  # leading padding before real tokens
    has_padding = ~real.all(1)
    return torch.where(has_padding, row_left, row_left.any())


def plan_pooling(attention_mask: torch.Tensor, image_spans: Optional[torch.Tensor], stride: int) -> PoolPlan:
    """Build the gather plan pooling every real image span with kernel = stride = `stride`.

    Args:
        attention_mask: (B, T) 1 = real token, 0 = padding (anywhere in the row; it is dropped).
        image_spans: (M, 3) rows [sample, start, length]; sample -1 marks a dummy row, which is ignored.
            Spans must lie on real tokens and must not overlap.
        stride: pooling kernel and stride S >= 1.
    Returns:
        the PoolPlan; T' is the longest compacted sample.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    device = attention_mask.device
    B, T = attention_mask.shape
    real = attention_mask.bool()  # (B, T)
    group_start = real.clone()  # (B, T) token opens a new output row
    visual = torch.zeros(B, T, dtype=torch.bool, device=device)
    size = torch.ones(B, T, dtype=torch.long, device=device)  # rows in the run opened here
    spans = None
    if image_spans is not None:
        spans = image_spans.to(device=device, dtype=torch.long)
    rows = spans[spans[:, 0] >= 0] if spans is not None else None  # (R, 3)
    if rows is not None and len(rows):
        if bool((rows[:, 2] < 1).any()):
            raise ValueError(f"image spans must hold at least one token: {rows.tolist()}")
        lengths = rows[:, 2:3]  # (R, 1)
        offsets = torch.arange(int(lengths.max()), device=device)  # (Lmax,)
        inside = offsets < lengths  # (R, Lmax)
        b = rows[:, 0:1].expand_as(inside)[inside]
        t = (rows[:, 1:2] + offsets)[inside]
        k = offsets.expand_as(inside)[inside]  # token index within its span
        n = lengths.expand_as(inside)[inside]
        if bool((rows[:, 0] >= B).any() | (rows[:, 1] < 0).any() | (t >= T).any()):
            raise ValueError(f"image span outside the ({B}, {T}) batch: {rows.tolist()}")
        if not bool(real[b, t].all()):
            raise ValueError(f"image spans must lie on real (unpadded) tokens: {rows.tolist()}")
        hits = torch.zeros(B, T, dtype=torch.long, device=device)
        hits.index_put_((b, t), torch.ones_like(t), accumulate=True)
        if int(hits.max()) > 1:
            raise ValueError(f"image spans overlap: {rows.tolist()}")
        visual[b, t] = True
        group_start[b, t] = k % stride == 0
        size[b, t] = (n - k).clamp(max=stride)  # a last partial window holds fewer than S tokens

    kept = group_start.sum(1)  # (B,) output rows per sample
    T_out = int(kept.max()) if B else 0
    offset = torch.where(_padding_left(real), T_out - kept, 0)  # (B,)
    slot = offset[:, None] + group_start.cumsum(1) - 1  # (B, T) output row of each run's first token
    bi, ti = group_start.nonzero(as_tuple=True)
    si = slot[bi, ti]
    start = torch.zeros(B, T_out, dtype=torch.long, device=device)
    count = torch.zeros(B, T_out, dtype=torch.long, device=device)
    visual_out = torch.zeros(B, T_out, dtype=torch.bool, device=device)
    start[bi, si] = ti
    count[bi, si] = size[bi, ti]
    visual_out[bi, si] = visual[bi, ti]

    new_spans = spans
    if rows is not None and len(rows):
        new_spans = spans.clone()
        real_rows = spans[:, 0] >= 0
        new_spans[real_rows, 1] = slot[rows[:, 0], rows[:, 1]]
        new_spans[real_rows, 2] = (rows[:, 2] + stride - 1) // stride
    return PoolPlan(
        start=start,
        count=count,
        visual=visual_out,
        attention_mask=(count > 0).to(attention_mask.dtype),
        image_spans=new_spans,
    )


def pool_rows(hidden: torch.Tensor, start: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Average runs of consecutive rows (the spec of the fused kernel).

    Args:
        hidden: (B, T, D) any float dtype.
        start: (B, T') first input row of each output row.
        count: (B, T') rows averaged; 0 gives a zero row.
    Returns:
        (B, T', D) in hidden's dtype, accumulated in fp32; differentiable with respect to hidden.
    """
    B, T, D = hidden.shape
    total = torch.zeros(*start.shape, D, dtype=torch.float32, device=hidden.device)  # (B, T', D)
    for k in range(int(count.max()) if count.numel() else 0):
        index = (start + k).clamp(max=T - 1)  # (B, T')
        row = hidden.gather(1, index[..., None].expand(-1, -1, D)).float()  # (B, T', D)
        total = total + torch.where((k < count)[..., None], row, 0.0)
    return (total / count.clamp(min=1)[..., None]).to(hidden.dtype)


def apply_plan(
    plan: PoolPlan,
    hidden: torch.Tensor,
    position_ids: torch.Tensor,
    labels: Optional[torch.Tensor],
    pool_rows_fn: PoolRowsFn = pool_rows,
    segment_ids: Optional[torch.Tensor] = None,
) -> PooledSequence:
    """Apply a plan to the hidden states (with `pool_rows_fn`), positions and labels.

    Args:
        plan: from `plan_pooling` for these tensors' batch.
        hidden: (B, T, D).
        position_ids: (B, T) positions; pooled rows get the float mean of theirs.
        labels: (B, T) or None; visual rows, padding and each sample's first token get IGNORE_INDEX,
            other text keeps its label.
        pool_rows_fn: the reference `pool_rows` or the fused kernel.
        segment_ids: (B, T) packed rows' sample ids or None; a window lies inside one image, hence one
            sample, so each output row takes the id of its first input row.
    """
    pooled = pool_rows_fn(hidden, plan.start, plan.count)  # (B, T', D)
    # Positions are few and need exact means, so they always take the fp32 reference path.
    positions = pool_rows(position_ids.to(hidden.device, torch.float32)[..., None], plan.start, plan.count)[..., 0]
    new_labels = None
    if labels is not None:
        labels = labels.to(hidden.device)
        keep = (plan.count > 0) & ~plan.visual  # (B, T')
        new_labels = torch.where(keep, labels.gather(1, plan.start), IGNORE_INDEX)
        # Nothing in a sample predicts its first token; compaction can put padding in front of it (an
        # unpadded row in a left-padded batch), where the shifted loss would otherwise count it.
        first = (plan.count > 0).to(torch.uint8).argmax(1)  # (B,)
        new_labels[torch.arange(len(first), device=first.device), first] = IGNORE_INDEX
    new_segments = None
    if segment_ids is not None:
        segment_ids = segment_ids.to(hidden.device)
        new_segments = segment_ids.gather(1, plan.start)
        # Padding rows (count 0) point at row 0; give them their row's last sample (ids grow along a row), as
        # unpooled padding has, so their queries still see a real token.
        new_segments = torch.where(plan.count > 0, new_segments, segment_ids.max(1, keepdim=True).values)
    return PooledSequence(pooled, plan.attention_mask, positions, new_labels, plan.image_spans, new_segments)


def has_images(image_spans: Optional[torch.Tensor]) -> bool:
    """True if any span belongs to a real sample (dummy rows have sample -1)."""
    return image_spans is not None and bool((image_spans[:, 0] >= 0).any())


def pool_visual_spans(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    labels: Optional[torch.Tensor],
    image_spans: Optional[torch.Tensor],
    stride: int,
    segment_ids: Optional[torch.Tensor] = None,
) -> PooledSequence:
    """Average-pool every image's visual span with kernel = stride = S (pure PyTorch reference).

    Args:
        hidden: (B, T, D) hidden states.
        attention_mask: (B, T) 1 = real token.
        position_ids: (B, T).
        labels: (B, T) or None.
        image_spans: (M, 3) rows [sample, start, length], sample -1 = dummy (ignored); or None.
        stride: S; S = 1, or no real image, returns the inputs unchanged (same tensor objects).
        segment_ids: (B, T) sample of each token in packed rows, or None.
    Returns:
        PooledSequence of length T' (see the module docstring for positions and padding side).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if stride == 1 or not has_images(image_spans):
        return PooledSequence(hidden, attention_mask, position_ids, labels, image_spans, segment_ids)
    plan = plan_pooling(attention_mask, image_spans, stride)
    return apply_plan(plan, hidden, position_ids, labels, segment_ids=segment_ids)

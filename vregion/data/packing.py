"""Sequence packing: a micro-batch's samples laid end to end in rows of at most `data.max_length` tokens.

LLaVA-shaped data mixes 600-token image samples, 2,000-token multi-turn ones and short text-only ones; padded
to the longest sample, a third or more of every batch is padding. Packing puts several samples in one row and
pads only each row's tail. What keeps it exact (every sample computes what it computes alone):
- `position_ids` restart at 0 for every sample, so rotary positions are the unpacked ones;
- `segment_ids` name each token's sample; the decoder runner turns them into a block-diagonal causal mask
  with transformers' own mask builders (or flash-attention's varlen arguments), so no token attends across
  a sample boundary;
- each sample's first label is ignored, so the last token of one sample never predicts the next sample;
- image spans are per sample ([row, start, length]), so in-LLM pooling pools each image exactly as unpacked.

Row width: rows hold at most `data.max_length` tokens, and each micro-batch picks the width that computes least,
cost = rows x W x (1 + attention_cost x W). With flash-attention's varlen kernel attention skips other samples
(attention_cost 0: rows fill up to max_length, fewest positions). With dense attention (SDPA, eager) a packed row
costs W^2 attention whatever it holds, so for a small hidden size wide rows can cost more than the padded batch;
then rows as long as the micro-batch's longest sample (never more attention than padding, fewer rows) win.
`attention_cost` is 1 / (6 x hidden size): per token pair, attention's 4 x hidden FLOPs against a llama layer's
~24 x hidden^2 of linear FLOPs per token.

`train.micro_batch_size` keeps meaning samples: a micro-batch holds the same samples packed or not, packed
into as few rows as first-fit-decreasing finds. Steps, epochs, the learning-rate schedule and the resume
position (which counts samples) are therefore the same as unpacked, and a packed run's losses equal the
unpacked run's (the trainer normalises the loss over the step's supervised tokens either way).
"""

from __future__ import annotations

import torch

from .collate import batch_images
from .templates import IGNORE_INDEX


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sample indices whose lengths sum to at most `capacity`: longest first, each into the first row
    with room. Deterministic (ties keep stream order); indices within a row are in stream order.

    Raises:
        ValueError: a sample longer than `capacity` (the decoder truncates to data.max_length, so this is a bug).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"sample {i} has {lengths[i]} tokens, more than the row capacity {capacity}")
        for r, space in enumerate(free):
            if lengths[i] <= space:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return [sorted(row) for row in rows]


def choose_rows(lengths: list[int], capacity: int, attention_cost: float = 0.0) -> list[list[int]]:
    """First-fit-decreasing rows at the width (the longest sample, its multiples, or `capacity`) that minimises
    rows x W x (1 + attention_cost x W), W the widest row; ties go to the narrower width."""
    longest = max(lengths)
    widths = sorted({min(capacity, longest * k) for k in range(1, capacity // longest + 1)} | {capacity})
    best, best_cost = None, None
    for width in widths:
        rows = first_fit_decreasing(lengths, width)
        used = max(sum(lengths[i] for i in row) for row in rows)
        cost = len(rows) * used * (1.0 + attention_cost * used)
        if best_cost is None or cost < best_cost:
            best, best_cost = rows, cost
    return best


def collate_packed(
    samples: list[dict],
    pad_token_id: int,
    image_size: int,
    capacity: int,
    skipped: dict[str, int] | None = None,
    attention_cost: float = 0.0,
) -> dict:
    """Pack samples into rows of at most `capacity` tokens, right-padded to the longest row.

    Args:
        samples: dicts as for `collate.collate` (input_ids, labels, pixel_values, image_spans).
        capacity: row length limit (data.max_length).
        attention_cost: relative cost of attention per token pair (see the module docstring); 0 fills rows.
    Returns:
        collate's batch (rows instead of samples along dim 0; "num_samples" still counts samples), plus
        "position_ids" (R, T) restarting per sample, "segment_ids" (R, T) the sample's index within its row
        (padding continues the row's last sample) and "sample_spans" (N, 3) rows [row, start, length] of the
        samples in input order.
    """
    rows = choose_rows([len(s["input_ids"]) for s in samples], capacity, attention_cost)
    width = max(sum(len(samples[i]["input_ids"]) for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.zeros(shape, dtype=torch.long)
    sample_spans = torch.zeros(len(samples), 3, dtype=torch.long)
    spans: list[list[int]] = []
    pixels: list[torch.Tensor] = []
    for r, row in enumerate(rows):
        offset = 0
        for segment, i in enumerate(row):
            sample = samples[i]
            n = len(sample["input_ids"])
            cells = slice(offset, offset + n)
            input_ids[r, cells] = sample["input_ids"]
            attention_mask[r, cells] = 1
            labels[r, cells] = sample["labels"]
            labels[r, offset] = IGNORE_INDEX  # nothing in this sample predicts its first token
            position_ids[r, cells] = torch.arange(n)
            segment_ids[r, offset:] = segment  # also the padding after the row's last sample
            sample_spans[i] = torch.tensor([r, offset, n])
            spans += [[r, offset + start, length] for start, length in sample["image_spans"]]
            if sample["image_spans"]:
                pixels.append(sample["pixel_values"])
            offset += n
    pixel_values, image_spans = batch_images(pixels, spans, image_size)  # a dummy image when there is none
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": pixel_values,
        "image_spans": image_spans,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "sample_spans": sample_spans,
        "num_samples": len(samples),
        "skipped": dict(skipped or {}),
    }

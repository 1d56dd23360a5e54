"""Collate tokenized samples into a padded batch with the visual span table the model splices images into."""

from __future__ import annotations

import torch

from .templates import IGNORE_INDEX


# The batch entries VisionLanguageModel.forward takes (the rest is bookkeeping: num_samples, skipped).
MODEL_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values", "image_spans")
# Only packed batches (vregion.data.packing) have these.
PACKED_KEYS = ("position_ids", "segment_ids")


def batch_to(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """The model-facing tensors of a batch on `device`, floating ones (images) in the model's `dtype`."""
    out = {}
    for key in MODEL_KEYS + tuple(k for k in PACKED_KEYS if k in batch):
        value = batch[key].to(device, non_blocking=True)
        out[key] = value.to(dtype) if value.is_floating_point() else value
    return out


def batch_images(pixels: list[torch.Tensor], spans: list[list[int]], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values (M, 3, S, S), image_spans (M, 3)) from the samples' images in span order. A batch without
    images gets one zero image with row [-1, 0, 0], so the vision tower runs on every rank (ZeRO-3 gathers its
    parameters collectively) and the row is recognisably a dummy."""
    if spans:
        return torch.cat(pixels).float(), torch.tensor(spans, dtype=torch.long)
    return torch.zeros((1, 3, image_size, image_size)), torch.tensor([[-1, 0, 0]], dtype=torch.long)


def collate(
    samples: list[dict],
    pad_token_id: int,
    image_size: int,
    padding_side: str = "right",
    skipped: dict[str, int] | None = None,
) -> dict:
    """Pad samples to the longest and gather their images.

    Args:
        samples: dicts with input_ids (L,) long, labels (L,) long, pixel_values (k, 3, S, S) float and
            image_spans [(start, length)] * k (positions within the unpadded sample).
        padding_side: "right" or "left" (generation); spans are shifted by the left padding.
        skipped: per-reason counts of samples dropped since the previous batch.
            A sample's optional "meta" dict is passed through, as the batch's "meta" list.

    Returns:
        {"input_ids" (B, T), "attention_mask" (B, T), "labels" (B, T) (-100 ignored), "pixel_values"
        (M, 3, S, S), "image_spans" (M, 3) rows [sample, start, length], "num_samples": B, "skipped"[, "meta"]}.
        A batch without images gets one zero image with row [-1, 0, 0], so the vision tower runs on every
        rank (ZeRO-3 gathers its parameters collectively) and the row is recognisably a dummy.
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    batch_size = len(samples)
    length = max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((batch_size, length), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)  # (B, T)
    labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    spans: list[list[int]] = []
    pixels: list[torch.Tensor] = []
    for b, sample in enumerate(samples):
        n = len(sample["input_ids"])
        offset = length - n if padding_side == "left" else 0
        input_ids[b, offset : offset + n] = sample["input_ids"]
        attention_mask[b, offset : offset + n] = 1
        labels[b, offset : offset + n] = sample["labels"]
        spans += [[b, start + offset, span] for start, span in sample["image_spans"]]
        pixels.append(sample["pixel_values"])
    pixel_values, image_spans = batch_images(pixels, spans, image_size)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": pixel_values,
        "image_spans": image_spans,
        "num_samples": batch_size,
        "skipped": dict(skipped or {}),
    }
    if any("meta" in s for s in samples):  # evaluation's per-sample names (eval.batches.sample_meta)
        batch["meta"] = [s.get("meta", {}) for s in samples]
    return batch

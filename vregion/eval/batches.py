"""Ordered, capped passes over held-out shards: the first `max_samples` positions, or one rank's share of them.

Every scorer reads the same positions, so a set's accuracy, answer loss and caption loss cover the same samples
whatever the batch size (a batch is never read past the cap) and however many ranks share the work.
"""

from __future__ import annotations

import itertools
import json
from typing import Iterator

from vregion.data import collate, resolve_shards
from vregion.data.decode import SampleDecoder
from vregion.data.templates import IMAGE_TAG
from vregion.data.stream import rank_stream


def num_images(raw: dict) -> int:
    """Images a raw tar sample declares (0 when its json cannot be read: decoding will skip it anyway)."""
    try:
        return int(json.loads(raw["json"]).get("num_images", 0))
    except (KeyError, ValueError, TypeError, AttributeError):
        return 0


def positions(shards: str) -> Iterator[dict]:
    """The unshuffled positions of a shard set, in order: what every rank's share is taken from."""
    return rank_stream(resolve_shards(shards), seed=0, rank=0, world_size=1, shuffle_buffer=0, infinite=False)


def sample_meta(raw: dict, position: int) -> dict:
    """What a prediction file names a sample by: its position in the set, its json "id" (else its tar key) and
    its first human turn without the image placeholder (the question)."""
    try:
        meta = json.loads(raw["json"])
        turns = meta.get("conversations") or []
        question = next((t.get("value", "") for t in turns if t.get("from") == "human"), "")
        sample_id = meta.get("id")
    except (KeyError, ValueError, TypeError, AttributeError):
        question, sample_id = "", None
    return {"position": position, "id": str(sample_id if sample_id is not None else raw.get("__key__", "")),
            "question": question.replace(IMAGE_TAG, "").strip()}


def count_image_samples(shards: str, max_samples: int) -> tuple[int, int]:
    """(samples with images, positions read) among the first `max_samples` positions; reads no image."""
    read = list(itertools.islice(positions(shards), max_samples))
    return sum(num_images(raw) > 0 for raw in read), len(read)


def shard_batches(shards: str, decoder: SampleDecoder, image_size: int, pad_id: int, batch_size: int,
                  max_samples: int, rank: int, world_size: int, text_only: bool = False) -> Iterator[dict]:
    """This rank's share (positions rank, rank + R, ...) of the first `max_samples` positions, in order, batched.

    Positions that fail to decode (bad image, no supervised token left) are skipped, as in training; with
    `text_only`, so are samples with images (text perplexity must not see them). Each sample carries its
    `sample_meta` (the batch's "meta" list), so answers can be written out per sample.
    """
    pending: list[dict] = []
    shared = itertools.islice(positions(shards), rank, max_samples, world_size)
    for position, raw in zip(itertools.count(rank, world_size), shared):
        if text_only and num_images(raw) > 0:
            continue
        sample = decoder(raw)
        if "skip" in sample:
            continue
        pending.append({**sample, "meta": sample_meta(raw, position)})
        if len(pending) == batch_size:
            yield collate(pending, pad_id, image_size)
            pending = []
    if pending:
        yield collate(pending, pad_id, image_size)

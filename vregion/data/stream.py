"""The raw sample stream of one rank: shards -> tar samples (bytes, undecoded) -> seeded shuffle, epoch by epoch.

Every item of this stream is one *position*: a sample as webdataset groups it from the tar, or a marker
for a tar read error ({"__error__": message}). The sequence is a pure function of (shards, seed, rank,
world_size, shuffle_buffer) and does not depend on the number of DataLoader workers, which is what makes
`skip_samples` resume exact: positions are what a trainer counts, and skipping them needs no decoding.
"""

from __future__ import annotations

import itertools
import random
from typing import Iterator

import webdataset as wds

from .shards import indexed_counts, split_for_rank


def read_shard(url: str, expected: int | None = None) -> Iterator[dict]:
    """Samples of one tar shard; read errors (truncated or corrupt tar, missing file) become one error marker
    at the point they happened, webdataset's warn-and-continue behaviour made countable. A tar cut at
    a 512-byte block boundary reads as a clean, shorter archive: with the `expected` count from index.json
    that case yields one marker too."""
    errors: list[str] = []
    failed = False
    count = 0

    def record(exn: Exception) -> bool:
        errors.append(f"{type(exn).__name__}: {exn}"[:500])
        return True  # continue, like wds.warn_and_continue

    def markers() -> Iterator[dict]:
        # one marker per burst: a truncated tar fails in the member read, then again in the next header
        if errors:
            yield {"__error__": " | ".join(errors), "__url__": url}
            errors.clear()

    for sample in wds.tariterators.tarfile_samples([{"url": url}], handler=record):
        failed = failed or bool(errors)
        yield from markers()
        count += 1
        yield sample
    failed = failed or bool(errors)
    yield from markers()
    if not failed and expected is not None and count < expected:
        yield {"__error__": f"shard ended after {count} of {expected} indexed samples", "__url__": url}


def shuffled(items: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Seeded shuffle buffer: once `size` items are held, each new item replaces a random held one, which
    is emitted; the remainder is emitted in random order when the input ends."""
    buffer: list[dict] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = rng.randrange(size)
        yield buffer[k]
        buffer[k] = item
    rng.shuffle(buffer)
    yield from buffer


def epoch_items(shards: list[str], epoch: int, seed: int, rank: int, world_size: int, shuffle_buffer: int):
    """This rank's positions in one epoch. Shard order and the sample shuffle are seeded by (seed, epoch),
    the same on every rank, so ranks agree on the shard split and on a shared sample stream."""
    order = list(shards)
    if shuffle_buffer > 0:
        random.Random(f"vregion-shards-{seed}-{epoch}").shuffle(order)
    mine, split_samples = split_for_rank(order, rank, world_size)
    expected = indexed_counts(mine)
    items: Iterator[dict] = (item for url in mine for item in read_shard(url, expected[url]))
    if shuffle_buffer > 0:
        items = shuffled(items, shuffle_buffer, random.Random(f"vregion-samples-{seed}-{epoch}"))
    if split_samples:
        items = itertools.islice(items, rank, None, world_size)
    return items


def rank_stream(
    shards: list[str], seed: int, rank: int, world_size: int, shuffle_buffer: int, infinite: bool
) -> Iterator[dict]:
    """All positions of this rank: one epoch, or epochs 0, 1, 2, ... back to back when `infinite`."""
    for epoch in itertools.count():
        count = 0
        for item in epoch_items(shards, epoch, seed, rank, world_size, shuffle_buffer):
            count += 1
            yield item
        if not infinite:
            return
        if count == 0:  # an infinite loop over nothing would hang the trainer silently
            raise RuntimeError(f"rank {rank}/{world_size}: epoch {epoch} of {len(shards)} shards has no samples")

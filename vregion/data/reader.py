"""Training/eval batches from webdataset shards: rank split, seeded shuffle, exact resume, counted skips.

How the pieces fit (why it is built this way):
- The rank's raw stream (stream.py) is a fixed sequence of *positions*, independent of num_workers.
- DataLoader worker w of W decodes positions n + w, n + w + W, ... (n = skip_samples) and yields exactly one
  result per position, a sample or {"skip": reason}. The DataLoader fetches from workers round-robin, so
  the main process receives the results in position order, whatever W is.
- The main process fills each batch with the next `micro_batch_size` good samples, counting skips.
  Resume rule: the positions a batch consumed = num_samples + sum(skipped.values()), so after a trainer
  sums that over the batches it used (`consumed_samples`) and passes the total as skip_samples, the new
  loader starts at the very next position and yields the same batches as the uninterrupted run, even with
  a different num_workers. Skipped positions are dropped before any decoding.
Cost of this design: every worker reads all of the rank's tar bytes (decoding only its own share) and
holds its own copy of the shuffle buffer, so memory grows with num_workers * shuffle_buffer * sample size.
"""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .collate import collate
from .decode import SampleDecoder
from .image import ImageProcessor
from .shards import resolve_shards
from .stream import rank_stream
from .templates import ChatTemplate, validate_template

log = logging.getLogger(__name__)

# Skipped positions (since the last batch) after which a warning is logged: skips are never fatal, but a run this long
# usually means a systemic problem (wrong template, missing image folder) rather than a few bad files.
SKIP_WARN_EVERY = 10_000


class _PositionDataset(IterableDataset):
    """Worker side: this worker's share of the rank's positions, decoded, one result per position."""

    def __init__(self, shards, decoder, seed, rank, world_size, shuffle_buffer, skip_samples, infinite):
        self.shards = shards
        self.decoder = decoder
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.skip_samples = skip_samples
        self.infinite = infinite

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        stream = rank_stream(self.shards, self.seed, self.rank, self.world_size, self.shuffle_buffer, self.infinite)
        for position, raw in enumerate(stream):
            # worker 0 owns position skip_samples: the DataLoader asks worker 0 first
            if position >= self.skip_samples and (position - self.skip_samples) % num_workers == worker:
                yield self.decoder(raw)


def _identity(item):
    return item


class ShardLoader:
    """Iterable of batch dicts (see collate.collate); each iteration starts again at skip_samples."""

    def __init__(
        self, dataset: _PositionDataset, micro_batch_size, num_workers, pad_token_id, image_size, padding_side
    ):
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.num_workers = num_workers
        self.pad_token_id = pad_token_id
        self.image_size = image_size
        self.padding_side = padding_side

    def __iter__(self) -> Iterator[dict]:
        in_flight = -(-2 * self.micro_batch_size // max(1, self.num_workers))  # ~two batches across workers
        loader = DataLoader(
            self.dataset,
            batch_size=None,  # one item per position; batches are assembled here, in position order
            num_workers=self.num_workers,
            collate_fn=_identity,
            prefetch_factor=max(2, in_flight) if self.num_workers else None,
            # DataLoader draws its workers' base seed from this generator; without one it would draw from
            # the global torch RNG, shifting every dropout mask after a resume restored that RNG.
            generator=torch.Generator().manual_seed(self.dataset.seed),
        )
        pending: list[dict] = []
        skipped: collections.Counter = collections.Counter()
        for item in loader:
            if "skip" in item:
                skipped[item["skip"]] += 1
                if sum(skipped.values()) % SKIP_WARN_EVERY == 0:
                    log.warning("%d samples skipped since the last batch: %s", sum(skipped.values()), dict(skipped))
                continue
            pending.append(item)
            if len(pending) == self.micro_batch_size:
                yield self._collate(pending, skipped)
                pending, skipped = [], collections.Counter()
        if pending:  # the short last batch of a finite pass (skips after the last sample go unreported)
            yield self._collate(pending, skipped)

    def _collate(self, samples, skipped) -> dict:
        return collate(samples, self.pad_token_id, self.image_size, self.padding_side, dict(skipped))


def consumed_samples(batch: dict) -> int:
    """Positions of the rank stream that produced `batch`: its samples plus the ones skipped before it.
    Sum this over the batches a trainer used; that sum is the `skip_samples` that resumes after them."""
    return batch["num_samples"] + sum(batch["skipped"].values())


def build_loader(
    shards: str | Path | Sequence[str | Path],
    tokenizer,
    template: str | ChatTemplate,
    image_processor: ImageProcessor,
    num_image_tokens: int,
    image_token_id: int,
    max_length: int,
    micro_batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    shuffle_buffer: int = 1000,
    skip_samples: int = 0,
    infinite: bool = True,
    padding_side: str = "right",
) -> ShardLoader:
    """Batches for one rank.

    Args:
        shards: brace pattern, glob, folder of .tar files, or a list of these (see shards.resolve_shards).
        template: chat template id (vicuna-v1 | llama-3 | chatml | gemma) or a ChatTemplate.
        image_token_id: id placed num_image_tokens times per image; the model replaces those embeddings.
        seed: data-order seed; epoch e shuffles shards and samples with (seed, e).
        rank, world_size: this rank's share (shards.split_for_rank gives the rule).
        shuffle_buffer: samples held by the shuffle buffer; 0 keeps shard and sample order.
        skip_samples: positions this rank already consumed (sum of consumed_samples over used batches).
        infinite: repeat epochs forever (training) or stop after one pass (evaluation).
        padding_side: "right" (training) or "left".
    """
    if micro_batch_size < 1 or num_workers < 0 or skip_samples < 0 or shuffle_buffer < 0:
        raise ValueError("micro_batch_size >= 1, num_workers >= 0, skip_samples >= 0, shuffle_buffer >= 0")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set one (e.g. its eos or a reserved token)")
    validate_template(tokenizer, template)
    if num_workers:
        # forked workers would each warn that the tokenizer's Rust thread pool was already used
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    decoder = SampleDecoder(tokenizer, template, image_processor, num_image_tokens, image_token_id, max_length)
    dataset = _PositionDataset(
        resolve_shards(shards), decoder, seed, rank, world_size, shuffle_buffer, skip_samples, infinite
    )
    return ShardLoader(
        dataset, micro_batch_size, num_workers, tokenizer.pad_token_id, image_processor.image_size, padding_side
    )

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
Length grouping (`group_by`, LLaVA's modality-length grouping): positions are cut into fixed windows of
`group_by * micro_batch_size` positions, aligned at multiples of that size; a window's samples are sorted by
(text-only, length), cut into micro-batches, and those are emitted in a seeded random order. A window's
skipped positions are attributed to its first emitted batch, so the batches of a window consume exactly its
positions. Resuming at skip_samples inside a window re-reads the window from its start and drops the batches
already used (their consumed positions add up to the offset), so grouping resumes exactly too.
Packing (`packing`) only changes how a micro-batch is collated (see packing.py): same samples, fewer rows.
Cost of this design: every worker reads all of the rank's tar bytes (decoding only its own share) and
holds its own copy of the shuffle buffer, so memory grows with num_workers * shuffle_buffer * sample size.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import random
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .collate import collate
from .decode import SampleDecoder
from .packing import collate_packed
from .image import ImageProcessor
from .shards import count_samples, resolve_shards
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
        self, dataset: _PositionDataset, micro_batch_size, num_workers, pad_token_id, image_size, padding_side,
        packing_capacity: int | None = None, group_by: int = 0,
    ):
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.num_workers = num_workers
        self.pad_token_id = pad_token_id
        self.image_size = image_size
        self.padding_side = padding_side
        self.packing_capacity = packing_capacity
        self.group_by = group_by
        # More skips in a row than a whole epoch has positions: nothing in the data is usable, and an infinite
        # stream would otherwise spin forever (unindexed shards: a generous fixed bound).
        self.max_skips_in_a_row = count_samples(dataset.shards) or 1_000_000

    def _check_skips(self, in_a_row: int, skipped: collections.Counter) -> None:
        if in_a_row > self.max_skips_in_a_row:
            raise RuntimeError(
                f"{in_a_row} samples in a row were skipped, more than one epoch holds ({dict(skipped)}): nothing "
                "in the data can be trained on. Check data.max_length (a sample cut before its first answer is "
                "skipped as truncated_no_supervision), model.template and the images"
            )

    def __iter__(self) -> Iterator[dict]:
        if not self.group_by:
            return self._batches(self._items(self.dataset.skip_samples))
        return self._grouped_batches()

    def _items(self, start: int) -> Iterator[dict]:
        """Decoded results (samples or {"skip": reason}), one per position, from position `start` on."""
        in_flight = -(-2 * self.micro_batch_size // max(1, self.num_workers))  # ~two batches across workers
        dataset = self.dataset
        if start != dataset.skip_samples:
            dataset = _PositionDataset(dataset.shards, dataset.decoder, dataset.seed, dataset.rank, dataset.world_size,
                                       dataset.shuffle_buffer, start, dataset.infinite)
        loader = DataLoader(
            dataset,
            batch_size=None,  # one item per position; batches are assembled here, in position order
            num_workers=self.num_workers,
            collate_fn=_identity,
            prefetch_factor=max(2, in_flight) if self.num_workers else None,
            # DataLoader draws its workers' base seed from this generator; without one it would draw from
            # the global torch RNG, shifting every dropout mask after a resume restored that RNG.
            generator=torch.Generator().manual_seed(self.dataset.seed),
        )
        return iter(loader)

    def _batches(self, items: Iterator[dict]) -> Iterator[dict]:
        """Batches of the next micro_batch_size good samples, in position order, with the skips before each."""
        pending: list[dict] = []
        skipped: collections.Counter = collections.Counter()
        in_a_row = 0
        for item in items:
            if "skip" in item:
                skipped[item["skip"]] += 1
                in_a_row += 1
                self._check_skips(in_a_row, skipped)
                if sum(skipped.values()) % SKIP_WARN_EVERY == 0:
                    log.warning("%d samples skipped since the last batch: %s", sum(skipped.values()), dict(skipped))
                continue
            in_a_row = 0
            pending.append(item)
            if len(pending) == self.micro_batch_size:
                yield self._collate(pending, skipped)
                pending, skipped = [], collections.Counter()
        if pending:  # the short last batch of a finite pass (skips after the last sample go unreported)
            yield self._collate(pending, skipped)

    def _grouped_batches(self) -> Iterator[dict]:
        """Length-grouped batches, window by window (see the module docstring); exact under resume."""
        window = self.group_by * self.micro_batch_size
        skip = self.dataset.skip_samples
        first = skip - skip % window  # the window the resume position falls in
        drop = skip - first  # positions of that window already consumed: its first batches
        items = self._items(first)
        carry: collections.Counter = collections.Counter()  # skips of windows that had no sample at all
        for index in itertools.count(first // window):
            samples, skipped = self._read_window(itertools.islice(items, window))
            if not samples and not skipped:
                return  # the stream ended
            carry.update(skipped)
            if not samples:
                self._check_skips(sum(carry.values()), carry)
                continue
            for batch in self._window_batches(samples, carry, index):
                if drop > 0:
                    drop -= consumed_samples(batch)
                    if drop < 0:
                        raise RuntimeError("the resume position does not fall between two length-grouped batches")
                    continue
                yield batch
            carry = collections.Counter()

    @staticmethod
    def _read_window(items: Iterator[dict]) -> tuple[list[dict], collections.Counter]:
        samples: list[dict] = []
        skipped: collections.Counter = collections.Counter()
        for item in items:
            if "skip" in item:
                skipped[item["skip"]] += 1
            else:
                samples.append(item)
        return samples, skipped

    def _window_batches(self, samples: list[dict], skipped: collections.Counter, index: int) -> list[dict]:
        """One window's batches in their seeded order; the window's skips go with the first one."""
        # LLaVA's modality-length grouping: text-only samples apart from image samples, each sorted by length
        order = sorted(range(len(samples)),
                       key=lambda i: (not samples[i]["image_spans"], len(samples[i]["input_ids"]), i))
        size = self.micro_batch_size
        groups = [[samples[i] for i in order[k : k + size]] for k in range(0, len(order), size)]
        random.Random(f"vregion-groups-{self.dataset.seed}-{index}").shuffle(groups)
        return [self._collate(group, skipped if g == 0 else collections.Counter()) for g, group in enumerate(groups)]

    def _collate(self, samples, skipped) -> dict:
        if self.packing_capacity is not None:
            return collate_packed(samples, self.pad_token_id, self.image_size, self.packing_capacity, dict(skipped))
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
    packing: bool = False,
    group_by_length: int = 0,
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
        packing: pack each batch's samples into rows of up to max_length tokens (packing.collate_packed).
        group_by_length: sort windows of this many batches by (text-only, length); 0 = off.
    """
    if micro_batch_size < 1 or num_workers < 0 or skip_samples < 0 or shuffle_buffer < 0:
        raise ValueError("micro_batch_size >= 1, num_workers >= 0, skip_samples >= 0, shuffle_buffer >= 0")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if packing and padding_side != "right":
        raise ValueError("packed rows are right-padded; packing is for training, not left-padded generation")
    if group_by_length < 0:
        raise ValueError(f"group_by_length must be >= 0, got {group_by_length}")
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
        dataset, micro_batch_size, num_workers, tokenizer.pad_token_id, image_processor.image_size, padding_side,
        packing_capacity=max_length if packing else None, group_by=group_by_length,
    )

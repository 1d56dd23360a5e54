"""Shard lists: resolve patterns/folders to tar paths, read sample counts from index.json, split across ranks."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Sequence

import braceexpand

from .writer import INDEX_FILE


def _is_remote(spec: str) -> bool:
    return "://" in spec or spec.startswith("pipe:")


def resolve_shards(shards: str | Path | Sequence[str | Path]) -> list[str]:
    """Tar paths from a brace pattern (`d/shard-{000000..000009}.tar`), a glob (`d/*.tar`), a folder holding
    .tar files, a single path, or a list of any of these. Local paths must exist (a typo fails now, not as
    a stream of skipped shards); remote URLs (`pipe:`, `http://`) are passed to webdataset unchecked."""
    if isinstance(shards, (list, tuple)):
        out = [path for spec in shards for path in resolve_shards(spec)]
        if not out:
            raise ValueError("empty shard list")
        return out
    spec = str(shards)
    if _is_remote(spec):
        return list(braceexpand.braceexpand(spec))
    if Path(spec).is_dir():
        paths = sorted(str(p) for p in Path(spec).glob("*.tar"))
        if not paths:
            raise FileNotFoundError(f"no .tar shards in folder {spec}")
        return paths
    paths = []
    for expanded in braceexpand.braceexpand(spec):
        if any(ch in expanded for ch in "*?["):
            matches = sorted(glob.glob(expanded))
            if not matches:
                raise FileNotFoundError(f"no shards match {expanded}")
            paths += matches
        elif not Path(expanded).is_file():
            raise FileNotFoundError(f"shard not found: {expanded}")
        else:
            paths.append(expanded)
    return paths


def indexed_counts(paths: Sequence[str]) -> dict[str, int | None]:
    """Sample count of each resolved shard path from the index.json in its folder (None if not listed)."""
    indexes: dict[Path, dict[str, int]] = {}
    counts: dict[str, int | None] = {}
    for path in paths:
        if _is_remote(path):
            counts[path] = None
            continue
        folder = Path(path).parent
        if folder not in indexes:
            index_path = folder / INDEX_FILE
            entries = json.loads(index_path.read_text())["shards"] if index_path.is_file() else []
            indexes[folder] = {e["name"]: int(e["samples"]) for e in entries}
        counts[path] = indexes[folder].get(Path(path).name)
    return counts


def count_samples(shards: str | Path | Sequence[str | Path]) -> int | None:
    """Total samples of the shards from the index.json beside them; None if any shard is not indexed."""
    counts = list(indexed_counts(resolve_shards(shards)).values())
    return None if any(c is None for c in counts) else sum(counts)


def split_for_rank(shards: list[str], rank: int, world_size: int) -> tuple[list[str], bool]:
    """(shards this rank reads, whether it must keep only every world_size-th sample of them).

    Rule: with at least as many shards as ranks, rank r reads shards r, r + R, r + 2R, ... of the (epoch-
    shuffled) list. With fewer, every rank reads all shards in the same order and keeps samples
    r, r + R, ... of that common stream, so no rank is left without data. Either way one epoch partitions
    the samples across ranks exactly.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if len(shards) >= world_size:
        return shards[rank::world_size], False
    return list(shards), True

"""Resumable checkpoints: DeepSpeed engine state + each rank's RNG and data position, marked complete last.

Layout under `<stage>/checkpoints/`: one folder per save (`step-000010/`) holding DeepSpeed's files,
`rank_state_<r>.pt` per rank and a `COMPLETE` marker written after every rank finished; `latest` names
the newest complete folder and is replaced atomically, so a crash mid-save never leaves a `latest`
that cannot load.

`rank_state_<r>.pt` holds only tensors, numbers, strings, lists and dicts (numpy's RNG array is stored as a
tensor), so it loads with `torch.load(weights_only=True)`: reading it never runs code from the file. Files of
older versions (a numpy array inside) load through the same restricted unpickler with numpy's array
reconstruction allowed, which builds arrays and nothing else. DeepSpeed's own files in the folder are read by
DeepSpeed: resume only from checkpoints you wrote.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vregion import distributed as dist
from vregion.models.safe_load import refusal

COMPLETE = "COMPLETE"


def tag_for(step: int) -> str:
    return f"step-{step:06d}"


def _rng_state() -> dict:
    """Every RNG's state in types the restricted unpickler accepts (no numpy objects)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    if isinstance(keys, torch.Tensor):
        keys = keys.numpy()
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, root: Path, step: int, client_state: dict, rank_state: dict, keep: int) -> Path:
    """Write a complete checkpoint for optimizer step `step` (called on every rank)."""
    tag = tag_for(step)
    root.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    folder = root / tag
    torch.save({**rank_state, "rng": _rng_state()}, folder / f"rank_state_{dist.rank()}.pt")
    dist.barrier()
    if dist.is_main():
        (folder / COMPLETE).write_text(str(step))
        tmp = root / "latest.tmp"
        tmp.write_text(tag)
        os.replace(tmp, root / "latest")
        _prune(root, keep)
    dist.barrier()
    return folder


def _complete_tags(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("step-*") if (p / COMPLETE).exists())


def _prune(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    for tag in _complete_tags(root)[:-keep]:
        shutil.rmtree(root / tag, ignore_errors=True)
    # Folders without the marker are saves that crashed part-way; they can never be loaded.
    complete = set(_complete_tags(root))
    for p in root.glob("step-*"):
        if p.name not in complete:
            shutil.rmtree(p, ignore_errors=True)


def latest_tag(root: Path) -> str | None:
    """Newest complete checkpoint: `latest` if it names a complete one, else the newest marked folder."""
    pointer = root / "latest"
    if pointer.exists():
        tag = pointer.read_text().strip()
        if (root / tag / COMPLETE).exists():
            return tag
    tags = _complete_tags(root)
    return tags[-1] if tags else None


def _numpy_array_globals() -> list:
    """What unpickling a numpy RNG array needs: the array reconstruction, ndarray and its dtype classes."""
    multiarray = getattr(np, "_core", None) or np.core  # numpy 2 renamed np.core to np._core
    return [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_rank_state(path: Path) -> dict[str, Any]:
    """A rank_state file through torch's restricted unpickler (never weights_only=False).

    Raises:
        RuntimeError: naming the file and what its pickle asked for, when it holds anything but plain data.
    """
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):  # older files hold numpy's RNG array
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(f"refusing to load {path}: it holds objects other than plain data and tensors, and "
                           f"unpickling them could run code ({refusal(e)})") from None


def load(engine, root: Path, tag: str) -> tuple[dict, dict]:
    """Restore engine, optimizer and scheduler state, and this rank's RNG; returns (client, rank) state."""
    _, client_state = engine.load_checkpoint(
        str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if client_state is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {root / tag}")
    rank_file = root / tag / f"rank_state_{dist.rank()}.pt"
    if not rank_file.exists():
        raise RuntimeError(
            f"{rank_file} is missing: the checkpoint was written by a run with a different number of ranks"
        )
    rank_state = load_rank_state(rank_file)
    _set_rng_state(rank_state.pop("rng"))
    return client_state, rank_state

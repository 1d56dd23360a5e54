"""Read weight files without running code from them: safetensors, or pickled `.bin`/`.pt` through torch's
restricted unpickler (`weights_only=True`), which builds tensors and plain containers and refuses anything else.

Released checkpoints come from the internet; a pickle can name any Python callable (`__reduce__`), and a plain
`torch.load` would call it. Every foreign weight file vregion reads (LLaVA folders, `mm_projector.bin`) goes
through `read_tensors`.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from vregion.models.import_source import ImportRefused

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# Sharded folders name their files in an index; a single file otherwise (safetensors first, as transformers does).
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE = ("model.safetensors", "pytorch_model.bin")


class UnsafeFileError(ImportRefused):
    """A weight file that holds more than tensors (its pickle would run code), or is no weight file at all."""


def refusal(error: Exception) -> str:
    """The line of torch's weights-only error that says what the pickle asked for (e.g. `GLOBAL exec`)."""
    found = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: Please use|$)", str(error), re.MULTILINE)
    return found.group(1).strip() if found else str(error).strip().splitlines()[0]


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """{name: tensor} of one `.safetensors` / `.bin` / `.pt` / `.pth` file, on the CPU; nothing in it is executed.

    Raises:
        UnsafeFileError: a pickle that asks for anything but tensors and plain containers (naming what it asked
            for), or a file of another kind.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    if path.suffix not in PICKLE_SUFFIXES:
        raise UnsafeFileError(f"{path}: not a weight file vregion reads (.safetensors, {', '.join(PICKLE_SUFFIXES)})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(
            f"refusing to load {path}: its pickle holds more than tensors, and unpickling it could run code "
            f"({refusal(e)}); only safetensors and weights-only pickles are read") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeFileError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a Hugging Face-style folder: the shards its index names, or its single file."""
    folder = Path(folder)
    for index in INDEXES:
        if (folder / index).is_file():
            names = json.loads((folder / index).read_text())["weight_map"].values()
            return [folder / name for name in sorted(set(names))]
    for name in SINGLE:
        if (folder / name).is_file():
            return [folder / name]
    found = sorted(folder.glob("*.safetensors")) or sorted(p for s in PICKLE_SUFFIXES for p in folder.glob(f"*{s}"))
    if not found:
        raise UnsafeFileError(f"{folder}: no weight files (*.safetensors, {', '.join(PICKLE_SUFFIXES)})")
    return found


def read_folder(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's weight files (`weight_files`), merged."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        state.update(read_tensors(file))
    return state

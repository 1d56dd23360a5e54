"""Model checkpoints: one folder with `model.safetensors`, `config.yaml` and `tokenizer/`, written atomically.

This is the portable *model* format (for eval, transfer, init_from, export); resumable training state
(optimizer, scheduler, RNG) is the engine's business. Tied weights (e.g. Gemma's lm_head = embeddings)
are stored once and recorded as aliases in the safetensors metadata. A relative `model.llm.path` that names a
folder inside the checkpoint (a pruned checkpoint's architecture-only `llm/`) is resolved against the checkpoint,
so the folder can be moved or copied as a whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vregion.config import ConfigError, to_dict

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
_ALIASES_KEY = "vregion_aliases"


class NotACheckpointError(ConfigError, FileNotFoundError):
    """A folder given as a vregion checkpoint lacks config.yaml or model.safetensors (a bad value: CLI exit 2)."""


def require_checkpoint(path: str | Path) -> Path:
    """`path` as a Path once it holds config.yaml and model.safetensors; checks files only, builds nothing.

    Raises:
        NotACheckpointError: naming the folder and the missing files.
    """
    path = Path(path)
    if not path.is_dir():
        raise NotACheckpointError(f"not a vregion checkpoint: {path} is not a folder")
    missing = [name for name in (CONFIG_FILE, MODEL_FILE) if not (path / name).is_file()]
    if missing:
        raise NotACheckpointError(f"not a vregion checkpoint: {path} has no {' and no '.join(missing)}")
    return path


def read_config(path: str | Path) -> dict:
    """The config dict saved in a checkpoint folder."""
    return yaml.safe_load((require_checkpoint(path) / CONFIG_FILE).read_text()) or {}


def stored_names(path: str | Path) -> list[str]:
    """Every parameter name saved in a checkpoint (aliases included), read from the file header only."""
    with safe_open(str(require_checkpoint(path) / MODEL_FILE), framework="pt", device="cpu") as f:
        aliases = json.loads((f.metadata() or {}).get(_ALIASES_KEY, "{}"))
        return [*f.keys(), *aliases]


def architecture_only(path: str | None) -> bool:
    """Whether `path` is a local folder holding a config.json and no weight files (an imported or pruned
    checkpoint's `vision/` or `llm/`): such a part is built with random weights that a checkpoint then replaces."""
    if not path:
        return False
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        return False
    return not any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth"))


def inside_checkpoint(path: str | Path, value: Optional[str]) -> Optional[Path]:
    """The folder `path/value` when `value` is a relative path naming an existing folder inside the checkpoint."""
    if not value or Path(value).expanduser().is_absolute():
        return None
    folder = Path(path) / value
    return folder if folder.is_dir() else None


@contextlib.contextmanager
def _atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `path` only once the block finished without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            # rename() cannot replace a non-empty folder: move the old one aside first, delete it last.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr())


def _dedupe(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to write, {alias: stored name}) with exact aliases (tied weights) stored once."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    storage_users: dict[tuple, int] = {}
    for name, t in state_dict.items():
        if t.numel() == 0:
            tensors[name] = t
            continue
        view = (_storage_key(t), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if view in first:
            aliases[name] = first[view]
            continue
        first[view] = name
        tensors[name] = t
        storage_users[_storage_key(t)] = storage_users.get(_storage_key(t), 0) + 1
    out = {}
    for name, t in tensors.items():
        t = t.detach()
        # Distinct views of one storage (not aliases) must be copied: safetensors rejects shared memory.
        shared = t.numel() > 0 and storage_users.get(_storage_key(t), 0) > 1
        out[name] = (t.clone() if shared else t).contiguous().cpu()
    return out, aliases


def save_state_dict(state_dict: Mapping[str, torch.Tensor], config_dict: Any, tokenizer: Any, path: str | Path) -> Path:
    """Write a checkpoint folder from a state dict (e.g. one gathered from DeepSpeed ZeRO-3 shards).

    Args:
        state_dict: full model state dict with vregion parameter names (`vision.*`, `projector.*`, `llm.*`).
        config_dict: the resolved vregion config (dict or Config dataclass); needs a `model` section.
        tokenizer: saved with `save_pretrained` into `path/tokenizer` (skipped when None).
        path: checkpoint folder; replaced atomically if it exists.
    """
    path = Path(path)
    if dataclasses.is_dataclass(config_dict):
        config_dict = to_dict(config_dict)
    tensors, aliases = _dedupe(state_dict)
    with _atomic_folder(path) as tmp:
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt", _ALIASES_KEY: json.dumps(aliases)})
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config_dict, sort_keys=False))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
    return path


def save_checkpoint(model: nn.Module, config_dict: Any, tokenizer: Any, path: str | Path) -> Path:
    """Write `model`'s full state dict, the resolved config and the tokenizer to the folder `path`."""
    return save_state_dict(model.state_dict(), config_dict, tokenizer, path)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The saved state dict (CPU tensors) of a checkpoint folder or its model.safetensors, aliases restored."""
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no {MODEL_FILE} at {path}")
    with safe_open(str(file), framework="pt", device="cpu") as f:
        aliases = json.loads((f.metadata() or {}).get(_ALIASES_KEY, "{}"))
        state_dict = {k: f.get_tensor(k) for k in f.keys()}
    for alias, name in aliases.items():
        state_dict[alias] = state_dict[name]
    return state_dict


def fill_tied(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Add entries missing from state_dict for parameters the model ties to a present one."""
    groups: dict[tuple, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if t.numel():
            groups.setdefault((_storage_key(t), tuple(t.shape)), []).append(name)
    for names in groups.values():
        present = [n for n in names if n in state_dict]
        for n in names:
            if n not in state_dict and present:
                state_dict[n] = state_dict[present[0]]


def load_weights(model: nn.Module, path: str | Path, strict: bool = True):
    """Load a checkpoint's weights into `model` (cast to its dtypes and devices).

    Returns:
        torch's (missing_keys, unexpected_keys); with strict=True any mismatch raises RuntimeError instead.
    """
    state_dict = read_state_dict(path)
    fill_tied(model, state_dict)
    return model.load_state_dict(state_dict, strict=strict)

"""`vregion import` and foreign `init_from` sources: recognise a checkpoint's format, read it as vregion weights
(`hf_import`, `llava_original`), and write a vregion checkpoint or load the weights into a built model.

An imported checkpoint is self-contained: `model.safetensors` holds every weight (the tower's too, read from
`mm_vision_tower` when an original LLaVA release does not hold it), `vision/` and `llm/` hold the tower's and the
LLM's Hugging Face configs without weights (the config names them by relative paths, resolved inside the folder),
`tokenizer/` the tokenizer, and `vregion_import.json` the source and what was inferred.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from transformers import CLIPVisionModel, SiglipVisionModel

from vregion.config import ModelConfig, from_dict, to_dict
from vregion.models.checkpoint import (CONFIG_FILE, MODEL_FILE, fill_tied, load_weights,
                                       read_state_dict, save_state_dict)
from vregion.models.hf_import import read_hf_llava
from vregion.models.import_source import Imported, ImportRefused
from vregion.models.llava_original import is_original, read_llava, read_projector_file

VISION_DIR, LLM_DIR = "vision", "llm"
RECORD_FILE = "vregion_import.json"
TOWERS = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}


def source_kind(path: str | Path) -> str:
    """"vregion" | "hf-llava" | "llava" (a folder) or "projector-file" (a weight file); ImportRefused otherwise."""
    path = Path(path).expanduser()
    if path.is_file():
        return "projector-file"
    if (path / CONFIG_FILE).is_file() and (path / MODEL_FILE).is_file():
        return "vregion"
    if not (path / "config.json").is_file():
        raise ImportRefused(f"{path}: neither a vregion checkpoint, a LLaVA folder (config.json) nor a weight file")
    config = json.loads((path / "config.json").read_text())
    return "llava" if is_original(config) else "hf-llava"  # hf_import refuses what is not model_type llava


def read_source(path: str | Path, template: Optional[str] = None, vision: Optional[str] = None) -> Imported:
    """A Hugging Face LLaVA or original LLaVA folder as vregion weights and config."""
    kind = source_kind(path)
    if kind == "hf-llava":
        return read_hf_llava(path, template)
    if kind == "llava":
        return read_llava(path, template, vision)
    raise ImportRefused(f"{path} is a {kind} source, not a LLaVA folder" + (
        "; a projector file initialises model.projector.init_from" if kind == "projector-file" else ""))


def _with_tower(imported: Imported) -> dict[str, torch.Tensor]:
    """The imported weights, the tower's read from its own folder when the checkpoint does not hold it."""
    if any(k.startswith("vision.") for k in imported.state):
        return imported.state
    tower = TOWERS[imported.model["vision"]["type"]].from_pretrained(imported.vision_source, trust_remote_code=False)
    return imported.state | {f"vision.model.{k}": v for k, v in tower.state_dict().items()}


def import_checkpoint(src: str | Path, out: str | Path, template: Optional[str] = None,
                      vision: Optional[str] = None) -> dict:
    """Write the vregion checkpoint of a LLaVA folder to the new folder `out` (whole, or not at all).

    Returns:
        {"path", "kind", "model": the model config section, "notes"}.
    """
    out = Path(out)
    if out.exists():
        raise ImportRefused(f"{out} already exists; choose a new folder")
    imported = read_source(src, template, vision)
    model = to_dict(from_dict(ModelConfig, imported.model, "model"))
    model["vision"]["path"], model["llm"]["path"] = VISION_DIR, LLM_DIR  # relative: resolved inside the checkpoint
    tmp = out.with_name(f".{out.name}.importing-{os.getpid()}")
    try:
        save_state_dict(_with_tower(imported), {"model": model}, imported.tokenizer, tmp)
        imported.vision_config.save_pretrained(str(tmp / VISION_DIR))
        imported.text_config.save_pretrained(str(tmp / LLM_DIR))
        if imported.generation_config is not None:
            imported.generation_config.save_pretrained(str(tmp / LLM_DIR))
        imported.tokenizer.save_pretrained(str(tmp / LLM_DIR))
        record = {"source": str(src), "kind": imported.kind, "notes": imported.notes}
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(out), "kind": imported.kind, "model": model, "notes": imported.notes}


def load_source_weights(model: nn.Module, path: str | Path, template: str = "vicuna-v1") -> None:
    """Load `model.init_from` into a built model: a vregion checkpoint strictly, a LLaVA folder through its mapping.

    The config must build the source's architecture; an original LLaVA release without its tower keeps the tower
    the config loaded (`model.vision.path`). `template` only stands in for inference, which plays no part here.
    """
    kind = source_kind(path)
    if kind == "vregion":
        load_weights(model, path, strict=True)
        return
    if kind == "projector-file":
        raise ImportRefused(f"model.init_from: {path} is a weight file; a projector's (mm_projector.bin) goes in "
                            "model.projector.init_from")
    imported = read_source(path, template)
    state = dict(imported.state)
    fill_tied(model, state)
    no_tower = not any(k.startswith("vision.") for k in state)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ImportRefused(f"model.init_from {path}: the config builds a model of other shapes ({str(e)[:400]}); "
                            "`vregion import` writes a checkpoint with a matching config") from None
    missing = [k for k in missing if not (no_tower and k.startswith("vision."))]
    if missing or unexpected:
        raise ImportRefused(f"model.init_from {path}: the config builds a different model (missing {missing[:4]}, "
                            f"unexpected {unexpected[:4]}); `vregion import` writes a checkpoint with a matching config")


def load_projector_weights(projector: nn.Module, path: str | Path) -> None:
    """Load `model.projector.init_from` (mm_projector.bin, or any source's projector) into `projector`, strictly."""
    kind = source_kind(path)
    if kind == "projector-file":
        weights, found = read_projector_file(path)
    else:
        state = read_state_dict(path) if kind == "vregion" else read_source(path, "vicuna-v1").state
        weights = {k[len("projector."):]: v for k, v in state.items() if k.startswith("projector.")}
        found = "linear" if set(weights) == {"weight", "bias"} else "mlp2x_gelu"
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    expected = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    if shapes != expected:
        raise ImportRefused(f"model.projector.init_from {path}: a {found} projector of shapes {shapes}, but "
                            f"model.projector is {expected}")
    projector.load_state_dict(weights, strict=True)

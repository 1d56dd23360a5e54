"""Remove decoder layers from a VisionLanguageModel, keeping the KV cache and the runner consistent.

Unlike the reference code, every remaining attention module's `layer_idx` is renumbered (the KV cache
indexes its layers by it), `num_hidden_layers` / `layer_types` follow the new depth, and the runner is
rebuilt (it reads the layer types once). A pruned checkpoint carries its pruned LLM's architecture as an HF
folder without weights (`llm/`: config.json, generation_config.json, tokenizer) and points `model.llm.path`
at it relative to the checkpoint, so `load_checkpoint` rebuilds the new depth wherever the folder is moved;
the weights are stored once, in model.safetensors. `prune.json` records what was removed.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from vregion.models.checkpoint import save_checkpoint
from vregion.models.runner import DecoderRunner, unwrap_peft
from vregion.region.apply import region_layers

log = logging.getLogger(__name__)

LLM_DIR = "llm"
PRUNE_FILE = "prune.json"
# HF config fields holding one entry per decoder layer: they keep the entries of the kept layers.
PER_LAYER_FIELDS = ("layer_types", "no_rope_layers")


def kept_layers(num_layers: int, drop: Sequence[int]) -> list[int]:
    """Old indices of the layers that survive, in order (new index = position in this list)."""
    dropped = set(drop)
    if len(dropped) != len(drop):
        raise ValueError(f"layer listed twice in {list(drop)}")
    if any(not 0 <= i < num_layers for i in dropped):
        raise ValueError(f"drop {sorted(dropped)} has indices outside [0, {num_layers})")
    if len(dropped) == num_layers:
        raise ValueError("cannot drop every decoder layer")
    return [i for i in range(num_layers) if i not in dropped]


def renumber(layers: Sequence[int], drop: Sequence[int], num_layers: int) -> list[int]:
    """New indices of the (kept) old layer indices `layers` after dropping `drop` from `num_layers`."""
    kept = kept_layers(num_layers, drop)
    position = {old: new for new, old in enumerate(kept)}
    missing = [i for i in layers if i not in position]
    if missing:
        raise ValueError(f"layers {missing} are being dropped")
    return [position[i] for i in layers]


def prune_layers(model: nn.Module, drop: Sequence[int]) -> list[int]:
    """Remove decoder layers `drop` (old indices) from `model.llm` in place.

    Args:
        model: VisionLanguageModel (or anything with `.llm` and `.runner`).
        drop: 0-based layer indices to remove; may be empty.
    Returns:
        The old indices of the kept layers (new index i was old index result[i]).
    """
    llm = unwrap_peft(model.llm)
    base, config = llm.model, llm.config
    num_layers = len(base.layers)
    kept = kept_layers(num_layers, list(drop))
    base.layers = nn.ModuleList([base.layers[i] for i in kept])
    for new, layer in enumerate(base.layers):
        # Attention (and some decoder layers) index the KV cache by layer_idx: it must be the new position.
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    config.num_hidden_layers = len(kept)
    for field in PER_LAYER_FIELDS:
        values = getattr(config, field, None)
        if isinstance(values, (list, tuple)) and len(values) == num_layers:
            setattr(config, field, [values[i] for i in kept])
    old = model.runner
    model.runner = DecoderRunner(model.llm, gradient_checkpointing=old.gradient_checkpointing,
                                 between_layers=old.between_layers)
    log.info("pruned decoder layers %s: %d -> %d layers", sorted(drop), len(kept) + len(drop), len(kept))
    return kept


def export_llm_config(model: nn.Module, tokenizer: Any, path: str | Path) -> Path:
    """Save the (pruned) LLM's architecture and tokenizer as an HF folder WITHOUT weights.

    `AutoConfig` / `AutoTokenizer` load it; the weights live in the checkpoint's model.safetensors only.
    """
    path = Path(path)
    llm = unwrap_peft(model.llm)
    config = copy.deepcopy(llm.config)
    config.architectures = [type(llm).__name__]
    config.save_pretrained(str(path))
    llm.generation_config.save_pretrained(str(path))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def pruned_config(config_dict: dict, drop: Sequence[int], num_layers: int) -> dict:
    """The checkpoint config after pruning: LLM from the checkpoint's `llm/`, region renumbered as a list."""
    out = copy.deepcopy(config_dict)
    llm = out.setdefault("model", {}).setdefault("llm", {})
    # Relative: load_checkpoint resolves it inside the checkpoint, so the folder can move.
    llm.update(path=LLM_DIR, gguf_file=None, tiny=None)
    region = out.get("region")
    if region:
        layers = region_layers(out, num_layers)
        # A rule such as uniform/0.25 would pick other layers at the new depth: freeze the renumbered set.
        if region.get("strategy") not in ("none", "all") and layers:
            region.update(strategy="list", count=None, layers=renumber(layers, drop, num_layers))
    return out


def save_pruned_checkpoint(model: nn.Module, tokenizer: Any, config_dict: dict, drop: Sequence[int],
                           num_layers: int, path: str | Path, extra: dict | None = None) -> Path:
    """Write a loadable checkpoint of a pruned model (`load_checkpoint(path)` returns the pruned depth).

    Args:
        config_dict: the ORIGINAL checkpoint's config (before pruning).
        drop: old indices that were removed; num_layers: the original depth.
        extra: more facts for prune.json (metric, scores...).
    """
    path = Path(path)
    save_checkpoint(model, pruned_config(config_dict, drop, num_layers), tokenizer, path)
    # After the atomic folder write (which replaces the whole folder): the LLM's architecture, no weights.
    export_llm_config(model, tokenizer, path / LLM_DIR)
    info = {"dropped": sorted(drop), "original_layers": num_layers, "kept": kept_layers(num_layers, drop),
            **(extra or {})}
    (path / PRUNE_FILE).write_text(json.dumps(info, indent=2))
    return path

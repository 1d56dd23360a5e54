"""What a loaded checkpoint is, for people comparing answers: config facts and the run's held-out results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from vregion.region.prune import PRUNE_FILE

SUMMARY_FILE = "summary.json"  # written by the trainer into the stage folder, beside final/


def find_summary(checkpoint: Path) -> Optional[Path]:
    """The training summary of a checkpoint: in its folder, or in the stage folder holding `final/`."""
    for folder in (checkpoint, checkpoint.parent):
        if (folder / SUMMARY_FILE).is_file():
            return folder / SUMMARY_FILE
    return None


def _region(config: dict, summary: dict) -> str:
    if "region_layers" in summary:  # the layers the run actually trained
        layers = summary["region_layers"]
        return f"{len(layers)} layers {layers} ({summary.get('region_mode', 'full')})" if layers else "none (projector)"
    region = config.get("region") or {}
    strategy = region.get("strategy", "uniform")
    if strategy == "list":
        return f"layers {region.get('layers')} ({region.get('mode', 'full')})"
    size = region.get("count") or f"{region.get('fraction', 0.25):g} of the layers"
    return f"{strategy}, {size} ({region.get('mode', 'full')})" if strategy not in ("none", "all") else strategy


def _llm(config: dict) -> str:
    llm = (config.get("model") or {}).get("llm") or {}
    if llm.get("tiny"):
        return f"tiny {llm['tiny'].get('family', 'llama')} (random init)"
    return Path(str(llm.get("gguf_file") or llm.get("path"))).name


def checkpoint_summary(checkpoint: str | Path, config: dict, compression, num_layers: int) -> dict:
    """Facts to show beside a checkpoint's answers (all values are display strings or numbers).

    Args:
        compression: the PoolingSetting answers run with (layer None: uncompressed).
        num_layers: the decoder layers of the loaded model (after any pruning).
    Returns:
        {"checkpoint", "facts": {name: value}, "held_out": {name: value}, "summary_file": path or None}.
    """
    checkpoint = Path(checkpoint)
    summary_file = find_summary(checkpoint)
    summary = json.loads(summary_file.read_text()) if summary_file else {}
    model = config.get("model") or {}
    facts = {
        "LLM": f"{_llm(config)}, {num_layers} layers",
        "vision": (model.get("vision") or {}).get("type", "?"),
        "template": model.get("template", "vicuna-v1"),
        "region": _region(config, summary),
        "compression": ("none" if compression.layer is None
                        else f"pool visual tokens before layer {compression.layer}, stride {compression.stride}"),
    }
    if "steps" in summary:
        facts["training steps"] = f"{summary['steps']} ({summary.get('stage', '?')} stage)"
    if (checkpoint / PRUNE_FILE).is_file():
        pruned = json.loads((checkpoint / PRUNE_FILE).read_text())
        facts["pruned"] = f"dropped layers {pruned.get('dropped')} of {pruned.get('original_layers')}"
    held_out = {}
    if summary.get("eval_loss") is not None:
        held_out["held-out loss"] = round(float(summary["eval_loss"]), 4)
    if summary.get("eval_vqa_accuracy") is not None:
        held_out["held-out VQA accuracy"] = f"{100 * float(summary['eval_vqa_accuracy']):.1f}%"
    return {"checkpoint": str(checkpoint), "facts": facts, "held_out": held_out,
            "summary_file": str(summary_file) if summary_file else None}

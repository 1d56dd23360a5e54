"""What a loaded checkpoint is, for people comparing answers: config facts and the run's held-out results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import yaml

from vregion.region.prune import PRUNE_FILE

SUMMARY_FILE = "summary.json"  # written by the trainer into the stage folder, beside final/
AFTER_FILE = "eval_after.json"  # written by `vregion train` into the run folder (eval.before_after)


def find_summary(checkpoint: Path) -> Optional[Path]:
    """The training summary of a checkpoint: in its folder, or in the stage folder holding `final/`."""
    for folder in (checkpoint, checkpoint.parent):
        if (folder / SUMMARY_FILE).is_file():
            return folder / SUMMARY_FILE
    return None


def find_run_eval(checkpoint: Path) -> Optional[Path]:
    """eval_after.json of the run whose last stage saved `checkpoint` (`vregion train` scores that one only)."""
    if checkpoint.name != "final":
        return None
    stage = checkpoint.parent
    if (stage / AFTER_FILE).is_file():  # a run of one unnamed stage: the stage folder is the run folder
        return stage / AFTER_FILE
    run = stage.parent
    if not ((run / AFTER_FILE).is_file() and (run / "config.yaml").is_file()):
        return None
    stages = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("stages") or []
    return run / AFTER_FILE if stages and stages[-1].get("name") == stage.name else None


def _region(config: dict, summary: dict) -> str:
    if "region_layers" in summary:  # the layers the run actually trained
        layers = summary["region_layers"]
        if not layers:
            return "none (projector)"
        return f"{len(layers)} layer{'s' * (len(layers) > 1)} {layers} ({summary.get('region_mode', 'full')})"
    region = config.get("region") or {}
    strategy = region.get("strategy", "uniform")
    if strategy == "list":
        return f"layers {region.get('layers')} ({region.get('mode', 'full')})"
    size = region.get("count") or f"{region.get('fraction', 0.25):g} of the layers"
    return f"{strategy}, {size} ({region.get('mode', 'full')})" if strategy not in ("none", "all") else strategy


def _llm(config: dict) -> str:
    llm = (config.get("model") or {}).get("llm") or {}
    if llm.get("tiny"):
        return f"tiny {llm['tiny'].get('family', 'llama')}"
    return Path(str(llm.get("gguf_file") or llm.get("path"))).name


def checkpoint_summary(checkpoint: str | Path, config: dict, compression, num_layers: int) -> dict:
    """Facts to show beside a checkpoint's answers (all values are display strings or numbers).

    Args:
        compression: the PoolingSetting answers run with (layer None: uncompressed).
        num_layers: the decoder layers of the loaded model (after any pruning).
    Returns:
        {"checkpoint", "facts": {name: value}, "held_out": {name: value}, "summary_file": path or None}; held_out
        holds summary.json's last held-out evaluation and, for a run's final checkpoint, eval_after.json's scores.
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
    run_eval = find_run_eval(checkpoint)
    after = json.loads(run_eval.read_text()) if run_eval else {}
    if "vqa" in after:
        vqa = after["vqa"]
        held_out["end-of-run VQA accuracy"] = f"{100 * vqa['accuracy']:.1f}% of {vqa['samples']}"
    for name, label in (("vqa_loss", "VQA answer loss"), ("caption", "caption loss")):
        if name in after:
            held_out[f"end-of-run {label}"] = round(float(after[name]["loss"]), 4)
    return {"checkpoint": str(checkpoint), "facts": facts, "held_out": held_out,
            "summary_file": str(summary_file) if summary_file else None}

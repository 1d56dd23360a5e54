"""Layer analysis and region-based pruning of a saved checkpoint: the functions behind `vregion analyze|prune`.

`analyze_checkpoint` writes the per-layer metric table (csv, json) and a plot with the region marked.
`prune_checkpoint` drops the least important layers OUTSIDE the region (paper: by angular distance, no
retraining), saves the pruned checkpoint and reports size, held-out quality and KV-cache decoding speed
before and after. Both check their arguments first (`check_analyze`, `check_prune`: files and config headers
only), so a bad value fails with a ConfigError before any model is built or calibration runs.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from vregion.config import ConfigError, EvalConfig, from_dict
from vregion.data import resolve_shards
from vregion.eval import evaluate_model
from vregion.eval.generation import left_padded, split_prompts
from vregion.eval.loss import to_model
from vregion.eval.report import eval_batches
from vregion.models.checkpoint import MODEL_FILE, read_config, read_state_dict, stored_names
from vregion.models.vlm import load_checkpoint
from vregion.region.apply import region_layers
from vregion.region.metrics import LayerStats, add_parameter_change, layer_metrics, parameter_change
from vregion.region.names import layer_index_of
from vregion.region.prune import prune_layers, save_pruned_checkpoint
from vregion.region.ranking import METRICS, least_important_outside, scores_from_table

PLOT_GROUPS = {
    "block influence": ("bi", "bi_visual", "bi_text", "bi_multimodal"),
    "angular distance": ("angular", "angular_block"),
    "parameter change (sum of 7 linears)": ("param_relative", "param_angular"),
}


def stored_num_layers(checkpoint: str | Path) -> int:
    """Decoder depth of a saved checkpoint, from its parameter names (no weights are read)."""
    layers = {layer_index_of(name) for name in stored_names(checkpoint)} - {None}
    return max(layers, default=-1) + 1


def _check_shards(flag: str, shards: Optional[str]) -> None:
    if shards is None:
        return
    try:
        resolve_shards(shards)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{flag}: {e}") from None


def check_analyze(checkpoint: str | Path, shards: str) -> dict:
    """The checkpoint's config dict, once `checkpoint` is a checkpoint folder and `shards` exist.

    Raises:
        ConfigError: (NotACheckpointError for the folder) naming what is wrong.
    """
    config_dict = read_config(checkpoint)
    _check_shards("--data", shards)
    return config_dict


def check_prune(checkpoint: str | Path, drop_n: int, metric: str, shards: str, captions: Optional[str] = None,
                base: Optional[str] = None, table: Optional[Sequence] = None) -> None:
    """Refuse a prune request that cannot succeed, from files and config headers only (nothing is built).

    Raises:
        ConfigError: unknown metric (listing the valid ones), a parameter metric without --base or a table,
            a drop count outside 0..(droppable layers outside the region), a folder that is not a checkpoint,
            missing shards, or a table of another depth or without the metric.
    """
    config_dict = check_analyze(checkpoint, shards)
    _check_shards("--captions", captions)
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    if metric.startswith("param_") and base is None and table is None:
        raise ConfigError(f"metric {metric!r} compares against base weights: give --base (or --scores)")
    num_layers = stored_num_layers(checkpoint)
    region = region_layers(config_dict, num_layers)
    outside = num_layers - len(set(region))
    droppable = min(outside, num_layers - 1)  # at least one decoder layer stays
    if not 0 <= drop_n <= droppable:
        raise ConfigError(f"--drop {drop_n} is out of range: 0..{droppable} of the {num_layers} layers can be dropped "
                          f"({outside} lie outside the region {region}; at least one layer stays)")
    if table is not None:
        if len(table) != num_layers:
            raise ConfigError(f"the layer table has {len(table)} layers, the checkpoint {num_layers}")
        try:
            scores_from_table(table, metric)
        except ValueError as e:
            raise ConfigError(f"layer table: {e}") from None


def _data_settings(config_dict: dict) -> tuple[str, int]:
    """(template, max_length) the checkpoint was trained with."""
    return (config_dict.get("model") or {}).get("template", "vicuna-v1"), (config_dict.get("data") or {}).get(
        "max_length", 2048)


def _base_state_dict(base: str | Path) -> dict[str, torch.Tensor]:
    """A vregion checkpoint's state dict, or an HF folder's (all its *.safetensors files)."""
    base = Path(base).expanduser()
    if (base / MODEL_FILE).exists() or base.is_file():
        return read_state_dict(base)
    from safetensors.torch import load_file

    files = sorted(base.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {base}")
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def compute_table(model, tokenizer, config_dict: dict, shards: str, max_samples: int, block: int = 2,
                  batch_size: int = 16, base: Optional[str] = None) -> list[LayerStats]:
    """Hidden-state metrics over `shards` (with a progress bar) plus parameter change against `base`."""
    template, max_length = _data_settings(config_dict)
    batches = eval_batches(model, tokenizer, shards, template, max_length, batch_size)
    with tqdm(total=max_samples, desc="layer metrics", unit="sample") as bar:
        table = layer_metrics(model, batches, max_samples, block, progress=bar)
    if base is not None:
        add_parameter_change(table, parameter_change(model.state_dict(), _base_state_dict(base)))
    return table


def write_table(table: Sequence[LayerStats], region: Sequence[int], out_dir: str | Path, title: str = "") -> Path:
    """layers.csv, layers.json and layers.png (metric curves, region layers shaded) in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [dict(r.as_dict(), in_region=r.layer in set(region)) for r in table]
    with open(out / "layers.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "layers.json").write_text(json.dumps({"region": list(region), "layers": rows}, indent=2))
    _plot(rows, region, out / "layers.png", title)
    return out


def _plot(rows: list[dict], region: Sequence[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {name: [k for k in keys if any(r[k] is not None for r in rows)] for name, keys in PLOT_GROUPS.items()}
    groups = {name: keys for name, keys in groups.items() if keys}
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 3 * len(groups)), sharex=True, squeeze=False)
    layers = [r["layer"] for r in rows]
    for ax, (name, keys) in zip(axes[:, 0], groups.items()):
        for i in region:
            ax.axvspan(i - 0.4, i + 0.4, color="tab:orange", alpha=0.2, lw=0)
        for key in keys:
            ax.plot(layers, [float("nan") if r[key] is None else r[key] for r in rows], marker="o", ms=3, label=key)
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("decoder layer (shaded: visual region)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyze_checkpoint(checkpoint: str | Path, shards: str, out_dir: str | Path, max_samples: int = 256,
                       base: Optional[str] = None, block: int = 2, batch_size: int = 16) -> list[LayerStats]:
    """Compute and write the per-layer table of `checkpoint` (see `write_table`); returns the table."""
    check_analyze(checkpoint, shards)
    model, tokenizer, config_dict = load_checkpoint(checkpoint)
    table = compute_table(model, tokenizer, config_dict, shards, max_samples, block, batch_size, base)
    region = region_layers(config_dict, model.runner.num_layers)
    write_table(table, region, out_dir, title=str(checkpoint))
    return table


@torch.no_grad()
def generation_speed(model, tokenizer, shards: str, template: str, max_length: int, batch_size: int = 8,
                     num_batches: int = 2, new_tokens: int = 32) -> float:
    """Greedy KV-cache decoding throughput in new tokens/s on the first prompts of `shards`.

    Every row decodes exactly `new_tokens` tokens (EOS is ignored), after one untimed warm-up batch.
    """
    model.eval()
    prompts = []
    for batch in eval_batches(model, tokenizer, shards, template, max_length, batch_size):
        items = split_prompts(batch, tokenizer)
        if items:
            prompts.append(to_model(left_padded(items, batch["pixel_values"], tokenizer.pad_token_id,
                                                model.num_visual_tokens), model))
        if len(prompts) > num_batches:
            break
    gen_cfg = model.llm.generation_config
    saved_eos = gen_cfg.eos_token_id
    gen_cfg.eos_token_id = None  # a fixed token count per row, so speed does not depend on answer length
    try:
        tokens, seconds = 0, 0.0
        for k, p in enumerate(prompts):
            start = time.perf_counter()
            out = model.generate(p["input_ids"], p["attention_mask"], p["pixel_values"], p["image_spans"],
                                 max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
            if k > 0 or len(prompts) == 1:  # the first batch warms up caches and kernels
                seconds += time.perf_counter() - start
                tokens += out.numel()
    finally:
        gen_cfg.eos_token_id = saved_eos
    return tokens / max(seconds, 1e-9)


def _snapshot(model, tokenizer, eval_cfg: EvalConfig, template: str, max_length: int, speed_tokens: int) -> dict:
    results = evaluate_model(model, tokenizer, eval_cfg, template, max_length)
    shards = eval_cfg.vqa_shards or eval_cfg.caption_shards
    return {
        "layers": model.runner.num_layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "llm_parameters": sum(p.numel() for p in model.llm.parameters()),
        "vqa_accuracy": results.get("vqa", {}).get("accuracy"),
        "vqa_loss": results.get("vqa_loss", {}).get("loss"),
        "caption_loss": results.get("caption", {}).get("loss"),
        "tokens_per_s": generation_speed(model, tokenizer, shards, template, max_length, eval_cfg.batch_size,
                                         new_tokens=speed_tokens),
    }


def prune_checkpoint(checkpoint: str | Path, drop_n: int, metric: str, shards: str, out: str | Path,
                     captions: Optional[str] = None, max_samples: int = 100, block: int = 2,
                     base: Optional[str] = None, table: Optional[Sequence] = None, before: Optional[dict] = None,
                     speed_tokens: int = 32) -> dict:
    """Drop the `drop_n` least important layers outside the region, save to `out`, report before/after.

    Args:
        metric: ranking column (see `vregion.region.ranking.METRICS`; the paper uses angular).
        shards: VQA shards for calibration, accuracy and answer loss; captions: optional caption shards.
        table: a precomputed layer table (e.g. layers.json rows) instead of a calibration pass.
        before: a precomputed "before" snapshot to reuse across several drop counts.
        speed_tokens: new tokens per row when timing decoding.
    Returns:
        {"dropped", "metric", "region", "before", "after", "speedup"}; also written to out/report.json.
    Raises:
        ConfigError: from `check_prune`, before anything is built.
    """
    check_prune(checkpoint, drop_n, metric, shards, captions, base, table)
    model, tokenizer, config_dict = load_checkpoint(checkpoint)
    template, max_length = _data_settings(config_dict)
    eval_cfg = replace(from_dict(EvalConfig, config_dict.get("eval") or {}, "eval"), vqa_shards=shards,
                       caption_shards=captions, max_samples=max_samples)
    num_layers = model.runner.num_layers
    region = region_layers(config_dict, num_layers)
    if table is None:
        table = compute_table(model, tokenizer, config_dict, shards, max_samples, block, eval_cfg.batch_size, base)
    drop = least_important_outside(scores_from_table(table, metric), region, drop_n)
    if before is None:
        before = _snapshot(model, tokenizer, eval_cfg, template, max_length, speed_tokens)
    prune_layers(model, drop)
    after = _snapshot(model, tokenizer, eval_cfg, template, max_length, speed_tokens)
    report: dict[str, Any] = {"dropped": drop, "metric": metric, "region": region, "before": before,
                              "after": after, "speedup": after["tokens_per_s"] / before["tokens_per_s"]}
    save_pruned_checkpoint(model, tokenizer, config_dict, drop, num_layers, out, extra={"report": report})
    (Path(out) / "report.json").write_text(json.dumps(report, indent=2))
    return report

"""`vregion bench`: step time of training variants measured side by side, interleaved so machine drift cancels.

Each variant (full fine-tuning, region in full mode, region with LoRA, ...) gets its own DeepSpeed engine on
the same model, data and seed. Rounds run A B C A B C ...; every round times a few optimizer steps of each
variant, so a slow patch of a shared machine hits all variants alike. Ratios are to the first variant.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vregion.config import Config, from_dict, RegionConfig, to_dict, _deep_merge
from vregion.engine import distributed as dist
from vregion.engine.ds_config import build_ds_config
from vregion.engine.inputs import StageData, model_inputs
from vregion.engine.optim import build_optimizer, build_scheduler
from vregion.engine.trainer import model_dtype, optimizer_state_numel, seed_everything
from vregion.models import build_vlm
from vregion.region import apply_region, build_param_groups

# Variant name -> overrides of the region section.
VARIANTS = {
    "full": {"strategy": "all", "mode": "full"},
    "region": {"strategy": "uniform", "mode": "full"},
    "region-lora": {"strategy": "uniform", "mode": "lora"},
    "projector": {"strategy": "none"},
}


@dataclass
class VariantRun:
    name: str
    engine: object
    batches: object
    trainable: int
    state_bytes: int = 0
    times: list = field(default_factory=list)
    tokens: list = field(default_factory=list)


def _build_variant(cfg: Config, name: str) -> VariantRun:
    region = from_dict(RegionConfig, _deep_merge(to_dict(cfg.region), VARIANTS[name]), "region")
    seed_everything(cfg.run.seed)
    model, tokenizer = build_vlm(cfg.model, dtype=model_dtype(cfg))
    apply_region(model, region)
    groups = build_param_groups(model, cfg.optim)
    optimizer = build_optimizer(groups, cfg.optim, cfg.deepspeed.offload_optimizer)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps=10**6)
    import deepspeed

    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=build_ds_config(cfg, dist.world_size())
    )
    data = StageData(cfg, model, tokenizer)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    return VariantRun(name, engine, iter(data.train_loader()), trainable)


def _step(run: VariantRun, accum: int, dtype: torch.dtype) -> tuple[float, float]:
    """One optimizer step; (seconds, tokens)."""
    start = time.perf_counter()
    tokens = 0.0
    for _ in range(accum):
        batch = next(run.batches)
        out = run.engine(**model_inputs(batch, dist.device(), dtype))
        run.engine.backward(out["loss"])
        run.engine.step()
        tokens += float(batch["attention_mask"].sum())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens


def run_bench(cfg: Config, variants: list[str], rounds: int, steps_per_round: int, out_dir: Path) -> list[dict]:
    """Time `variants` interleaved; write bench.json and bench.md to `out_dir`; return the rows."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown bench variants {unknown}; valid: {', '.join(VARIANTS)}")
    dist.init_distributed()
    cfg = copy.deepcopy(cfg)
    dtype = model_dtype(cfg)
    accum = cfg.train.grad_accum
    runs = [_build_variant(cfg, name) for name in variants]
    for run in runs:  # an untimed warm-up round: allocations, lazy inits, loader start-up
        for _ in range(steps_per_round):
            _step(run, accum, dtype)
        run.state_bytes = optimizer_state_numel(run.engine) * 4  # fp32 Adam moments
    from tqdm import tqdm

    for _ in tqdm(range(rounds), desc="bench rounds", disable=not dist.is_main()):
        for run in runs:
            for _ in range(steps_per_round):
                seconds, tokens = _step(run, accum, dtype)
                run.times.append(seconds)
                run.tokens.append(tokens)
    base = statistics.median(runs[0].times)
    rows = []
    for run in runs:
        median = statistics.median(run.times)
        rows.append({
            "variant": run.name,
            "median_step_s": median,
            "min_step_s": min(run.times),
            "max_step_s": max(run.times),
            "tokens_per_s": sum(run.tokens) / sum(run.times),
            "trainable_params": run.trainable,
            "optimizer_state_bytes": run.state_bytes,
            "step_time_ratio": median / base,
            "steps_timed": len(run.times),
        })
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench.json").write_text(json.dumps(rows, indent=2))
        table = format_table(rows)
        (out_dir / "bench.md").write_text(table + "\n")
        print(table, flush=True)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table, ratios to the first row."""
    head = ("| variant | median step (s) | min-max (s) | tokens/s | trainable params | optimizer state | "
            "step time vs " + rows[0]["variant"] + " |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['median_step_s']:.3f} | {r['min_step_s']:.3f}-{r['max_step_s']:.3f} | "
            f"{r['tokens_per_s']:,.0f} | {r['trainable_params']:,} | {r['optimizer_state_bytes'] / 2**20:,.1f} MiB | "
            f"{r['step_time_ratio']:.2f}x |"
        )
    return "\n".join(lines)

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

from typing import Optional

from vregion.compress import Stage, apply_stage, get_schedule, scale_layer
from vregion.config import Config, RegionConfig, _deep_merge, from_dict, to_dict
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


def parse_variant(spec: str) -> tuple[str, Optional[tuple[int, int]]]:
    """`region` or `region@2/8` (pool with stride 8 before layer 2 of 32, scaled to the model's depth)."""
    base, _, pooling = spec.partition("@")
    if base not in VARIANTS:
        raise ValueError(f"unknown bench variant {base!r} in {spec!r}; valid: {', '.join(VARIANTS)} (+ optional @K/S)")
    if not pooling:
        return base, None
    try:
        k, stride = (int(x) for x in pooling.split("/"))
    except ValueError:
        raise ValueError(f"bench variant {spec!r}: expected NAME@K/S, e.g. region@2/8") from None
    return base, (k, stride)


def schedule_variants(base: str, schedule_name: str) -> list[str]:
    """The base variant plus one variant per distinct compressed phase of a schedule."""
    schedule = get_schedule(schedule_name)
    compressed = [f"{base}@{p.layer}/{p.stride}" for p in schedule.phases if p.layer is not None]
    return [base] + list(dict.fromkeys(compressed))


def _build_variant(cfg: Config, spec: str) -> VariantRun:
    name, pooling = parse_variant(spec)
    region = from_dict(RegionConfig, _deep_merge(to_dict(cfg.region), VARIANTS[name]), "region")
    seed_everything(cfg.run.seed)
    model, tokenizer = build_vlm(cfg.model, dtype=model_dtype(cfg))
    apply_region(model, region)
    if pooling is not None:
        k, stride = pooling
        layer = scale_layer(k, model.runner.num_layers) if k else 0
        apply_stage(model, Stage(0, layer, stride), impl=cfg.compress.impl)
    groups = build_param_groups(model, cfg.optim)
    optimizer = build_optimizer(groups, cfg.optim, cfg.deepspeed.offload_optimizer)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps=10**6)
    import deepspeed

    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=build_ds_config(cfg, dist.world_size())
    )
    data = StageData(cfg, model, tokenizer)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    return VariantRun(spec, engine, iter(data.train_loader()), trainable)


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


def run_bench(
    cfg: Config, variants: list[str], rounds: int, steps_per_round: int, out_dir: Path, schedule: Optional[str] = None
) -> list[dict]:
    """Time `variants` interleaved; write bench.json and bench.md to `out_dir`; return the rows.

    With `schedule`, a last row gives the whole-run average of that compression schedule: each phase's
    median step time (its `<first variant>@K/S` row, or the first variant for uncompressed phases) weighted
    by the phase's share of training.
    """
    for spec in variants:
        parse_variant(spec)
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
    if schedule is not None:
        rows.append(_schedule_average(rows, schedule))
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench.json").write_text(json.dumps(rows, indent=2))
        table = format_table(rows)
        (out_dir / "bench.md").write_text(table + "\n")
        print(table, flush=True)
    return rows


def _schedule_average(rows: list[dict], schedule_name: str) -> dict:
    by_name = {r["variant"]: r for r in rows}
    base = rows[0]
    median = 0.0
    for phase in get_schedule(schedule_name).phases:
        name = base["variant"] if phase.layer is None else f"{base['variant']}@{phase.layer}/{phase.stride}"
        if name not in by_name:
            raise ValueError(f"schedule average needs the variant {name!r}")
        median += phase.fraction * by_name[name]["median_step_s"]
    tokens = base["tokens_per_s"] * base["median_step_s"]  # same data: tokens per step are the base's
    return {
        "variant": f"{base['variant']} + {schedule_name} (whole-run average)",
        "median_step_s": median, "min_step_s": float("nan"), "max_step_s": float("nan"),
        "tokens_per_s": tokens / median, "trainable_params": base["trainable_params"],
        "optimizer_state_bytes": base["optimizer_state_bytes"], "step_time_ratio": median / base["median_step_s"],
        "steps_timed": 0,
    }


def format_table(rows: list[dict]) -> str:
    """Markdown table, ratios to the first row."""
    head = ("| variant | median step (s) | min-max (s) | tokens/s | trainable params | optimizer state | "
            "step time vs " + rows[0]["variant"] + " |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = "-" if r["steps_timed"] == 0 else f"{r['min_step_s']:.3f}-{r['max_step_s']:.3f}"
        lines.append(
            f"| {r['variant']} | {r['median_step_s']:.3f} | {spread} | "
            f"{r['tokens_per_s']:,.0f} | {r['trainable_params']:,} | {r['optimizer_state_bytes'] / 2**20:,.1f} MiB | "
            f"{r['step_time_ratio']:.2f}x |"
        )
    return "\n".join(lines)

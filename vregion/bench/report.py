"""`vregion bench` results: per-variant rows from timed steps, ratios, projections, and the md/json/png/wandb outputs.

Everything here is a pure function of measurements (no model, no engine), so the arithmetic is testable
on made-up timings. A row's throughput is a sum over its timed steps (tokens / seconds), its step time a
median; achieved TFLOP/s counts the FLOPs `plan.sample_flops` says each batch actually needed (padding,
frozen layers without weight gradients, pooled layers on fewer tokens, the head on supervised positions).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vregion.compress.schedule import Schedule
from vregion.config import WandbConfig

MIB = 2**20
GIB = 2**30
# Memory column labels by how the peak was measured (see `vregion.bench.run` for each method).
MEMORY_KINDS = {
    "cuda": "GPU memory allocated for this variant alone: what its engine holds once built and warmed up "
            "+ the most one of its steps allocates on top",
    "rss": "CPU RSS attributable to this variant: the RSS its engine added once built and warmed up + the most "
           "one of its steps raised RSS, freed memory handed back to the OS (malloc_trim) before each reading; "
           "process-wide, so the data loader's buffers count, and the first engine built also carries one-time "
           "costs (lazy imports, kernel caches)",
    None: "not measured",
}


@dataclass
class StepTiming:
    """One timed optimizer step: wall seconds and their forward / backward / optimizer-step parts, the data
    it consumed (non-pad tokens before any pooling, samples), the token positions its batches held (padding
    included: what the model computed on) and the FLOPs the plan says it did (None: the plan has no FLOP model
    for the LLM)."""

    seconds: float
    forward: float
    backward: float
    optimizer: float
    tokens: float
    samples: int
    flops: Optional[float]
    positions: float = 0.0  # batch rows x padded length, summed over micro-batches (0: not recorded)


@dataclass
class Projection:
    """The full training run the measured throughput is projected to (default: LLaVA-1.5's instruction tuning)."""

    samples: int = 665_000
    epochs: float = 1.0
    global_batch: int = 128
    gpus: int = 1


def variant_row(name: str, steps: list[StepTiming], trainable: int, state_bytes: int, peak_tflops: float,
                projection: Projection, peak_mem_bytes: Optional[int] = None, **extra) -> dict:
    """One result row from a variant's timed steps.

    The projection keeps the measured cost per sample of forward + backward and amortises the measured
    optimizer step over the run's global batch: one optimizer step per `global_batch / gpus` samples per
    device, as in the real run (the bench steps after every `micro_batch x grad_accum` samples). GPUs are
    assumed to scale linearly (communication and ZeRO partitioning of the optimizer step not modelled).
    `trainable` counts the whole model; `state_bytes` and `peak_mem_bytes` are this rank's (`*_per_rank` keys).
    """
    seconds = sum(s.seconds for s in steps)
    samples = sum(s.samples for s in steps)
    optimizer_total = sum(s.optimizer for s in steps)
    per_sample = (seconds - optimizer_total) / samples  # forward + backward + data, per sample per device
    step_s = per_sample * projection.global_batch / projection.gpus + optimizer_total / len(steps)
    wall_s = math.ceil(projection.samples * projection.epochs / projection.global_batch) * step_s
    flops = None if any(s.flops is None for s in steps) else sum(s.flops for s in steps)
    achieved = None if flops is None else flops / seconds / 1e12
    return {
        "variant": name,
        "steps_timed": len(steps),
        "median_step_s": statistics.median(s.seconds for s in steps),
        "min_step_s": min(s.seconds for s in steps),
        "max_step_s": max(s.seconds for s in steps),
        "forward_s": statistics.median(s.forward for s in steps),
        "backward_s": statistics.median(s.backward for s in steps),
        "optimizer_s": statistics.median(s.optimizer for s in steps),
        "samples_per_step": samples / len(steps),
        "tokens_per_sample": sum(s.tokens for s in steps) / samples,
        "samples_per_s": samples / seconds,
        "tokens_per_s": sum(s.tokens for s in steps) / seconds,
        "padding_share": padding_share(steps),
        "flops_per_sample": None if flops is None else flops / samples,
        "achieved_tflops": achieved,
        "mfu": None if achieved is None else achieved / peak_tflops,
        "trainable_params": trainable,
        "optimizer_state_bytes_per_rank": state_bytes,
        "peak_mem_bytes_per_rank": peak_mem_bytes,
        "projected_samples_per_s": projection.samples * projection.epochs / wall_s,
        "projected_wall_h": wall_s / 3600,
        "projected_gpu_hours": wall_s * projection.gpus / 3600,
        **extra,
    }


def padding_share(steps: list[StepTiming]) -> Optional[float]:
    """Share of the batches' token positions that were padding (computed but not data); None if not recorded."""
    positions = sum(s.positions for s in steps)
    return None if positions <= 0 else 1.0 - sum(s.tokens for s in steps) / positions


def schedule_average(rows: list[dict], schedule: Schedule, base: str, peak_tflops: float,
                     projection: Projection) -> dict:
    """The whole-run average of training `base` under a compression schedule.

    Each phase is the row `base@K/S` (or `base` for an uncompressed phase) and takes its fraction of the
    run's samples: time per sample, FLOPs per sample and GPU-hours average with those weights; peak memory
    is the largest phase's. Tokens per sample are the base's (same data, counted before pooling).
    """
    by_name = {r["variant"]: r for r in rows}
    phases = []
    for phase in schedule.phases:
        name = base if phase.layer is None else f"{base}@{phase.layer}/{phase.stride}"
        if name not in by_name:
            raise ValueError(f"the {schedule.name} schedule average needs the variant {name!r}")
        phases.append((phase.fraction, by_name[name]))
    ref = by_name[base]
    sec_per_sample = sum(f * 1 / r["samples_per_s"] for f, r in phases)
    flops = [r["flops_per_sample"] for _, r in phases]
    flops_per_sample = None if None in flops else sum(f * r["flops_per_sample"] for f, r in phases)
    wall_h = sum(f * r["projected_wall_h"] for f, r in phases)
    mems = [r["peak_mem_bytes_per_rank"] for _, r in phases]
    achieved = None if flops_per_sample is None else flops_per_sample / sec_per_sample / 1e12
    return {
        "variant": f"{base} + {schedule.name} (whole-run average)",
        "steps_timed": 0,
        "median_step_s": sum(f * r["median_step_s"] for f, r in phases),
        "min_step_s": None, "max_step_s": None,
        "forward_s": sum(f * r["forward_s"] for f, r in phases),
        "backward_s": sum(f * r["backward_s"] for f, r in phases),
        "optimizer_s": sum(f * r["optimizer_s"] for f, r in phases),
        "samples_per_step": ref["samples_per_step"],
        "tokens_per_sample": ref["tokens_per_sample"],
        "samples_per_s": 1 / sec_per_sample,
        "tokens_per_s": ref["tokens_per_sample"] / sec_per_sample,
        "padding_share": ref.get("padding_share"),  # same data in every phase, counted before pooling
        "flops_per_sample": flops_per_sample,
        "achieved_tflops": achieved,
        "mfu": None if achieved is None else achieved / peak_tflops,
        "trainable_params": ref["trainable_params"],
        "optimizer_state_bytes_per_rank": ref["optimizer_state_bytes_per_rank"],
        "peak_mem_bytes_per_rank": None if None in mems else max(mems),
        "projected_samples_per_s": projection.samples * projection.epochs / (wall_h * 3600),
        "projected_wall_h": wall_h,
        "projected_gpu_hours": wall_h * projection.gpus,
    }


def add_ratios(rows: list[dict]) -> list[dict]:
    """Ratios of every row to the first (the baseline: full fine-tuning in the default matrix)."""
    base = rows[0]

    def ratio(row: dict, key: str) -> Optional[float]:
        return None if row[key] is None or not base[key] else row[key] / base[key]

    for row in rows:
        row.update(step_time_ratio=ratio(row, "median_step_s"), tokens_per_s_ratio=ratio(row, "tokens_per_s"),
                   peak_mem_ratio=ratio(row, "peak_mem_bytes_per_rank"),
                   gpu_hours_ratio=ratio(row, "projected_gpu_hours"))
    return rows


def loss_check(reference: str, reference_loss: float, other: str, other_loss: float, fp32: bool) -> dict:
    """Two variants' first-step losses on the same weights and batch, which must agree: relative difference
    <= 1e-5 in fp32, 1e-2 in lower precision (`equal`)."""
    rel = abs(reference_loss - other_loss) / max(abs(other_loss), 1e-12)
    tolerance = 1e-5 if fp32 else 1e-2
    return {"variants": [reference, other], "losses": [reference_loss, other_loss], "relative_difference": rel,
            "tolerance": tolerance, "equal": rel <= tolerance}


def _loss_note(check: Optional[dict]) -> list[str]:
    if check is None:
        return []
    (a, b), (la, lb) = check["variants"], check["losses"]
    verdict = "equal" if check["equal"] else "DIFFERENT: the two rows do not train the same model on the same batch"
    return [f"- first-step loss (same weights, same batch): {a} {la:.6f}, {b} {lb:.6f}, relative difference "
            f"{check['relative_difference']:.1e} (tolerance {check['tolerance']:.0e}): {verdict}."]


def _x(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _num(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def format_table(rows: list[dict], meta: dict) -> str:
    """Markdown table (ratios to the first row beside each measure) and the notes needed to read it."""
    base, proj = rows[0]["variant"], meta["projection"]
    lines = [
        f"| variant | step s (median, min-max) | fwd / bwd / opt s | samples/s | tokens/s | vs {base} | padding | "
        f"TFLOP/s | MFU | trainable params | optimizer state / rank | peak mem / rank | vs {base} | "
        f"{proj['gpus']}-GPU wall h | GPU-hours | vs {base} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = "" if r["min_step_s"] is None else f" ({r['min_step_s']:.2f}-{r['max_step_s']:.2f})"
        mem = "-" if r["peak_mem_bytes_per_rank"] is None else f"{r['peak_mem_bytes_per_rank'] / GIB:.2f} GiB"
        lines.append(
            f"| {r['variant']} | {r['median_step_s']:.2f}{spread} | "
            f"{r['forward_s']:.2f} / {r['backward_s']:.2f} / {r['optimizer_s']:.2f} | {r['samples_per_s']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | {_x(r['tokens_per_s_ratio'])} | {_num(r.get('padding_share'), '{:.1%}')} | "
            f"{_num(r['achieved_tflops'], '{:.3f}')} | "
            f"{_num(r['mfu'], '{:.1%}')} | {r['trainable_params']:,} | "
            f"{r['optimizer_state_bytes_per_rank'] / MIB:,.1f} MiB | "
            f"{mem} | {_x(r['peak_mem_ratio'])} | {r['projected_wall_h']:,.1f} | {r['projected_gpu_hours']:,.1f} | "
            f"{_x(r['gpu_hours_ratio'])} |"
        )
    notes = [
        "",
        f"- device: {meta['device']}; {meta['rounds']} interleaved rounds x {meta['steps_per_round']} optimizer "
        f"steps per variant (after an untimed warm-up round); micro-batch {meta['micro_batch_size']} x "
        f"grad-accum {meta['grad_accum']}.",
        _load_note(meta),
        f"- MFU = achieved TFLOP/s / {meta['peak_tflops']:.3g} TFLOP/s ({meta['peak_source']}). Achieved counts "
        "the FLOPs each batch actually needed (plan.sample_flops: padded length, pooled layers, backward only "
        "where gradients flow, head on supervised positions).",
        f"- peak mem: {MEMORY_KINDS[meta['memory_kind']]}.",
        f"- per rank: optimizer state and peak mem are one rank's (of {meta.get('world_size', '?')}; ZeRO >= 1 "
        "splits the optimizer state over the ranks, ZeRO-3 the weights too); trainable params are the whole model's.",
        f"- projection: {proj['samples']:,} samples x {proj['epochs']:g} epoch, global batch "
        f"{proj['global_batch']}, {proj['gpus']} device(s) scaling linearly; the measured optimizer step is "
        "amortised over the global batch.",
        *[f"- {r['variant']}: {r['note']}." for r in rows if r.get("note")],
        *_loss_note(meta.get("loss_check")),
    ]
    return "\n".join(lines + notes)


def _load_note(meta: dict) -> str:
    """How busy other processes kept the machine: they distort absolute times most (see bench.probe.OtherLoad)."""
    cores = meta.get("other_processes_cores")
    if cores is None:
        return "- other processes' CPU use: unknown."
    note = f"- other processes kept {cores:.2f} of {meta['cpu_count']} CPU cores busy on average during the bench"
    if cores > 0.25:
        note += ("; absolute times are inflated and noisy (on CPU, torch's threads stall whenever one is "
                 "descheduled), and interleaving keeps only the ratios comparable")
    return note + "."


def plot(rows: list[dict], path: Path, baseline: str) -> Path:
    """Bar chart: tokens/s relative to the baseline, peak memory and projected GPU-hours per variant."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows][::-1]  # barh draws bottom-up; keep the table's order top-down
    panels = [("tokens/s vs " + baseline, [r["tokens_per_s_ratio"] for r in rows][::-1], "{:.2f}x"),
              ("peak memory per rank (GiB)", [None if r["peak_mem_bytes_per_rank"] is None
                                              else r["peak_mem_bytes_per_rank"] / GIB for r in rows][::-1], "{:.2f}"),
              ("projected GPU-hours", [r["projected_gpu_hours"] for r in rows][::-1], "{:,.0f}")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(rows) + 1.6), sharey=True)
    for ax, (title, values, fmt) in zip(axes, panels):
        shown = [0.0 if v is None else v for v in values]
        bars = ax.barh(names, shown, color=["#4c72b0" if v is not None else "#cccccc" for v in values])
        for bar, v in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " -" if v is None else " " + fmt.format(v),
                    va="center", fontsize=8)
        if title.startswith("tokens/s"):
            ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.margins(x=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rows: list[dict], meta: dict, out_dir: Path) -> dict[str, Path]:
    """bench.json ({"meta", "rows"}), bench.md (table + notes) and bench.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "md": out_dir / "bench.md", "png": out_dir / "bench.png"}
    paths["json"].write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    paths["md"].write_text(format_table(rows, meta) + "\n")
    plot(rows, paths["png"], rows[0]["variant"])
    return paths


def log_wandb(rows: list[dict], meta: dict, cfg: WandbConfig, out_dir: Path, png: Path) -> Optional[str]:
    """Log the table, the plot and per-variant summaries as one wandb run; WANDB_MODE in the environment
    wins over `run.wandb.mode` (as in training). Returns the run's local folder, or None when disabled."""
    mode = os.environ.get("WANDB_MODE", cfg.mode)
    if mode == "disabled":
        return None
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project=cfg.project, entity=cfg.entity, job_type="bench", name=f"bench-{out_dir.name}",
                     mode=mode, dir=str(out_dir), config=meta)
    keys = [k for k in rows[0] if all(isinstance(r.get(k), (int, float, str, type(None))) for r in rows)]
    run.log({"bench/table": wandb.Table(columns=keys, data=[[r.get(k) for k in keys] for r in rows]),
             "bench/plot": wandb.Image(str(png))})
    for r in rows:
        for key in ("tokens_per_s", "samples_per_s", "achieved_tflops", "mfu", "peak_mem_bytes_per_rank",
                    "projected_gpu_hours", "tokens_per_s_ratio"):
            run.summary[f"{r['variant']}/{key}"] = r[key]
    folder = run.dir
    run.finish()
    return folder

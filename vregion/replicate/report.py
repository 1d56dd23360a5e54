"""The replication report: markdown tables, the conclusions, a PNG plot and a JSON of every number.

Table cells are mean ± sample std over seeds (std only with >= 2 seeds); "% of full" cells are paired by seed.
The plot's error bars are ±1 standard error of the mean accuracy (seed spread and held-out sampling combined, see
`Row.accuracy_se`), so a single seed still shows how far the held-out set alone can move a point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from vregion.replicate import paper
from vregion.replicate.conclusions import Claim, Compressed, compression_stats, tally
from vregion.replicate.results import ALIGN, Row, RunResult, Stat
from vregion.replicate.variants import FULL, PROJECTOR


def _layers_cell(row: Row, num_layers: int) -> str:
    if row.count == num_layers:
        return f"{num_layers} (all)"
    if row.count == 0:
        return "0"
    return f"{row.count}: " + " / ".join(",".join(map(str, s)) for s in row.layer_sets)


def _minutes(stat: Stat) -> Stat:
    return Stat([v / 60 for v in stat.values])


def variant_table(rows: list[Row], num_layers: int) -> str:
    """One line per variant (stage 1 first): region, cost, held-out figures, % of full."""
    lines = ["| variant | layers tuned | trainable params | seeds | accuracy % | accuracy % of full | caption loss | "
             "caption loss % of full | text ppl before -> after | train time (min) | time % of full |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = "stage 1 only (projector align)" if r.variant == ALIGN else r.variant
        lines.append(
            f"| {name} | {_layers_cell(r, num_layers)} | {r.trainable_params:,} | {len(r.seeds)} | "
            f"{r.accuracy.fmt()} | {r.accuracy_pct.fmt()} | {r.caption_loss.fmt('.3f')} | {r.caption_pct.fmt()} | "
            f"{r.ppl_before.fmt('.2f')} -> {r.ppl_after.fmt('.2f')} | {_minutes(r.train_s).fmt('.1f')} | "
            f"{r.time_pct.fmt()} |")
    return "\n".join(lines)


def sweep_table(rows: list[Row], num_layers: int) -> str:
    """Uniform layer counts: ours as % of full next to the paper's nearest sweep point."""
    lines = [f"| layers tuned (of {num_layers}) | accuracy % of full | paper: layers (of {paper.REGION_DEPTH}) | "
             "paper % of full |", "|---|---|---|---|"]
    for r in sorted((r for r in rows if r.kind == "uniform"), key=lambda r: r.count):
        n, pct = paper.paper_sweep_point(r.count, num_layers)
        lines.append(f"| {r.count} | {r.accuracy_pct.fmt()} | {n} | {pct:.1f} |")
    return "\n".join(lines)


def compression_table(stats: list[Compressed], base: Row) -> str:
    """Each schedule on the best region against the same region uncompressed (paired by seed)."""
    lines = [f"| schedule (on {base.variant}) | seeds | accuracy % | vs none (points ± 1 s.e.) | "
             "caption loss % of none | train time (min) | time % of none |", "|---|---|---|---|---|---|---|",
             f"| none | {len(base.seeds)} | {base.accuracy.fmt()} | - | 100 | {_minutes(base.train_s).fmt('.1f')} "
             "| 100 |"]
    for c in stats:
        r = c.row
        lines.append(f"| {c.schedule} | {len(r.seeds)} | {r.accuracy.fmt()} | {c.accuracy.value:+.1f} ± "
                     f"{c.accuracy.noise / 2:.1f} | {c.caption_pct.fmt()} | {_minutes(r.train_s).fmt('.1f')} | "
                     f"{c.time_pct.fmt()} |")
    return "\n".join(lines)


def plot(rows: list[Row], num_layers: int, best: Optional[str], compressed: list[Compressed], out_file: Path) -> None:
    """Left: accuracy % of full vs layers tuned (uniform line, blocks / metric / projector markers, the paper's
    sweep); right: each compression schedule's time and accuracy relative to no compression."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_c) = plt.subplots(1, 2, figsize=(12, 4.5))
    full = next((r for r in rows if r.variant == FULL), None)
    scale = 100 / full.accuracy.mean if full and full.accuracy.mean else 0.0  # accuracy points -> % of full

    def points(group: list[Row]):
        group = [r for r in group if r.accuracy_pct.n]
        return ([r.count for r in group], [r.accuracy_pct.mean for r in group],
                [(r.accuracy_se() or 0.0) * scale for r in group])

    uniform = sorted((r for r in rows if r.kind == "uniform"), key=lambda r: r.count)
    x, y, e = points(uniform + ([full] if full else []))
    ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label="uniform (sparse)")
    styles = {"block": "s", "metric": "*", "other": "D", PROJECTOR: "v"}
    for i, r in enumerate(r for r in rows if r.kind in styles and r.accuracy_pct.n):
        jitter = 0.15 * (i % 3 - 1)  # blocks of the same size would hide each other
        ax.errorbar([r.count + jitter], [r.accuracy_pct.mean], yerr=[(r.accuracy_se() or 0.0) * scale],
                    marker=styles[r.kind], ms=9 if r.kind == "metric" else 7, ls="none", capsize=3, label=r.variant)
    ax.plot([n * num_layers / paper.REGION_DEPTH for n in paper.SWEEP_PCT], list(paper.SWEEP_PCT.values()),
            ls="--", color="grey", marker=".", label=f"paper ({paper.REGION_MODEL}, depth rescaled)")
    ax.axhline(100, color="black", lw=0.6)
    ax.set(xlabel=f"LLM layers tuned (of {num_layers})", ylabel="held-out accuracy, % of full tuning",
           title="Visual region: accuracy vs layers tuned (±1 s.e.)")
    ax.legend(fontsize=7)

    if best is not None and compressed:
        for c in compressed:
            x = c.time_pct.mean or 0.0
            ax_c.errorbar([x], [c.accuracy.value], yerr=[c.accuracy.noise / 2], marker="o", capsize=3)
            ax_c.annotate(c.schedule, (x, c.accuracy.value), fontsize=7, xytext=(4, 4), textcoords="offset points")
        for name, (saved, score) in paper.COMPRESS.items():
            ax_c.plot([100 - saved], [score], marker="x", color="grey")
            ax_c.annotate(f"paper {name}", (100 - saved, score), fontsize=6, color="grey", xytext=(4, -10),
                          textcoords="offset points")
        ax_c.axhline(0, color="black", lw=0.6)
        ax_c.axvline(100, color="black", lw=0.6)
        ax_c.set(xlabel=f"training time, % of {best} uncompressed", ylabel="accuracy vs uncompressed (points)",
                 title="Compression schedules (±1 s.e.)")
    else:
        ax_c.text(0.5, 0.5, "no compression runs yet", ha="center", va="center", transform=ax_c.transAxes)
        ax_c.set_axis_off()
    fig.tight_layout()
    fig.savefig(out_file, dpi=120)
    plt.close(fig)


def write_report(out: Path, rows: list[Row], runs: dict[str, dict[int, RunResult]], claims: list[Claim],
                 settings: dict, num_layers: int, best: Optional[str]) -> str:
    """replicate.md, replicate.json and replicate.png in `out`; returns the markdown."""
    by_name = {r.variant: r for r in rows}
    stage2 = [r for r in rows if r.kind != "compress"]
    compressed = compression_stats(by_name, runs, best) if best else []
    md = [f"# Visual-region replication: {settings['config']} ({num_layers} LLM layers)", "",
          f"Seeds {', '.join(map(str, settings['seeds']))}; stage 1 (projector align) {settings['align_steps']} steps, "
          f"stage 2 {settings['steps']} steps from the seed's stage-1 checkpoint; held-out: "
          f"{settings['vqa']} (accuracy, {settings['max_samples']} samples), {settings['captions']} (caption loss), "
          f"{settings['text']} (text perplexity).", "",
          "## Stage 2 variants", "", variant_table(stage2, num_layers), "",
          "Cells: mean ± sample std over seeds (std only with >= 2 seeds). % of full: paired by seed (same stage-1 "
          "checkpoint), then averaged; caption loss and time above 100% are worse. Text perplexity before = the "
          "seed's stage-1 checkpoint, whose LLM is untouched. Train time = summed optimizer-step times of the stage.",
          ""]
    if any(r.kind == "uniform" for r in stage2):
        md += ["## Layer-count sweep against the paper", "", sweep_table(stage2, num_layers), ""]
    if compressed:
        md += [f"## Compression schedules on the best region ({best})", "",
               compression_table(compressed, by_name[best]), "",
               "vs none: mean accuracy difference ± 1 s.e. (seed spread and held-out sampling combined); % of none "
               "paired by seed.", ""]
    none_yet = "No conclusions yet: they need finished `full` and uniform runs."
    md += ["## Conclusions", "", tally(claims) if claims else none_yet, "",
           *[c.markdown() for c in claims], "", "![accuracy vs layers tuned](replicate.png)", ""]
    text = "\n".join(md)
    (out / "replicate.md").write_text(text)
    (out / "replicate.json").write_text(json.dumps(
        {"settings": settings, "num_layers": num_layers, "best_region": best, "rows": [r.as_dict() for r in rows],
         "conclusions": [c.__dict__ for c in claims]}, indent=2))
    plot(stage2, num_layers, best, compressed, out / "replicate.png")
    return text

"""`vregion transfer-demo`: VPG transfer SmolLM2-135M -> Gemma3-270M against a projector trained from scratch.

Five real runs under one output folder, each a `vregion` subprocess started with `--resume`, so re-running the
command skips finished runs and continues a killed one:

  source        the demo's projector on SmolLM2-135M (`demo` config, projector only)
  scratch       a fresh projector on Gemma3-270M (`demo-transfer` as a plain training config)
  transfer      `vregion transfer demo-transfer`: converter init, 5x-lr projector warm-up, projector training
  no-converter  the same with `transfer.use_converter=false` (ablation: fresh last linear)
  scratch-5x-lr the transfer's schedule (5x-lr constant warm-up, then the normal lr) on a fresh projector:
                whether the speed-up comes from what is transferred or only from the warm-up's larger lr

Every Gemma3 run logs the held-out loss and Fashion-MNIST accuracy at step 0 and every `--eval-every` steps.
The report gives, per run, the optimizer steps and the training wall time (sum of logged step times, plus the
transfer init for transferred runs) to first reach the scratch run's final held-out loss and accuracy, as a
markdown table, JSON, and a PNG of both curves.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

SCRATCH, TRANSFER, ABLATION, CONTROL = "scratch", "transfer", "no-converter", "scratch-5x-lr"
TARGET_CONFIG = "demo-transfer"


@dataclass
class Point:
    """One held-out evaluation: optimizer steps so far (all stages), training seconds so far, quality."""

    step: int
    train_s: float
    eval_loss: float
    accuracy: Optional[float]


def read_curve(stage_dirs: list[Path], start_s: float = 0.0) -> list[Point]:
    """Held-out points of consecutive stages, with steps and step times accumulated across stages.

    A stage's step-0 evaluation repeats the previous stage's last one (the same weights) and is dropped.
    """
    points: list[Point] = []
    step_offset, seconds = 0, start_s
    for i, stage_dir in enumerate(stage_dirs):
        records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line]
        step_time = {r["step"]: r["step_time_s"] for r in records if "step_time_s" in r}
        last_step = 0
        for r in records:
            if "eval_loss" not in r or (i > 0 and r["step"] == 0):
                continue
            elapsed = seconds + sum(t for s, t in step_time.items() if s <= r["step"])
            points.append(Point(step_offset + r["step"], elapsed, r["eval_loss"], r.get("eval_vqa_accuracy")))
            last_step = max(last_step, r["step"])
        last_step = max([last_step, *step_time])
        step_offset += last_step
        seconds += sum(step_time.values())
    return points


def first_reaching(curve: list[Point], loss: float, accuracy: Optional[float]) -> dict:
    """The first point at or below `loss` and the first at or above `accuracy` (None: never reached)."""
    by_loss = next((p for p in curve if p.eval_loss <= loss), None)
    by_acc = None
    if accuracy is not None:
        by_acc = next((p for p in curve if p.accuracy is not None and p.accuracy >= accuracy), None)
    return {"loss": asdict(by_loss) if by_loss else None, "accuracy": asdict(by_acc) if by_acc else None}


def compare(curves: dict[str, list[Point]]) -> dict:
    """Steps and seconds of every run to the scratch run's final quality, and the ratios to scratch."""
    final = curves[SCRATCH][-1]
    # An accuracy the scratch run never rose above (0%) is reached by everything at step 0: no target.
    accuracy = final.accuracy if final.accuracy else None
    out = {"target": {"eval_loss": final.eval_loss, "accuracy": accuracy, "scratch_steps": final.step},
           "runs": {}}
    base = first_reaching(curves[SCRATCH], final.eval_loss, accuracy)
    for name, curve in curves.items():
        reach = first_reaching(curve, final.eval_loss, accuracy)
        row = {"final": asdict(curve[-1]), "reach": reach}
        for metric in ("loss", "accuracy"):
            if reach[metric] and base[metric]:
                steps = reach[metric]["step"]
                row[f"{metric}_step_ratio"] = base[metric]["step"] / steps if steps else float("inf")
                row[f"{metric}_time_ratio"] = base[metric]["train_s"] / max(reach[metric]["train_s"], 1e-9)
        out["runs"][name] = row
    return out


def format_table(result: dict) -> str:
    """Markdown: per run, steps / training minutes to the scratch run's final loss and accuracy."""
    t = result["target"]
    acc = "0% (no accuracy target)" if t["accuracy"] is None else f"{t['accuracy']:.0%}"
    lines = [f"Target: the scratch run's final held-out loss {t['eval_loss']:.3f} and Fashion-MNIST accuracy "
             f"{acc} (after {t['scratch_steps']} steps).", "",
             "| run | steps to loss | train time to loss | steps to accuracy | train time to accuracy | "
             "final loss | final accuracy |",
             "|---|---|---|---|---|---|---|"]

    def cell(row: dict, metric: str) -> tuple[str, str]:
        reach = row["reach"][metric]
        if metric == "accuracy" and result["target"]["accuracy"] is None:
            return "-", "-"
        if reach is None:
            return "not reached", "-"
        ratio = row.get(f"{metric}_step_ratio")
        time_ratio = row.get(f"{metric}_time_ratio")
        steps = f"{reach['step']}" + (f" ({ratio:.1f}x fewer)" if ratio and ratio != 1 else "")
        secs = f"{reach['train_s'] / 60:.1f} min" + (f" ({time_ratio:.1f}x)" if time_ratio and time_ratio != 1 else "")
        return steps, secs

    for name, row in result["runs"].items():
        (ls, lt), (as_, at) = cell(row, "loss"), cell(row, "accuracy")
        fin = row["final"]
        fin_acc = "-" if fin["accuracy"] is None else f"{fin['accuracy']:.0%}"
        lines.append(f"| {name} | {ls} | {lt} | {as_} | {at} | {fin['eval_loss']:.3f} | {fin_acc} |")
    return "\n".join(lines)


def plot(curves: dict[str, list[Point]], out_file: Path) -> None:
    """Held-out loss and accuracy against optimizer steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, curve in curves.items():
        steps = [p.step for p in curve]
        ax_loss.plot(steps, [p.eval_loss for p in curve], marker="o", ms=3, label=name)
        if any(p.accuracy is not None for p in curve):
            ax_acc.plot(steps, [100 * (p.accuracy or 0.0) for p in curve], marker="o", ms=3, label=name)
    final = curves[SCRATCH][-1]
    ax_loss.axhline(final.eval_loss, color="grey", ls="--", lw=0.8)
    if final.accuracy is not None:
        ax_acc.axhline(100 * final.accuracy, color="grey", ls="--", lw=0.8)
    ax_loss.set(xlabel="optimizer step", ylabel="held-out answer loss", yscale="log",
                title="Gemma3-270M projector: held-out loss")
    ax_acc.set(xlabel="optimizer step", ylabel="Fashion-MNIST accuracy (%)", title="held-out accuracy")
    ax_loss.legend()
    fig.tight_layout()
    fig.savefig(out_file, dpi=120)
    plt.close(fig)


def control_stages(warmup_steps: int) -> list[dict]:
    """The transferred runs' stages exactly as `vregion transfer` makes them (`transfer_config`: the 5x-lr
    constant warm-up, then the config's own training), to train a fresh projector with: no init_from is kept."""
    from vregion.config import load_config, resolve_config_path
    from vregion.transfer.plan import transfer_config

    cfg = load_config(resolve_config_path(TARGET_CONFIG), [f"transfer.warmup_steps={warmup_steps}"])
    return transfer_config(cfg, init_dir="unused").stages


def _run(run_dir: Path, args: list[str], done: Path) -> None:
    """One `vregion` subprocess writing `run_dir`, with `--resume`, skipped when its last stage's summary exists.
    Once it has finished, its resumable DeepSpeed state is deleted: the report reads metrics only, the transfers
    read the source's final/, and on the frozen Gemma3 that state is ~1 GB per stage (~20 GB for the demo)."""
    from vregion.subprocess_runs import drop_resumable_state, vregion

    vregion([*args, f"run.output_dir={run_dir}", "--resume"], done, label=str(done.parent), tag="transfer-demo")
    if done.exists():
        drop_resumable_state(run_dir)


def run_demo(out: Path, source_steps: int, scratch_steps: int, transfer_steps: int, warmup_steps: int,
             eval_every: int, transfer_eval_every: int, seed: int = 0) -> dict:
    """Train the five runs (or reuse them), then write transfer-demo.{md,json,png} into `out`.

    `seed` (run.seed of every run: data order and projector initialisation) repeats the comparison on other
    draws; the held-out questions stay the same.
    """
    out = out.resolve()
    source = out / "source"
    seeded = [f"run.seed={seed}"]
    _run(source, ["train", "demo", "stages=[]", "region.strategy=none", "optim.lr=1e-3",
                  f"train.max_steps={source_steps}", "eval.before_after=false", *seeded], source / "summary.json")
    common = [f"transfer.source={source / 'final'}", f"transfer.warmup_steps={warmup_steps}",
              f"train.max_steps={transfer_steps}", f"train.eval_every={transfer_eval_every}", *seeded]
    _run(out / SCRATCH, ["train", TARGET_CONFIG, f"train.max_steps={scratch_steps}", f"train.eval_every={eval_every}",
                         *seeded], out / SCRATCH / "summary.json")
    _run(out / TRANSFER, ["transfer", TARGET_CONFIG, *common], out / TRANSFER / "train" / "summary.json")
    _run(out / ABLATION, ["transfer", TARGET_CONFIG, "transfer.use_converter=false", *common],
         out / ABLATION / "train" / "summary.json")
    control = f"stages={json.dumps(control_stages(warmup_steps))}"
    _run(out / CONTROL, ["train", TARGET_CONFIG, control, f"train.max_steps={transfer_steps}",
                         f"train.eval_every={transfer_eval_every}", *seeded], out / CONTROL / "train" / "summary.json")

    curves = {SCRATCH: read_curve([out / SCRATCH])}
    for name in (TRANSFER, ABLATION):
        init = json.loads((out / name / "transfer-init" / "transfer.json").read_text())
        curves[name] = read_curve([out / name / "warmup", out / name / "train"], start_s=init["init_wall_s"])
    curves[CONTROL] = read_curve([out / CONTROL / "warmup", out / CONTROL / "train"])
    result = compare(curves)
    result["transfer_init"] = json.loads((out / TRANSFER / "transfer-init" / "transfer.json").read_text())
    result["curves"] = {name: [asdict(p) for p in curve] for name, curve in curves.items()}
    table = format_table(result)
    (out / "transfer-demo.md").write_text(table + "\n")
    (out / "transfer-demo.json").write_text(json.dumps(result, indent=2))
    plot(curves, out / "transfer-demo.png")
    print(table)
    print(f"wrote {out / 'transfer-demo.md'}, .json and .png")
    return result

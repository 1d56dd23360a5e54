"""`vregion replicate`: the visual-region paper's experiments on one config, as real `vregion` runs, then a report.

Layout of `--out` (every run is a `vregion` subprocess; a finished one is skipped, a killed one resumes):
  configs/align.yaml, configs/region.yaml   the config's first and last stage, resolved (stage 2 with --steps)
  text/passages.txt                         the text-perplexity passages (`vregion.replicate.passages`)
  seed-S/align/                             stage 1: projector only, from the pretrained parts (+ eval.json)
  seed-S/analysis[-full]/layers.json        `vregion analyze` scores for metric-ranked variants
  seed-S/<variant>/                         stage 2 from seed-S/align/final (+ eval.json)
  seed-S/<best>+<preset>/                   the best region under each compression schedule
  best_region.json                          the region the schedules ran on (chosen once, kept on re-runs)
  replicate.md / .json / .png               the report
A finished run keeps summary.json, metrics.jsonl, final/ (with --drop-finals only stage 1's and full's) and eval.json;
its resumable checkpoints/ are deleted (summary.json marks it done).
Order: per seed, stage 1, its evaluation, the analysis, then each variant trained and evaluated; then the best
region (highest mean accuracy among rule/metric regions no larger than the config's region size; ties: lower
caption loss, fewer layers) under each schedule, for every seed; then the report.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from vregion.compress.schedule import PRESETS
from vregion.config import ConfigError, resolve_config_path, to_dict
from vregion.validate import load_and_validate
from vregion.region.select import resolve_count
from vregion.replicate.conclusions import conclusions
from vregion.replicate.passages import write_passages
from vregion.replicate.report import write_report
from vregion.replicate.results import ALIGN, EVAL_FILE, Row, build_rows, collect, num_layers_of
from vregion.replicate.variants import DEFAULT_VARIANTS, FULL, RegionVariant, compressed, parse_variant, parse_variants
from vregion.subprocess_runs import drop_resumable_state, vregion

ANALYZE_SAMPLES = 128  # calibration samples for `vregion analyze` (hidden-state metrics are token averages)
SETTINGS_FILE, BEST_FILE = "settings.json", "best_region.json"
REGION_KINDS = ("uniform", "block", "metric", "other")


@dataclass
class Plan:
    """Where everything goes and how every run is evaluated (fixed for one output folder)."""

    out: Path
    align_config: Path
    region_config: Path
    synthetic: bool  # the config generates its shards per run (tiny): eval/calibration sets come from the run
    vqa: Optional[str]
    captions: Optional[str]
    calibration: Optional[str]
    text: Path
    max_samples: int
    batch_size: int
    max_new_tokens: int
    region_count_fraction: tuple  # (count, fraction) of the config's region: the size "best" is chosen within
    drop_finals: bool = False  # delete a stage-2 model once evaluated (not full's, nor stage 1's: later runs need them)

    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed-{seed}"

    def sets(self, seed: int) -> tuple[Optional[str], Optional[str], Optional[str]]:
        """(VQA, caption, calibration) shards; a synthetic config's come from the seed's stage-1 run folder."""
        if not self.synthetic:
            return self.vqa, self.captions, self.calibration
        data = self.seed_dir(seed) / ALIGN / "data"
        return (self.vqa or str(data / "eval"), self.captions or str(data / "eval"),
                self.calibration or str(data / "train"))


def _stage_dict(stage, steps: Optional[int]) -> dict:
    """A resolved stage as a plain single-stage config: no `stages`, no before/after eval (`vregion eval` does it)."""
    d = to_dict(stage)
    d["stages"] = []
    d["eval"]["before_after"] = False
    if steps is not None:
        d["train"]["max_steps"] = steps
    return d


def prepare(out: Path, config: str, overrides: list[str], steps: Optional[int], align_steps: Optional[int],
            max_samples: Optional[int], text: Optional[str]) -> Plan:
    """Write the stage configs and the passage file, and check `out` holds no replication with other settings."""
    from vregion.assets import resolve_asset

    cfg = load_and_validate(resolve_config_path(config), overrides)
    stages = cfg.stage_configs()
    if len(stages) < 2:
        raise ConfigError(f"{config}: replicate needs an align stage and a region stage (like configs/demo.yaml)")
    align, region = _stage_dict(stages[0], align_steps), _stage_dict(stages[-1], steps)
    settings = {"config": config, "overrides": overrides, "align": align, "region": region,
                "max_samples": max_samples or region["eval"]["max_samples"], "text": text}
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out / SETTINGS_FILE, settings)
    (out / "configs").mkdir(exist_ok=True)
    for name, d in (("align", align), ("region", region)):
        (out / "configs" / f"{name}.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    passages = Path(text) if text else out / "text" / "passages.txt"
    if not text and not passages.exists():
        write_passages(passages)
    stage2 = stages[-1]
    return Plan(
        out=out, align_config=out / "configs" / "align.yaml", region_config=out / "configs" / "region.yaml",
        synthetic=stage2.data.synthetic.num_train > 0, vqa=resolve_asset(stage2.eval.vqa_shards),
        captions=resolve_asset(stage2.eval.caption_shards), calibration=resolve_asset(stage2.data.train_shards),
        text=passages.resolve(), max_samples=settings["max_samples"], batch_size=stage2.eval.batch_size,
        max_new_tokens=stage2.eval.max_new_tokens, region_count_fraction=(stage2.region.count, stage2.region.fraction))


def _check_settings(path: Path, settings: dict) -> None:
    """Refuse to mix runs of different settings in one folder (adding seeds or variants is fine)."""
    if not path.exists():
        path.write_text(json.dumps(settings, indent=2))
        return
    saved = json.loads(path.read_text())
    changed = sorted(k for k in settings if saved.get(k) != settings[k])
    if changed:
        raise ConfigError(f"{path.parent} holds a replication with other settings ({', '.join(changed)} differ); "
                          "use another --out, or the same config, overrides, --steps, --align-steps, --max-samples "
                          "and --text")


def train(config: Path, run_dir: Path, seed: int, overrides: list[str], label: str) -> None:
    """Train (or resume, or skip) one run; a finished run's resumable DeepSpeed state is deleted, since summary.json
    marks it done and only final/ is used later (at demo size that state is 1-3 GB per run, 40 runs)."""
    vregion(["train", str(config), f"run.output_dir={run_dir}", f"run.seed={seed}", *overrides, "--resume"],
            run_dir / "summary.json", label)
    if (run_dir / "summary.json").exists():
        drop_resumable_state(run_dir)


def evaluate(plan: Plan, run_dir: Path, seed: int, label: str) -> None:
    vqa, captions, _ = plan.sets(seed)
    args = ["eval", str(run_dir / "final"), "--text", str(plan.text), "--max-samples", str(plan.max_samples),
            "--batch-size", str(plan.batch_size), "--max-new-tokens", str(plan.max_new_tokens),
            "--out", str(run_dir / EVAL_FILE)]
    args += ["--vqa", vqa] if vqa else []
    args += ["--captions", captions] if captions else []
    vregion(args, run_dir / EVAL_FILE, f"eval {label}")


def scores_for(plan: Plan, variant: RegionVariant, seed: int) -> Optional[Path]:
    """layers.json a metric variant ranks by, computed on first use: hidden-state metrics of the stage-1
    checkpoint, or parameter change of the seed's full-tuning run against it."""
    if variant.strategy != "metric":
        return None
    seed_dir = plan.seed_dir(seed)
    _, _, calibration = plan.sets(seed)
    align_final = str(seed_dir / ALIGN / "final")
    if variant.needs_param_scores:
        out = seed_dir / "analysis-full"
        args = ["analyze", str(seed_dir / FULL / "final"), "--base", align_final]
    else:
        out = seed_dir / "analysis"
        args = ["analyze", align_final]
    vregion(args + ["--data", calibration, "--out", str(out), "--max-samples", str(ANALYZE_SAMPLES)],
            out / "layers.json", f"seed {seed} layer analysis ({out.name})")
    return out / "layers.json"


def run_variant(plan: Plan, variant: RegionVariant, seed: int) -> None:
    seed_dir = plan.seed_dir(seed)
    overrides = [f"model.init_from={seed_dir / ALIGN / 'final'}", *variant.overrides(scores_for(plan, variant, seed))]
    label = f"seed {seed} {variant.name}"
    train(plan.region_config, seed_dir / variant.name, seed, overrides, label)
    evaluate(plan, seed_dir / variant.name, seed, label)
    if plan.drop_finals and variant.name != FULL:  # full/final feeds the parameter-change analysis
        shutil.rmtree(seed_dir / variant.name / "final", ignore_errors=True)


def run_seed(plan: Plan, seed: int, variants: list[RegionVariant]) -> None:
    """Stage 1 and every stage-2 variant of one seed (parameter-metric variants after `full`, which they need)."""
    align = plan.seed_dir(seed) / ALIGN
    train(plan.align_config, align, seed, [], f"seed {seed} stage 1 (align)")
    evaluate(plan, align, seed, f"seed {seed} stage 1 (align)")
    for variant in sorted(variants, key=lambda v: v.needs_param_scores):
        run_variant(plan, variant, seed)


def choose_best(rows: dict[str, Row], region_count: int, out: Path, forced: Optional[str],
                persist: bool = True) -> Optional[str]:
    """The region the schedules run on: `forced`, else the one saved earlier, else the best finished candidate
    (saved to best_region.json when `persist`, so later re-runs with more results keep the same region)."""
    path = out / BEST_FILE
    if forced is None and path.exists():
        return json.loads(path.read_text())["variant"]
    candidates = {n: r for n, r in rows.items() if r.kind in REGION_KINDS and 0 < r.count <= region_count
                  and r.accuracy.n}
    if forced is not None:
        best = parse_variant(forced).name
    elif candidates:
        best = max(candidates.values(), key=lambda r: (r.accuracy.mean, -(r.caption_loss.mean or 0.0), -r.count)
                   ).variant
    else:
        return None
    if persist:
        path.write_text(json.dumps({"variant": best, "forced": forced is not None, "region_count": region_count,
                                    "candidates": {n: r.accuracy.mean for n, r in candidates.items()}}, indent=2))
    return best


def report(plan: Plan, order: list[str], best: Optional[str]) -> str:
    """Aggregate every finished run under plan.out and write the report; returns the markdown."""
    runs = collect(plan.out)
    if ALIGN not in runs:
        raise RuntimeError(f"no finished stage-1 run under {plan.out} yet: nothing to report")
    num_layers = num_layers_of(plan.seed_dir(min(runs[ALIGN])) / ALIGN / "final")
    region_count = resolve_count(num_layers, *plan.region_count_fraction)
    rows = build_rows(runs, order)
    claims = conclusions(rows, runs, num_layers, region_count, best)
    settings = json.loads((plan.out / SETTINGS_FILE).read_text())
    vqa, captions, _ = plan.sets(min(runs[ALIGN]))
    info = {"config": settings["config"], "seeds": sorted({s for r in runs.values() for s in r}),
            "align_steps": settings["align"]["train"]["max_steps"], "steps": settings["region"]["train"]["max_steps"],
            "vqa": vqa, "captions": captions, "text": str(plan.text), "max_samples": plan.max_samples}
    text = write_report(plan.out, list(rows.values()), runs, claims, info, num_layers, best)
    print(text, flush=True)
    print(f"[replicate] wrote {plan.out / 'replicate.md'}, .json and .png", flush=True)
    return text


def run_replication(out: str | Path, config: str = "demo", overrides: Optional[list[str]] = None,
                    seeds: tuple[int, ...] = (0, 1), steps: Optional[int] = None, align_steps: Optional[int] = None,
                    variants: Optional[list[str]] = None, schedules: Optional[list[str]] = None,
                    max_samples: Optional[int] = None, text: Optional[str] = None, best: Optional[str] = None,
                    report_only: bool = False, drop_finals: bool = False) -> str:
    """Run (or continue) the replication in `out` and write its report; returns the report markdown.

    Args:
        config: shipped config name or YAML path with an align stage first and the region stage last.
        overrides: dotted overrides applied to the config before its stages are resolved.
        seeds: every run is repeated per seed (run.seed), each seed with its own stage-1 checkpoint.
        steps / align_steps: optimizer steps of stage 2 / stage 1 (default: the config's).
        variants: stage-2 variant names (see `vregion.replicate.variants`; default DEFAULT_VARIANTS).
        schedules: compression presets run on the best region ([] for none; default every preset).
        max_samples: held-out samples per set (default the config's eval.max_samples).
        text: passage file for text perplexity (default: Debian licence paragraphs).
        best: the region the schedules run on (default: chosen from the results, see the module docstring).
        report_only: run nothing, report what has finished.
        drop_finals: delete each stage-2 model (final/) once evaluated, to save disk (~0.55 GB each on the demo).
    """
    try:
        chosen = parse_variants(list(variants or DEFAULT_VARIANTS))
        if best is not None:
            parse_variant(best)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    unknown = [p for p in schedules or [] if p not in PRESETS]
    if unknown:
        raise ConfigError(f"unknown compression presets {unknown}; valid: {', '.join(PRESETS)}")
    presets = list(PRESETS) if schedules is None else schedules
    out = Path(out).resolve()
    saved = out / SETTINGS_FILE
    if report_only and saved.exists():  # report with the folder's own settings, whatever the flags say
        s = json.loads(saved.read_text())
        config, overrides, max_samples, text = s["config"], s["overrides"], s["max_samples"], s["text"]
        steps, align_steps = s["region"]["train"]["max_steps"], s["align"]["train"]["max_steps"]
    plan = prepare(out, config, list(overrides or []), steps, align_steps, max_samples, text)
    plan.drop_finals = drop_finals
    order = [v.name for v in chosen]
    if not report_only:
        for seed in seeds:
            run_seed(plan, seed, chosen)
    runs = collect(plan.out)
    best_name = None
    if presets and FULL in runs and ALIGN in runs:
        num_layers = num_layers_of(plan.seed_dir(min(runs[ALIGN])) / ALIGN / "final")
        rows = build_rows(runs, order)
        best_name = choose_best(rows, resolve_count(num_layers, *plan.region_count_fraction), plan.out, best,
                                persist=not report_only)
        if best_name is not None and not report_only:
            for seed in seeds:
                for variant in compressed(parse_variant(best_name), presets):
                    run_variant(plan, variant, seed)
        order += [v.name for v in compressed(parse_variant(best_name), presets)] if best_name else []
    elif (plan.out / BEST_FILE).exists():
        best_name = json.loads((plan.out / BEST_FILE).read_text())["variant"]
    return report(plan, order, best_name)

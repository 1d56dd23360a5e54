"""Replication results: one run's figures read from the files `vregion train` and `vregion eval` write, and their
aggregation over seeds into table rows (mean, sample std, paired % of full tuning).

Run folders are <out>/seed-S/<variant>/ (stage 1: <out>/seed-S/align/), finished when eval.json is written.

Percentages of full are paired by seed (variant and full of the same seed share the stage-1 checkpoint and the
data order), averaged over the seeds where both exist. A Stat's std is the sample std (n - 1) and exists only
with >= 2 values: one seed gives no error bar rather than a fake one.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from vregion.replicate.variants import FULL, parse_variant

ALIGN = "align"
EVAL_FILE = "eval.json"


@dataclass
class RunResult:
    """One finished run (a variant at a seed): its region, cost and held-out figures."""

    variant: str
    seed: int
    layers: list[int]
    trainable_params: int
    steps: int
    train_s: float  # optimizer-step time of the stage (sum of logged step times; survives --resume)
    accuracy: Optional[float]  # held-out VQA exact match, 0..1
    eval_samples: int  # VQA questions scored
    caption_loss: Optional[float]
    text_ppl: Optional[float]


def train_time(run_dir: Path, summary: dict) -> float:
    """Seconds of optimizer steps: the logged step times (summed across a resume), else the summary's wall time.

    With log_every > 1 only some steps carry a time, so the mean logged step time is scaled to all steps.
    """
    times = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        times = [r["step_time_s"] for r in map(json.loads, metrics.read_text().splitlines()) if "step_time_s" in r]
    if not times:
        return float(summary["wall_time_s"])
    steps = int(summary["steps"])
    return sum(times) if len(times) == steps else statistics.fmean(times) * steps


def read_run(run_dir: str | Path, variant: str, seed: int) -> Optional[RunResult]:
    """The run's figures, or None while its summary.json or eval.json is missing (not finished yet)."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists() or not (run_dir / EVAL_FILE).exists():
        return None
    summary = json.loads((run_dir / "summary.json").read_text())
    ev = json.loads((run_dir / EVAL_FILE).read_text())
    vqa = ev.get("vqa") or {}
    return RunResult(
        variant=variant, seed=seed, layers=list(summary["region_layers"]),
        trainable_params=int(summary["trainable_params"]), steps=int(summary["steps"]),
        train_s=train_time(run_dir, summary),
        accuracy=vqa.get("accuracy"), eval_samples=int(vqa.get("samples", 0)),
        caption_loss=(ev.get("caption") or {}).get("loss"), text_ppl=(ev.get("text") or {}).get("perplexity"),
    )


@dataclass
class Stat:
    """Values over seeds: mean, and the sample std only when there are two or more."""

    values: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if self.n >= 2 else None

    def fmt(self, spec: str = ".1f", suffix: str = "") -> str:
        """"77.0 ± 2.1" (>= 2 values), "77.0" (one), "-" (none)."""
        if not self.values:
            return "-"
        text = f"{self.mean:{spec}}"
        if self.std is not None:
            text += f" ± {self.std:{spec}}"
        return text + suffix

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": self.values}


def _stat(values) -> Stat:
    return Stat([float(v) for v in values if v is not None and math.isfinite(v)])


def paired(runs: dict[int, RunResult], base: dict[int, RunResult], fn: Callable[[RunResult, RunResult], Optional[float]]
           ) -> Stat:
    """fn(run, base run) over the seeds both have (None results, e.g. a zero denominator, are left out)."""
    return _stat(fn(runs[s], base[s]) for s in sorted(runs) if s in base)


def pct_of(attr: str) -> Callable[[RunResult, RunResult], Optional[float]]:
    """fn for `paired`: 100 * run.attr / base.attr (None on a zero or missing base)."""
    def fn(run: RunResult, base: RunResult) -> Optional[float]:
        a, b = getattr(run, attr), getattr(base, attr)
        return None if a is None or not b else 100.0 * a / b
    return fn


def points_over(attr: str) -> Callable[[RunResult, RunResult], Optional[float]]:
    """fn for `paired`: 100 * (run.attr - base.attr), percentage points of a 0..1 field."""
    def fn(run: RunResult, base: RunResult) -> Optional[float]:
        a, b = getattr(run, attr), getattr(base, attr)
        return None if a is None or b is None else 100.0 * (a - b)
    return fn


@dataclass
class Row:
    """One variant over its seeds: the report table's row."""

    variant: str
    kind: str
    seeds: list[int]
    layer_sets: list[list[int]]  # distinct regions over seeds (metric regions may differ per seed)
    trainable_params: int
    eval_samples: int
    accuracy: Stat  # held-out accuracy in %
    accuracy_pct: Stat  # % of full's accuracy
    caption_loss: Stat
    caption_pct: Stat  # % of full's caption loss (above 100: worse)
    ppl_before: Stat  # text perplexity of the seed's stage-1 checkpoint (the LLM untouched)
    ppl_after: Stat
    train_s: Stat
    time_pct: Stat  # % of full's training time

    @property
    def count(self) -> int:
        return len(self.layer_sets[0]) if self.layer_sets else 0

    def accuracy_se(self) -> Optional[float]:
        """Standard error of the mean accuracy, in points: the seed spread (>= 2 seeds) and the binomial
        sampling error of the held-out questions (every seed scores the same questions), combined."""
        p = self.accuracy.mean
        if p is None or not self.eval_samples:
            return None
        n = self.accuracy.n
        questions = self.eval_samples * n
        q = (p / 100 * questions + 0.5) / (questions + 1)  # shrunk off 0 and 1, where p(1-p) would claim no error
        binomial = q * (1 - q) / questions * 100 ** 2
        seeds = self.accuracy.std ** 2 / n if self.accuracy.std is not None else 0.0
        return math.sqrt(binomial + seeds)

    def as_dict(self) -> dict:
        out = {"variant": self.variant, "kind": self.kind, "seeds": self.seeds, "layers": self.layer_sets,
               "count": self.count, "trainable_params": self.trainable_params, "eval_samples": self.eval_samples,
               "accuracy_se": self.accuracy_se()}
        for name in ("accuracy", "accuracy_pct", "caption_loss", "caption_pct", "ppl_before", "ppl_after",
                     "train_s", "time_pct"):
            out[name] = getattr(self, name).as_dict()
        return out


def build_row(variant: str, kind: str, runs: dict[int, RunResult], full: dict[int, RunResult],
              align: dict[int, RunResult]) -> Row:
    """Aggregate one variant's runs (seed -> result); `full` and `align` are the baseline runs by seed."""
    seeds = sorted(runs)
    sets: list[list[int]] = []
    for s in seeds:
        if runs[s].layers not in sets:
            sets.append(runs[s].layers)
    first = runs[seeds[0]]
    return Row(
        variant=variant, kind=kind, seeds=seeds, layer_sets=sets, trainable_params=first.trainable_params,
        eval_samples=first.eval_samples,
        accuracy=_stat(None if r.accuracy is None else 100.0 * r.accuracy for r in runs.values()),
        accuracy_pct=paired(runs, full, pct_of("accuracy")),
        caption_loss=_stat(r.caption_loss for r in runs.values()),
        caption_pct=paired(runs, full, pct_of("caption_loss")),
        ppl_before=_stat(align[s].text_ppl for s in seeds if s in align),
        ppl_after=_stat(r.text_ppl for r in runs.values()),
        train_s=_stat(r.train_s for r in runs.values()),
        # Stage 1 runs its own step count, so its time is no share of stage 2's.
        time_pct=Stat() if variant == ALIGN else paired(runs, full, pct_of("train_s")),
    )


def collect(out: Path) -> dict[str, dict[int, RunResult]]:
    """Every finished run under `out`: variant (or 'align') -> seed -> result."""
    runs: dict[str, dict[int, RunResult]] = {}
    for seed_dir in sorted(out.glob("seed-*")):
        seed = int(seed_dir.name.split("-", 1)[1])
        for run_dir in sorted(p for p in seed_dir.iterdir() if (p / EVAL_FILE).exists()):
            result = read_run(run_dir, run_dir.name, seed)
            if result is not None:
                runs.setdefault(run_dir.name, {})[seed] = result
    return runs


def kind_of(name: str) -> str:
    """Row kind: 'align', 'compress' (a region under a schedule), or the variant's own kind."""
    if name == ALIGN:
        return ALIGN
    v = parse_variant(name)
    return "compress" if v.schedule else v.kind


def build_rows(runs: dict[str, dict[int, RunResult]], order: list[str]) -> dict[str, Row]:
    """Rows in report order: stage 1, the requested variants, then any other finished ones."""
    names = [ALIGN] + [n for n in order if n != ALIGN] + sorted(n for n in runs if n not in order and n != ALIGN)
    return {n: build_row(n, kind_of(n), runs[n], runs.get(FULL, {}), runs.get(ALIGN, {})) for n in names if n in runs}


def num_layers_of(checkpoint: Path) -> int:
    """Decoder depth of a vregion checkpoint, from its LLM's layer keys (no weights are read)."""
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        indices = [int(m.group(1)) for k in f.keys() if (m := re.match(r"llm\.(?:.+\.)?layers\.(\d+)\.", k))]
    return max(indices) + 1

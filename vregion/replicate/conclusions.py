"""Conclusions of the replication: each published claim set against the measured numbers, with a plain verdict.

Every sentence is computed from the rows; nothing but the papers' figures (`vregion.replicate.paper`) is fixed.
A difference counts only when it exceeds its noise, twice its standard error (accuracy: the seed spread when
there are >= 2 seeds plus the binomial sampling error of the held-out questions; time and perplexity: the seed
spread, so a single seed gives them no error bar and says so). Verdicts:
  agrees        the measured effect has the paper's direction (or retention) beyond the noise
  disagrees     it has the opposite direction (or falls short of the paper's retention) beyond the noise
  inconclusive  the difference is within the noise: this run neither confirms nor contradicts the claim
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from vregion.replicate import paper
from vregion.replicate.results import Row, RunResult, Stat, build_row, paired, pct_of
from vregion.replicate.variants import FULL, PROJECTOR, parse_variant

AGREES, DISAGREES, INCONCLUSIVE, CONTEXT = "agrees", "disagrees", "inconclusive", "context"
# Text perplexity counts as "kept" within this rise, %: ~0.02 nats per token, a small fraction of what stage-2
# tuning moves it on the demo (full tuning: -2.7%), like a benchmark point or two for the paper's "kept".
KEPT_PPL_RISE_PCT = 2.0


@dataclass
class Claim:
    topic: str
    verdict: str
    text: str

    def markdown(self) -> str:
        head = self.topic if self.verdict == CONTEXT else f"{self.topic}: {self.verdict}"
        return f"- **{head}.** {self.text}"


@dataclass
class Diff:
    """a - b and its noise (2 standard errors; 0 when unknown)."""

    value: float
    noise: float
    measured_noise: bool = True

    def within_noise(self) -> bool:
        """True when the difference cannot be told from noise, and always when there is no noise estimate (one
        seed): a 1% timing difference on one run says nothing about its sign."""
        return not self.measured_noise or abs(self.value) <= self.noise

    def verdict(self, expected_positive: bool) -> str:
        if self.within_noise():
            return INCONCLUSIVE
        return AGREES if (self.value > 0) == expected_positive else DISAGREES

    def noise_text(self, unit: str = " points") -> str:
        if not self.measured_noise:
            return "one seed: no error bar"
        return f"noise ±{self.noise:.1f}{unit}, 2 s.e."


def accuracy_diff(a: Row, b: Row) -> Diff:
    """Mean accuracy a - b in points, noise from both rows' standard errors."""
    return Diff(a.accuracy.mean - b.accuracy.mean, 2 * math.hypot(a.accuracy_se() or 0.0, b.accuracy_se() or 0.0))


def seed_diff(a: Stat, b: Stat) -> Diff:
    """Mean a - b; noise from the seed spreads (unknown, and reported so, when either has a single value)."""
    if a.std is None or b.std is None:
        return Diff(a.mean - b.mean, 0.0, measured_noise=False)
    return Diff(a.mean - b.mean, 2 * math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n))


def paired_diff(stat: Stat, reference: float) -> Diff:
    """Mean of paired values minus `reference`; noise 2 s.e. of the paired values (unknown with one seed)."""
    if stat.std is None:
        return Diff(stat.mean - reference, 0.0, measured_noise=False)
    return Diff(stat.mean - reference, 2 * stat.std / math.sqrt(stat.n))


def _signed(x: float, spec: str = ".1f") -> str:
    return f"{x:+{spec}}".replace("-", "−")


def _seeds(row: Row) -> str:
    return f"{row.accuracy.n} seed{'s' if row.accuracy.n != 1 else ''}"


def _region_row(rows: dict[str, Row], region_count: int) -> Optional[Row]:
    """The uniform row with the config's region size (the paper's 25%), else the nearest uniform count."""
    uniform = [r for r in rows.values() if r.kind == "uniform" and r.accuracy.n]
    if not uniform:
        return None
    return min(uniform, key=lambda r: (abs(r.count - region_count), r.count))


def retention_claim(region: Row, full: Row, num_layers: int) -> Claim:
    """Share of full tuning's accuracy kept by the uniform region, against the paper's sweep point."""
    paper_layers, paper_pct = paper.paper_sweep_point(region.count, num_layers)
    r = paper_pct / 100
    gap = region.accuracy.mean - r * full.accuracy.mean  # points above the paper's retention of our full run
    noise = 2 * math.hypot(region.accuracy_se() or 0.0, r * (full.accuracy_se() or 0.0))
    verdict = AGREES if gap >= -noise else DISAGREES
    where = ("at or above the paper's retention" if gap >= 0 else
             f"{-gap:.1f} points below the paper's retention, {'within' if gap >= -noise else 'beyond'} noise")
    text = (f"Uniform {region.count} of {num_layers} layers keeps {region.accuracy_pct.fmt()}% of full tuning's "
            f"held-out accuracy ({region.accuracy.mean:.1f}% vs {full.accuracy.mean:.1f}%, {_seeds(region)}); the "
            f"paper keeps {paper_pct:.1f}% with {paper_layers} of {paper.REGION_DEPTH} layers ({paper.REGION_MODEL}). "
            f"That is {where} (±{noise:.1f} points, 2 s.e.).")
    return Claim("Region keeps full tuning's quality", verdict, text)


def sweep_claims(rows: dict[str, Row], region: Row, full: Row, num_layers: int) -> list[Claim]:
    """More layers help up to the region size and little beyond it (paper: 91.9% at 1 layer, 99.4% at 8 and 16)."""
    uniform = sorted((r for r in rows.values() if r.kind == "uniform" and r.accuracy_pct.n), key=lambda r: r.count)
    if len(uniform) < 2:
        return []
    to_pct = 100 / full.accuracy.mean if full.accuracy.mean else 0.0  # accuracy points -> points of % of full
    listing = ", ".join(f"{r.count}: {r.accuracy_pct.mean:.1f}%" for r in uniform)
    published = ", ".join(f"{n}: {p:.1f}%" for n, p in paper.SWEEP_PCT.items())
    claims = [Claim("Layer-count sweep", CONTEXT, f"Accuracy as % of full by uniform layers tuned: {listing} "
                    f"(paper, of {paper.REGION_DEPTH} layers: {published}).")]

    def step(low: Row, high: Row) -> tuple[Diff, float]:
        """(ours, paper's) gain in points of % of full from `low` to `high` layers."""
        ours = Diff(high.accuracy_pct.mean - low.accuracy_pct.mean, accuracy_diff(high, low).noise * to_pct)
        theirs = (paper.paper_sweep_point(high.count, num_layers)[1]
                  - paper.paper_sweep_point(low.count, num_layers)[1])
        return ours, theirs

    fewest, most = uniform[0], uniform[-1]
    if fewest.count < region.count:
        gain, theirs = step(fewest, region)
        claims.append(Claim(f"More layers help up to {region.count}", gain.verdict(True),
                            f"{fewest.count} -> {region.count} layers: {_signed(gain.value)} points of % of full "
                            f"(paper: {_signed(theirs)}; {gain.noise_text()})."))
    if most.count > region.count:
        gain, theirs = step(region, most)
        # the claim: no real gain beyond the region
        verdict = DISAGREES if gain.value > gain.noise and not gain.within_noise() else AGREES
        claims.append(Claim(f"Little gain beyond {region.count} layers", verdict,
                            f"{region.count} -> {most.count} layers: {_signed(gain.value)} points of % of full "
                            f"(paper: {_signed(theirs)}; {gain.noise_text()})."))
    return claims


def block_claims(rows: dict[str, Row], region: Row) -> list[Claim]:
    """Sparse uniform beats contiguous blocks of the same size; bottom beats top."""
    blocks = {parse_variant(r.variant).strategy: r for r in rows.values()
              if r.kind == "block" and r.count == region.count and r.accuracy.n}
    if not blocks:
        return []
    best = max(blocks.values(), key=lambda r: r.accuracy.mean)
    d = accuracy_diff(region, best)
    others = ", ".join(f"{name} {_signed(accuracy_diff(region, r).value)}"
                       for name, r in blocks.items() if r is not best)
    text = (f"{region.variant} vs the best contiguous block of {region.count} ({best.variant}): {_signed(d.value)} "
            f"points of accuracy ({region.accuracy.mean:.1f}% vs {best.accuracy.mean:.1f}%; {d.noise_text()})"
            + (f"; vs the other blocks: {others}" if others else "")
            + f". Paper: uniform beats its best block (bottom) by {_signed(paper.score_gap('uniform', 'bottom'))} and "
            f"top by {_signed(paper.score_gap('uniform', 'top'))} score points.")
    claims = [Claim("Sparse uniform beats contiguous blocks", d.verdict(True), text)]
    caption = caption_block_claim(blocks, region)
    if caption is not None:
        claims.append(caption)
    if "bottom" in blocks and "top" in blocks:
        bt = accuracy_diff(blocks["bottom"], blocks["top"])
        claims.append(Claim("Bottom block beats top block", bt.verdict(True),
                            f"bottom-{region.count} vs top-{region.count}: {_signed(bt.value)} points "
                            f"({bt.noise_text()}); paper: {_signed(paper.score_gap('bottom', 'top'))} score points."))
    return claims


def caption_block_claim(blocks: dict[str, Row], region: Row) -> Optional[Claim]:
    """The same claim judged on held-out caption loss (% of full tuning's, lower is better): a continuous
    measure that separates regions where the accuracy of a few hundred questions cannot. Noise: the seed spread."""
    scored = {name: r for name, r in blocks.items() if r.caption_pct.n}
    if not scored or not region.caption_pct.n:
        return None
    best = min(scored.values(), key=lambda r: r.caption_pct.mean)
    d = seed_diff(best.caption_pct, region.caption_pct)  # positive: the region's loss is lower
    others = ", ".join(f"{r.variant} {r.caption_pct.mean:.1f}%" for r in scored.values() if r is not best)
    return Claim("Sparse uniform beats contiguous blocks (caption loss)", d.verdict(True),
                 f"caption loss as % of full tuning's (lower is better): {region.variant} {region.caption_pct.fmt()}% "
                 f"vs the best block by this measure, {best.variant}, {best.caption_pct.fmt()}%: uniform minus block "
                 f"{_signed(-d.value)} points ({d.noise_text()})" + (f"; other blocks: {others}" if others else "")
                 + ". The paper scores benchmarks only, where uniform beats every block.")


def metric_claims(rows: dict[str, Row], region: Row) -> list[Claim]:
    """Uniform is at least as good as metric-ranked regions (paper: +1.1 over angular, +0.4 over parameter change)."""
    claims = []
    for row in rows.values():
        if row.kind != "metric" or row.count != region.count or not row.accuracy.n:
            continue
        metric = parse_variant(row.variant).metric
        key = "angular" if metric == "angular" else "param_change" if metric.startswith("param_") else None
        published = (f"paper: {_signed(paper.score_gap('uniform', key))} score points" if key else
                     "the paper reports angular distance and parameter change only")
        d = accuracy_diff(region, row)
        claims.append(Claim(f"Uniform beats {metric}-ranked layers", d.verdict(True),
                            f"{region.variant} vs {row.variant} (layers {_layers(row)}): {_signed(d.value)} points of "
                            f"accuracy ({d.noise_text()}); {published}."))
    return claims


def _layers(row: Row) -> str:
    return " / ".join(",".join(map(str, s)) for s in row.layer_sets)


def time_claim(region: Row) -> Optional[Claim]:
    """The region trains faster than full tuning (paper: 13-23% less stage-2 time)."""
    if not region.time_pct.n:
        return None
    saved = paired_diff(Stat([100 - v for v in region.time_pct.values]), 0.0)
    published = ", ".join(f"{v:.0f}% for {k}" for k, v in paper.TIME_SAVING_PCT.items())
    return Claim("Region trains faster", saved.verdict(True),
                 f"{region.variant} needs {region.time_pct.fmt()}% of full tuning's optimizer-step time: "
                 f"{_signed(-saved.value)}% ({saved.noise_text('%')}); paper saves {published}.")


def text_claim(region: Row, full: Row) -> Optional[Claim]:
    """The region keeps the LLM's language ability (paper: MMLU "kept or improved"): text perplexity after the
    region at most KEPT_PPL_RISE_PCT above the seed's stage-1 checkpoint (whose LLM is untouched); a larger rise
    within the seed spread is inconclusive. Full tuning's change is given beside it, for scale."""
    if not (region.ppl_after.n and full.ppl_after.n and region.ppl_before.n):
        return None
    before = region.ppl_before.mean
    # paired by seed: each seed's region run against its own stage-1 checkpoint
    rise = paired_diff(Stat([100 * (a / b - 1) for a, b in zip(region.ppl_after.values, region.ppl_before.values)]),
                       0.0)
    if rise.value <= KEPT_PPL_RISE_PCT:
        verdict = AGREES
    else:
        verdict = INCONCLUSIVE if rise.within_noise() else DISAGREES

    def change(row: Row) -> str:
        return f"{row.ppl_after.mean:.2f} ({_signed(100 * (row.ppl_after.mean / before - 1))}%)"

    return Claim("Region keeps text ability", verdict,
                 f"Text perplexity {before:.2f} before stage 2 -> {change(region)} after {region.variant} "
                 f"(kept: a rise of at most {KEPT_PPL_RISE_PCT:g}%), {change(full)} after full tuning; paper: text "
                 f"benchmarks (MMLU) kept or improved with the region.")


def projector_context(rows: dict[str, Row], region: Row, full: Row) -> Optional[Claim]:
    """How much tuning LLM layers adds over the projector alone, and how much of it the region recovers."""
    proj = rows.get(PROJECTOR)
    if proj is None or not proj.accuracy.n:
        return None
    d = accuracy_diff(full, proj)
    share = ""
    if abs(d.value) > 1e-9:
        share = (f"; {region.variant} recovers {100 * (region.accuracy.mean - proj.accuracy.mean) / d.value:.0f}% "
                 f"of that gap")
    return Claim("Projector only (no LLM layer) for reference", CONTEXT,
                 f"full tuning vs projector only: {_signed(d.value)} points of accuracy ({d.noise_text()}){share}. "
                 f"No paper counterpart; a small gap means this task barely needs the LLM to change.")


@dataclass
class Compressed:
    """A schedule's run against the same region uncompressed, paired by seed."""

    row: Row
    schedule: str
    time_pct: Stat  # % of the uncompressed run's training time
    caption_pct: Stat  # % of its caption loss
    accuracy: Diff  # accuracy points vs uncompressed


def compression_stats(rows: dict[str, Row], runs: dict[str, dict[int, RunResult]], best: str) -> list[Compressed]:
    """Every finished schedule run on `best`, relative to `best` itself."""
    base = rows.get(best)
    if base is None or not base.accuracy.n:
        return []
    out = []
    for row in rows.values():
        v = parse_variant(row.variant) if row.kind == "compress" else None
        if v is None or v.region != best or not row.accuracy.n:
            continue
        common = [s for s in row.seeds if s in runs[best]]
        if not common:
            continue
        # Both rows restricted to the seeds they share, so the accuracy difference is paired by seed.
        mine, theirs = ({s: runs[name][s] for s in common} for name in (row.variant, best))
        diff = accuracy_diff(build_row(row.variant, row.kind, mine, {}, {}), build_row(best, base.kind, theirs, {}, {}))
        out.append(Compressed(row, v.schedule, paired(runs[row.variant], runs[best], pct_of("train_s")),
                              paired(runs[row.variant], runs[best], pct_of("caption_loss")), diff))
    return out


def compression_claims(rows: dict[str, Row], runs: dict[str, dict[int, RunResult]], best: str) -> list[Claim]:
    """Each schedule vs no compression on the best region: less training time, accuracy kept (LLaVolta)."""
    claims = []
    for c in compression_stats(rows, runs, best):
        saved = paired_diff(Stat([100 - x for x in c.time_pct.values]), 0.0)
        acc = c.accuracy
        kept = acc.value >= -acc.noise
        verdict = AGREES if saved.value > 0 and kept else DISAGREES
        if saved.within_noise() and kept:
            verdict = INCONCLUSIVE  # quality kept, but the time difference is within noise (or unmeasured)
        published = paper.COMPRESS.get(c.schedule)
        ref = (f"paper: {_signed(-published[0])}% time, {_signed(published[1])} average points" if published else
               "no published figures for this preset")
        claims.append(Claim(f"Compression {c.schedule} on {best}", verdict,
                            f"training time {_signed(-saved.value)}% ({saved.noise_text('%')}), accuracy "
                            f"{_signed(acc.value)} points ({acc.noise_text()}) vs no compression; {ref} "
                            f"({paper.COMPRESS_SOURCE})."))
    return claims


def conclusions(rows: dict[str, Row], runs: dict[str, dict[int, RunResult]], num_layers: int, region_count: int,
                best: Optional[str]) -> list[Claim]:
    """Every claim the finished rows can speak to, in a fixed order."""
    full = rows.get(FULL)
    region = _region_row(rows, region_count)
    if full is None or region is None or not full.accuracy.n:
        return []
    claims = []
    if full.accuracy.mean:  # "% of full" needs a full-tuning accuracy above zero
        claims += [retention_claim(region, full, num_layers), *sweep_claims(rows, region, full, num_layers),
                   *block_claims(rows, region), *metric_claims(rows, region)]
    claims += [time_claim(region), text_claim(region, full), projector_context(rows, region, full)]
    if best is not None:
        claims += compression_claims(rows, runs, best)
    return [c for c in claims if c is not None]


def tally(claims: list[Claim]) -> str:
    """'N agree, M disagree, K inconclusive' over the verdict-bearing claims."""
    counts = {v: sum(c.verdict == v for c in claims) for v in (AGREES, DISAGREES, INCONCLUSIVE)}
    return (f"{counts[AGREES]} of the papers' claims agree with this run, {counts[DISAGREES]} disagree, "
            f"{counts[INCONCLUSIVE]} are inconclusive (within noise).")

"""A plain-text table of total and trainable parameters per component, printed at the start of training."""

from __future__ import annotations

from torch import nn

from vregion.region.apply import RegionPlan, plan_component

_ROWS = (
    ("vision", "vision"),
    ("projector", "projector"),
    ("region", "llm region layers"),
    ("layers", "other llm layers"),
    ("embeddings", "embeddings"),
    ("norm", "final norm"),
    ("lm_head", "lm_head"),
    ("other", "other"),
)


def parameter_counts(model: nn.Module, plan: RegionPlan) -> dict[str, tuple[int, int]]:
    """{plan component: (total, trainable)} element counts, tied tensors counted once, plus `total`."""
    counts = {key: [0, 0] for key, _ in _ROWS}
    for name, p in model.named_parameters():  # deduplicates a tied lm_head (counted under embeddings)
        c = counts[plan_component(name, plan.layers)]
        c[0] += p.numel()
        c[1] += p.numel() if p.requires_grad else 0
    out = {k: (t, n) for k, (t, n) in counts.items()}
    out["total"] = (sum(t for t, _ in out.values()), sum(n for _, n in out.values()))
    return out


def parameter_table(model: nn.Module, plan: RegionPlan) -> str:
    """Text table: per component the parameter count, the trainable count and the trainable share.

    Rows: vision, projector, llm region layers, other llm layers, embeddings, final norm, lm_head
    (`other` only when non-empty), total; then a line with the strategy, mode and chosen layers.
    """
    counts = parameter_counts(model, plan)
    header = ("component", "params", "trainable", "trainable %")
    rows = []
    for key, label in (*_ROWS, ("total", "total")):
        total, trainable = counts[key]
        if key == "other" and total == 0:
            continue
        if key == "lm_head" and plan.tied_lm_head:
            label = "lm_head (tied to embeddings)"
        share = f"{100.0 * trainable / total:.2f}" if total else "-"
        rows.append((label, f"{total:,}", f"{trainable:,}", share))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    rule = "-" * len(line(header))
    body = [line(r) for r in rows]
    lines = [line(header), rule, *body[:-1], rule, body[-1]]
    lines.append(
        f"region: strategy={plan.strategy} mode={plan.mode} layers={plan.layers} "
        f"({len(plan.layers)} of {plan.num_layers})"
    )
    return "\n".join(lines)

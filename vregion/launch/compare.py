"""Compare the nodes' preflight reports and print them as one table naming each node and what differs.

The reference is the first report (rank 0's node, where the rendezvous runs): on a two-node job there is no
majority to appeal to, and rank 0 is what the others must match to train together.
"""

from __future__ import annotations

from dataclasses import dataclass

from .facts import COMPARED, SHOWN


@dataclass(frozen=True)
class Difference:
    node: str
    key: str
    value: str
    reference: str

    def __str__(self) -> str:
        return f"{self.node}: {self.key} is '{self.value}', the first node has '{self.reference}'"


def label(report: dict) -> str:
    return f"{report['node']} (task {report['task']})"


def differences(reports: list[dict]) -> list[Difference]:
    """Every (node, key) whose value differs from the first report's, for the keys nodes must agree on."""
    first = reports[0]
    out = []
    for report in reports[1:]:
        for key in COMPARED:
            if key in first or key in report:
                value, reference = report.get(key, "not reported"), first.get(key, "not reported")
                if value != reference:
                    out.append(Difference(label(report), key, value, reference))
    return out


def own_failures(reports: list[dict]) -> list[str]:
    """Problems a node finds by itself, whatever the others report (a missing package, shard or folder)."""
    out = []
    for report in reports:
        for key in COMPARED:
            value = report.get(key, "")
            if value == "not installed" or value.startswith(("MISSING", "NOT ")):
                out.append(f"{label(report)}: {key}: {value}")
    return out


def problems(reports: list[dict]) -> list[str]:
    """Differences from the first node, then failures a node found by itself that no difference names already
    (two nodes both missing the same shard agree, and still cannot train)."""
    found = differences(reports)
    named = {(d.node, d.key) for d in found}
    own = [line for line in own_failures(reports) if tuple(line.split(": ", 2)[:2]) not in named]
    return [str(d) for d in found] + own


def table(reports: list[dict], missing: list[str] = ()) -> str:
    """Keys as rows, nodes as columns; '*' marks a value that differs from the first node's."""
    keys = ["rendezvous", *SHOWN, *[k for k in COMPARED if any(k in r for r in reports)]]
    header = ["check", *[label(r) for r in reports], *[f"{m} (no report)" for m in missing]]
    rows = [header]
    for key in keys:
        row = [key]
        for report in reports:
            value = report.get(key, "-")
            differs = key in COMPARED and report is not reports[0] and value != reports[0].get(key, "-")
            row.append(("* " if differs else "") + value)
        rows.append(row + ["-"] * len(missing))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)

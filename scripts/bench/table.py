"""One result row per measured path, and the table printed (or written as Markdown) at the end."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """natsgw beside its baseline. ``ratio`` is natsgw / baseline unless given (RSS, latency)."""

    path: str
    unit: str
    natsgw: float | None
    baseline_name: str
    baseline: float | None
    target: str
    notes: list[str] = field(default_factory=list)
    ratio: float | None = None

    def __post_init__(self) -> None:
        if self.ratio is None and self.natsgw is not None and self.baseline:
            self.ratio = self.natsgw / self.baseline

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _cells(row: Row) -> list[str]:
    return [
        row.path,
        _num(row.natsgw, row.unit),
        f"{_num(row.baseline, row.unit)} ({row.baseline_name})" if row.baseline_name else "",
        _ratio(row.ratio),
        row.target,
        "; ".join(row.notes),
    ]


HEADER = ["path", "natsgw", "baseline", "ratio", "target", "notes"]


def render_text(rows: list[Row]) -> str:
    table = [HEADER, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER) - 1)]
    lines = []
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        lines.append("  ".join([*cells, line[-1]]).rstrip())
        if line is HEADER:
            lines.append("  ".join("-" * w for w in widths) + "  -----")
    return "\n".join(lines)


def render_markdown(rows: list[Row], preamble: list[str]) -> str:
    out = [*preamble, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |")
    return "\n".join(out) + "\n"

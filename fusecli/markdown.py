"""Markdown tables, written one way for eval/report.md and reports/index.md."""

from __future__ import annotations

from collections.abc import Sequence


def cell(value: object) -> str:
    """A number to three decimals, None as `-` (no value), anything else as text."""
    if value is None:
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.3f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """The lines of a Markdown table: header, rule, one line per row (cells through `cell`)."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]

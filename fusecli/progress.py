"""The progress bar of every long stage, once: description, bar, done/total, rate, elapsed, ETA, on stderr.

stderr, so a command's stdout stays its result. Where stderr is not a terminal (a DVC log, a test) rich
draws no live bar and prints the final state once, when the bar stops.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

BYTES = "B"  # the unit that shows sizes (1.2/3.4 GB) and a byte rate instead of counts


class Rate(ProgressColumn):
    """Items per second, e.g. `12.5 seq/s` (rich's own rate column is for bytes only)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else f"- {self.unit}/s")


def progress_bar(unit: str, console: Console | None = None) -> Progress:
    """A rich Progress counting `unit`s (BYTES: sizes and a byte rate); use it as a context manager."""
    counts: tuple[ProgressColumn, ...] = (
        (DownloadColumn(), TransferSpeedColumn()) if unit == BYTES else (MofNCompleteColumn(), Rate(unit))
    )
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
    )

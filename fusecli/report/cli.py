"""`fusecli report`: the report stage's output, from the CLI (registered in fusecli/cli.py).

Kept apart from run.py so that every other fusecli command starts without importing matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Report folder (index.md, plots/, teachers.json).")] = Path("reports"),
    metrics: Annotated[Path, typer.Option(help="The evaluate stage's metrics.")] = Path("eval/metrics.json"),
    params: Annotated[Path, typer.Option(help="params.yaml (merge.method and merge.methods).")] = Path("params.yaml"),
    logs: Annotated[Path, typer.Option(help="Training logs: fuse/<slug>/ and sft_baseline/.")] = Path("logs"),
    align: Annotated[Path, typer.Option(help="Alignment outputs: <slug>/coverage.json.")] = Path("align"),
    merged: Annotated[Path, typer.Option(help="Merged models: <method>/merge_report.json.")] = Path("merged"),
) -> None:
    """Write the report (scores, who taught what, training curves, merge coefficients) as Markdown + PNGs."""
    from fusecli.report.stage import ReportInputs, run

    ws = ctx.find_root().obj
    root = ws.root
    inputs = ReportInputs(root / metrics, ws.lock, root / params, root / logs, root / align, root / merged)
    index = run(inputs, root / out)
    typer.echo(f"wrote {index}")

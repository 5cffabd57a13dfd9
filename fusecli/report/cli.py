"""`fusecli report` (the report stage's output) and `fusecli card` (a merged model laid out for upload), from the
CLI (registered in fusecli/cli.py).

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
    extract: Annotated[Path, typer.Option(help="Extract stores: pivot/, sources/<slug>/.")] = Path("extract"),
) -> None:
    """Write the report (scores, who taught what, training curves, merge coefficients) as Markdown + PNGs."""
    from fusecli.report.stage import ReportInputs, run

    ws = ctx.find_root().obj
    root = ws.root
    inputs = ReportInputs(root / metrics, ws.lock, root / params, root / logs, root / align, root / merged,
                          root / extract)
    index = run(inputs, root / out)
    typer.echo(f"wrote {index}")


def card_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Folder to write: the merged model with its evaluated card.")],
    method: Annotated[str | None, typer.Option(help="Merge method (default: params.yaml merge.method).")] = None,
    params: Annotated[Path, typer.Option(help="params.yaml (merge.method).")] = Path("params.yaml"),
    merged: Annotated[Path, typer.Option(help="Merged models: <method>/.")] = Path("merged"),
    reports: Annotated[Path, typer.Option(help="The report folder: cards/<method>/README.md.")] = Path("reports"),
) -> None:
    """Lay out a merged model for upload: its files (hard links) and the report's card with the evaluation."""
    from fusecli.plan import merge_methods, merged_weights
    from fusecli.report.card import CARD, CARDS, upload_folder

    root = ctx.find_root().obj.root
    name = method or merge_methods(root / params).default
    weights = merged_weights(root / merged / name, root)  # one source: the fused model it is
    folder = upload_folder(weights, root / reports / CARDS / name / CARD, root / out)
    typer.echo(f"wrote {folder}: merged/{name} with its evaluated card; upload it with `hf upload <repo> {out}`")

"""What the report reads, from the files the other stages wrote; missing pieces become notes, not crashes.

A report is often made from a workspace in some older state (a metrics file from before a source was
added, a fusion run without logs): every loader returns what it found plus the list of what it did not.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusecli.errors import FusecliError
from fusecli.extract import truncation
from fusecli.fuse.selection import warnings

CURVES = ("loss", "sft_loss", "fusion_loss")  # dvclive series of the fuse stage, one subplot each
LAYER = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")


@dataclass
class Found:
    """A loader's result: the data, and one line per thing that was expected but missing."""

    data: Any
    missing: list[str] = field(default_factory=list)


OPTIONAL_BLOCKS = ("lm_eval", "judge", "judge_pairwise")  # evaluate.backend lm_eval and judge


def load_metrics(path: str | Path) -> dict[str, dict]:
    """eval/metrics.json: `models` ({model: {domain: {"em", "ce", ...}}}) and the backends' blocks ({} if not run)."""
    path = Path(path)
    if not path.is_file():
        raise FusecliError(f"{path} not found: run `dvc repro evaluate` first")
    try:
        metrics = json.loads(path.read_text())
    except ValueError:
        raise FusecliError(f"{path} is not valid JSON: rerun `dvc repro evaluate`") from None
    models = metrics.get("models") if isinstance(metrics, dict) else None
    if not isinstance(models, dict):
        raise FusecliError(f"{path} has no 'models' mapping: rerun `dvc repro evaluate`")
    blocks = {key: metrics.get(key) for key in OPTIONAL_BLOCKS}
    notes = metrics.get("notes")  # why a score is missing or partial (fusecli/evaluate/notes.py)
    return {
        "models": {name: s for name, s in models.items() if isinstance(s, dict)},
        **{key: value if isinstance(value, dict) else {} for key, value in blocks.items()},
        "notes": [str(n) for n in notes] if isinstance(notes, list) else [],
    }


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def fusion_runs(logs: str | Path, slugs: list[str]) -> dict[str, Path]:
    """The dvclive folder of each run that fuses teachers: fuse@<slug> (one source) and fuse_all (every source)."""
    return {f"fuse@{s}": Path(logs) / "fuse" / s for s in slugs} | {"fuse_all": Path(logs) / "fuse_all"}


def _run_selection(selection: dict[str, Any], run: str, slugs: list[str]) -> dict[str, Any]:
    """One run's selection.json as {fusion_fn, teacher, gate, share: {slug: {domain: s}}, gated: {domain: s}}."""
    if run.startswith("fuse@"):  # a pair run: the source's share is source_share (also in older files)
        share = {run.removeprefix("fuse@"): dict(selection.get("source_share") or {})}
    else:
        per_teacher = selection.get("teacher_share") or {}
        share = {s: dict(per_teacher[s]) for s in slugs if isinstance(per_teacher.get(s), dict)}
    return {
        "fusion_fn": selection.get("fusion_fn"),
        "teacher": selection.get("teacher"),
        "gate": selection.get("gate"),
        "share": share,
        "gated": dict(selection.get("gated_share") or {}),
    }


def load_teachers(logs: str | Path, align: str | Path, slugs: list[str]) -> Found:
    """Who taught what: {"coverage": {slug: c}, "alignment": {slug: coverage.json or None}, "runs": {run: selection
    or None}, "warnings": [line]}.

    Per fusion run (fuse@<slug>, fuse_all), from its selection.json: per source and domain the share of
    sequences whose teacher was that source (MinCE; the mean weight for AvgCE), per domain the share of
    sequences the competence gate (fuse.gate) left without a teacher, and the fuse log's warning for each
    source that taught under 1% of the sequences. Per source, align/<slug>/coverage.json: the coverage and
    the fidelity of the alignment.
    """
    alignment: dict[str, dict[str, Any] | None] = {}
    runs: dict[str, dict[str, Any] | None] = {}
    lines: list[str] = []
    missing = []
    for slug in slugs:
        path = Path(align) / slug / "coverage.json"
        alignment[slug] = _json(path)
        if alignment[slug] is None:
            missing.append(f"{path} (run `dvc repro align@{slug}`)")
        elif not isinstance(alignment[slug].get("fidelity"), dict):
            missing.append(f"the fidelity in {path} (an older align stage: run `dvc repro align@{slug}`)")
    for run, folder in fusion_runs(logs, slugs).items():
        selection = _json(folder / "selection.json")
        if selection is None:
            missing.append(f"{folder / 'selection.json'} (run `dvc repro {run}`)")
        runs[run] = None if selection is None else _run_selection(selection, run, slugs)
        sources = [run.removeprefix("fuse@")] if run.startswith("fuse@") else slugs
        lines += warnings(run, selection, sources) if selection is not None else []
    coverage = {slug: (found or {}).get("coverage") for slug, found in alignment.items()}
    return Found({"coverage": coverage, "alignment": alignment, "runs": runs, "warnings": lines}, missing)


def load_truncation(extract: str | Path, slugs: list[str]) -> Found:
    """Per extracted model (`pivot`, `source:<slug>`), the replies cut at extract.max_length: the counts of
    extract/pivot/ and extract/sources/<slug>/ (fusecli/extract/truncation.py)."""
    folders = {"pivot": Path(extract) / "pivot"} | {f"source:{s}": Path(extract) / "sources" / s for s in slugs}
    found, missing = {}, []
    for model, folder in folders.items():
        counts = truncation.read(folder)
        if counts is None:
            stage = "extract_pivot" if model == "pivot" else f"extract@{model.removeprefix('source:')}"
            missing.append(f"the truncation counts in {folder} (run `dvc repro {stage}`)")
        else:
            found[model] = counts
    return Found(found, missing)


def _tsv(path: Path) -> tuple[list[float], list[float]]:
    steps, values = [], []
    with path.open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            try:
                steps.append(float(row["step"]))
                values.append(float(row[path.stem]))
            except (KeyError, TypeError, ValueError):
                continue
    return steps, values


def training_runs(logs: str | Path, slugs: list[str]) -> dict[str, Path]:
    """The dvclive folder of each training run: fuse@<slug>, fuse_all and sft_baseline."""
    return fusion_runs(logs, slugs) | {"sft_baseline": Path(logs) / "sft_baseline"}


def load_curves(logs: str | Path, slugs: list[str]) -> Found:
    """dvclive series per run: {run: {series: (steps, values)}} for fuse@<slug>, fuse_all and sft_baseline."""
    runs = training_runs(logs, slugs)
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    missing = []
    for run, folder in runs.items():
        series = {}
        for name in CURVES:
            path = folder / "plots" / "metrics" / f"{name}.tsv"
            if path.is_file():
                steps, values = _tsv(path)
                if steps:
                    series[name] = (steps, values)
        if series:
            out[run] = series
        else:
            missing.append(f"{folder / 'plots' / 'metrics'} ({run} has no training curves)")
    return Found(out, missing)


def layer_of(tensor: str) -> str:
    """Group a tensor name into a heatmap row: embeddings, layer i, or head (final norm, lm_head)."""
    m = LAYER.search(tensor)
    if m:
        return f"layer {int(m.group(1))}"
    return "embeddings" if "embed" in tensor or "wte" in tensor else "head"


@dataclass(frozen=True)
class Coefficients:
    kind: str  # "eta" (SCE), "weight" (VaRM), ...
    rows: list[str]  # embeddings, layer 0..L-1, head
    sources: list[str]
    values: list[list[float]]  # mean coefficient of the row's tensors, per source


def load_coefficients(merged: str | Path, methods: list[str]) -> Found:
    """Per method with data-dependent coefficients: the mean per layer and source, from merge_report.json."""
    out: dict[str, Coefficients] = {}
    missing = []
    for method in methods:
        path = Path(merged) / method / "merge_report.json"
        report = _json(path)
        if report is None:
            missing.append(f"{path} (run `dvc repro merge@{method}`)")
            continue
        coefficients = report.get("coefficients") or {}
        if not report.get("coefficient") or not coefficients:
            continue  # a method with fixed weights (linear, TIES, ...) has nothing to draw
        sources = list(report.get("models") or next(iter(coefficients.values())))
        sums: dict[str, list[float]] = {}
        counts: dict[str, int] = defaultdict(int)
        for tensor, per_source in coefficients.items():
            row = layer_of(tensor)
            sums.setdefault(row, [0.0] * len(sources))
            counts[row] += 1
            for i, s in enumerate(sources):
                sums[row][i] += float(per_source.get(s, 0.0))
        rows = sorted(sums, key=_row_order)
        values = [[v / counts[r] for v in sums[r]] for r in rows]
        out[method] = Coefficients(str(report["coefficient"]), rows, sources, values)
    return Found(out, missing)


def _row_order(row: str) -> tuple[int, int]:
    if row == "embeddings":
        return (0, 0)
    if row.startswith("layer "):
        return (1, int(row.split()[1]))
    return (2, 0)

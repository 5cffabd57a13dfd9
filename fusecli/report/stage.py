"""`fusecli report` and the `report` stage: reports/index.md, its PNGs, and the who-taught-what metrics.

The paper's comparisons side by side: every model's per-domain scores (EM and CE) as tables and
grouped bars, the merge methods against each other, which source taught which domain (the MinCE
selection shares and the alignment coverage), the dvclive training curves and the merge coefficients
per layer (SCE eta, VaRM weights). Anything missing, such as a metrics file from an older run, is
listed at the top of the report instead of failing it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from fusecli.evaluate.names import MERGED, merged_name, model_names
from fusecli.evaluate.tables import harness_table
from fusecli.io import atomic_dir, atomic_write_json, atomic_write_text
from fusecli.lock import read_lock
from fusecli.markdown import table
from fusecli.plan import merge_methods
from fusecli.report import data, plots


@dataclass(frozen=True)
class ReportInputs:
    metrics: Path  # eval/metrics.json
    lock: Path  # models.lock
    params: Path  # params.yaml (merge.method, merge.methods)
    logs: Path  # logs/: fuse/<slug>/ and sft_baseline/ (dvclive, selection.json)
    align: Path  # align/<slug>/coverage.json
    merged: Path  # merged/<method>/merge_report.json


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def score_table(scores: dict[str, dict], metric: str, domains: list[str]) -> list[str]:
    rows = []
    for model, per_domain in scores.items():
        values = [per_domain.get(d, {}).get(metric) for d in domains]
        rows.append([model, *values, _mean(values)])
    return table(["model", *domains, "mean"], rows)


def teachers_table(teachers: dict[str, dict]) -> list[str]:
    domains = sorted({d for t in teachers.values() for d in t["share"]})
    if not domains:
        return ["No fusion selection logs found."]
    rows = [[slug, t["fusion_fn"] or "-", t["coverage"], *(t["share"].get(d) for d in domains)]
            for slug, t in teachers.items()]
    return table(["source", "fusion", "coverage", *domains], rows)


def teacher_metrics(teachers: dict[str, dict]) -> dict[str, dict]:
    """Numbers only, for `dvc metrics diff`: {slug: {"coverage": c, "share": {domain: s}}}."""
    out: dict[str, dict] = {}
    for slug, t in teachers.items():
        entry: dict = {"share": {d: float(v) for d, v in t["share"].items()}}
        if t["coverage"] is not None:
            entry["coverage"] = float(t["coverage"])
        out[slug] = entry
    return out


def copy_curves(logs: Path, slugs: list[str], out: Path) -> None:
    """The dvclive series of the current runs, as `dvc plots` reads them: logs/fuse/ also holds JSON and
    YAML files that `dvc plots show` fails on, and runs of removed sources."""
    with atomic_dir(out) as tmp:
        for run, folder in data.training_runs(logs, slugs).items():
            for tsv in sorted((folder / "plots" / "metrics").glob("*.tsv")):
                target = tmp / run.replace("@", "/") / tsv.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tsv, target)


def run(inputs: ReportInputs, out: str | Path) -> Path:
    """Write `out`/index.md, `out`/plots/*.png, `out`/curves/ and `out`/teachers.json; return the index."""
    out = Path(out)
    slugs = sorted(read_lock(inputs.lock).sources)
    merge = merge_methods(inputs.params)
    metrics = data.load_metrics(inputs.metrics)
    scores = metrics["models"]
    expected = model_names(slugs, list(merge.methods))
    missing = [f"model `{m}` in {inputs.metrics} (an older run? rerun `dvc repro evaluate`)"
               for m in expected if m not in scores]
    extra = [m for m in scores if m not in expected]
    ordered = {m: scores[m] for m in expected + extra if m in scores}
    if merged_name(merge.default) in ordered:
        ordered.pop(MERGED, None)  # the same scores as merged:<default>: drawn once
    domains = sorted({d for s in ordered.values() for d in s})
    teachers = data.load_teachers(inputs.logs, inputs.align, slugs)
    curves = data.load_curves(inputs.logs, slugs)
    coefficients = data.load_coefficients(inputs.merged, list(merge.methods))
    missing += teachers.missing + curves.missing + coefficients.missing

    lines = ["# fusecli report", ""]
    lines += [f"Sources: {', '.join(slugs) or 'none'}. Merge methods: {', '.join(merge.methods)} "
              f"(`{MERGED}` = `{MERGED}:{merge.default}`).", ""]
    if missing or extra:
        lines += ["> **Incomplete inputs**, reported as found:", ">"]
        lines += [f"> - missing: {m}" for m in missing]
        lines += [f"> - not in the current models.lock / merge.methods: `{m}`" for m in extra]
        lines.append("")
    with atomic_dir(out / "plots") as tmp:
        lines += ["## Scores per domain", ""]
        if ordered:
            plots.score_bars(ordered, "em", "Greedy exact match (higher is better)", tmp / "scores_em.png")
            plots.score_bars(ordered, "ce", "Response-token CE (lower is better)", tmp / "scores_ce.png")
            lines += ["![exact match](plots/scores_em.png)", "", "![response CE](plots/scores_ce.png)", ""]
        lines += ["### Greedy exact match (higher is better; `-`: no checkable answers)", ""]
        lines += score_table(ordered, "em", domains) + [""]
        lines += ["### Response-token CE (lower is better)", ""]
        lines += score_table(ordered, "ce", domains) + [""]
        lines += harness_table(metrics["lm_eval"], "###")
        lines += ["## Who taught what", "",
                  "Per source: the alignment coverage (share of pivot response tokens with a mapped source "
                  "distribution) and, per domain, the share of training sequences whose teacher was the source "
                  "rather than the pivot (MinCE; the source's mean weight for AvgCE).", ""]
        lines += teachers_table(teachers.data) + [""]
        lines += ["## Training curves", ""]
        if curves.data:
            plots.training_curves(curves.data, tmp / "curves.png")
            lines += ["![training curves](plots/curves.png)", ""]
        else:
            lines += ["No dvclive training curves found.", ""]
        lines += ["## Merge coefficients", ""]
        for method, c in coefficients.data.items():
            plots.coefficient_heatmap(method, c, tmp / f"coefficients_{method}.png")
            lines += [f"![{method} {c.kind}](plots/coefficients_{method}.png)", ""]
        if not coefficients.data:
            lines += ["No merge method with per-tensor coefficients (SCE, VaRM) in merge.methods.", ""]
    copy_curves(inputs.logs, slugs, out / "curves")
    atomic_write_json(out / "teachers.json", teacher_metrics(teachers.data))
    index = out / "index.md"
    atomic_write_text(index, "\n".join(lines))
    return index

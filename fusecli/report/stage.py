"""`fusecli report` and the `report` stage: reports/index.md, its PNGs, the who-taught-what metrics and the model
cards with their evaluation (reports/cards/<method>/README.md).

The paper's comparisons side by side: every model's per-domain scores (EM and CE) as tables and
grouped bars (the pair models, the FuseLLM-style `fuselm` and the merge methods against each other),
which source taught which domain (the MinCE selection shares, the alignment coverage and what the
competence gate dropped), how faithfully each source's distributions were aligned (the fidelity in
align/<slug>/coverage.json), the dvclive training curves and the merge coefficients per layer (SCE eta,
VaRM weights). Anything missing, such as a metrics file from an older run, is
listed at the top of the report instead of failing it, and so is a source that taught under 1% of its
fusion run's sequences (the fuse log's warning: its fused model is the SFT baseline).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from fusecli.evaluate.names import FUSELM, MERGED, merged_name, model_names
from fusecli.evaluate.tables import harness_table, judge_tables, notes_lines, rows_table
from fusecli.extract import truncation
from fusecli.fuse.selection import CONTROLS
from fusecli.io import atomic_dir, atomic_write_json, atomic_write_text
from fusecli.lock import read_lock
from fusecli.markdown import table
from fusecli.plan import merge_methods
from fusecli.report import data, plots
from fusecli.report.card import CARDS, write_cards
from fusecli.report.fidelity import consistent_share, fidelity_lines
from fusecli.report.scores import gain_table, score_table


@dataclass(frozen=True)
class ReportInputs:
    metrics: Path  # eval/metrics.json
    lock: Path  # models.lock
    params: Path  # params.yaml (merge.method, merge.methods)
    logs: Path  # logs/: fuse/<slug>/, fuse_all/ and sft_baseline/ (dvclive, selection.json)
    align: Path  # align/<slug>/coverage.json (coverage and fidelity)
    merged: Path  # merged/<method>/merge_report.json
    extract: Path | None = None  # extract/: pivot/ and sources/<slug>/ manifests (replies cut at max_length)


def teachers_table(teachers: dict[str, dict]) -> list[str]:
    """One row per (fusion run, source): the source's alignment coverage and its share per domain."""
    runs = {run: sel for run, sel in teachers["runs"].items() if sel is not None}
    domains = sorted({d for sel in runs.values() for share in sel["share"].values() for d in share})
    if not domains:
        return ["No fusion selection logs found."]
    rows = []
    for run, sel in teachers["runs"].items():
        slugs = [run.removeprefix("fuse@")] if run.startswith("fuse@") else list(teachers["coverage"])
        for slug in slugs:
            share = (sel or {}).get("share", {}).get(slug, {})
            fn = (sel or {}).get("fusion_fn") or "-"
            rows.append([run, slug, fn, teachers["coverage"].get(slug), *(share.get(d) for d in domains)])
    return table(["run", "source", "fusion", "coverage", *domains], rows)


def gate_lines(teachers: dict[str, dict]) -> list[str]:
    """The competence gate's effect: per fusion run and domain, the share of sequences left without a teacher;
    and a warning when the targets were a control's (fuse.teacher: reference or pivot)."""
    runs = {run: sel for run, sel in teachers["runs"].items() if sel is not None}
    lines = []
    for teacher in sorted({sel["teacher"] for sel in runs.values()} & set(CONTROLS)):
        lines += [f"> **Control run** (`fuse.teacher: {teacher}`): {CONTROLS[teacher]}; "
                  "the shares above are the selection those targets replaced.", ""]
    gated = {run: sel for run, sel in runs.items() if sel["gate"] is not None}
    if not gated:
        return lines + ["Competence gate off (`fuse.gate: null`): every teacher competes, as in the paper.", ""]
    domains = sorted({d for sel in gated.values() for d in sel["gated"]})
    lines += ["Share of sequences whose every teacher's CE exceeded `fuse.gate` (no fusion term: plain SFT):", ""]
    rows = [[run, f"{sel['gate']:g}", *(sel["gated"].get(d) for d in domains)] for run, sel in gated.items()]
    return lines + table(["run", "gate (nats)", *domains], rows) + [""]


def teacher_metrics(teachers: dict[str, dict]) -> dict[str, dict]:
    """Numbers only, for `dvc metrics diff`: {slug: {"coverage": c, "consistent": f, "share": {domain: s},
    "gated": {domain: g}}} from the pair runs (f: the alignment's share of teacher mass on prefix-consistent
    pivot tokens), and {FUSELM: {"share": {slug: {domain: s}}, "gated": {domain: g}}} from fuse_all."""
    out: dict[str, dict] = {}
    for run, sel in teachers["runs"].items():
        pair = run.startswith("fuse@")
        slug = run.removeprefix("fuse@")
        entry: dict = {}
        if sel is not None:
            shares = {s: {d: float(v) for d, v in share.items()} for s, share in sel["share"].items()}
            entry["share"] = shares.get(slug, {}) if pair else shares
            if sel["gated"]:
                entry["gated"] = {d: float(v) for d, v in sel["gated"].items()}
        elif pair:
            entry["share"] = {}
        if pair and teachers["coverage"].get(slug) is not None:
            entry["coverage"] = float(teachers["coverage"][slug])
        if pair and (consistent := consistent_share(teachers["alignment"].get(slug))) is not None:
            entry["consistent"] = consistent
        if pair or sel is not None:
            out[slug if pair else FUSELM] = entry
    return out


def truncation_lines(cut: dict[str, dict]) -> tuple[list[str], list[str]]:
    """The extract stages' counts of replies cut at extract.max_length: (warnings for the top, the table)."""
    if not cut:
        return [], []
    warnings = [f"extract {model}: {line}" for model, c in cut.items()
                if (line := truncation.warning(c, c["rows"], c["max_length"]))]
    rows = [[model, str(c["max_length"]), f"{len(c['cut_rows'])} of {c['rows']}",
             f"{c['response_tokens_cut']:,} of {c['response_tokens']:,}", truncation.share_cut(c)]
            for model, c in cut.items()]
    head = ["model", "max_length", "rows cut", "response tokens lost", "share lost"]
    return warnings, ["## Replies cut at extract.max_length", "",
                      "Each model reads the training rows with its own tokenizer; a cut reply is learned without "
                      "its end and its end-of-turn.", "", *table(head, rows), ""]


def warning_lines(warnings: list[str]) -> list[str]:
    """The fuse logs' warnings (a source that taught under 1% of its run), at the top where they are seen."""
    if not warnings:
        return []
    return ["> **Warnings** (as the fuse logs print them):", ">", *(f"> - warning: {w}" for w in warnings), ""]


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
    """Write `out`/index.md, plots/*.png, curves/, cards/ and teachers.json; return the index."""
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
    cards = write_cards(inputs.merged, list(merge.methods), scores, out / CARDS)
    cut = data.load_truncation(inputs.extract, slugs) if inputs.extract is not None else data.Found({})
    missing += teachers.missing + curves.missing + coefficients.missing + cards.missing + cut.missing
    cut_warnings, cut_table = truncation_lines(cut.data)

    lines = ["# fusecli report", ""]
    lines += [f"Sources: {', '.join(slugs) or 'none'}. Merge methods: {', '.join(merge.methods)} "
              f"(`{MERGED}` = `{MERGED}:{merge.default}`).", ""]
    if missing or extra:
        lines += ["> **Incomplete inputs**, reported as found:", ">"]
        lines += [f"> - missing: {m}" for m in missing]
        lines += [f"> - not in the current models.lock / merge.methods: `{m}`" for m in extra]
        lines.append("")
    lines += warning_lines(teachers.data["warnings"] + cut_warnings)
    lines += notes_lines(metrics["notes"])
    merges = [merged_name(m) for m in merge.methods if merged_name(m) in scores]
    if merges:
        lines += ["## Summary", "", "Each merge's mean over domains minus the baseline's (for the default method, "
                  "`summary.gain` of eval/metrics.json).", ""]
        lines += gain_table(scores, merges) + [""]
    if cards.data:
        lines += ["Model cards with these scores, to upload with the weights: "
                  + ", ".join(f"[{m}]({CARDS}/{m}/README.md)" for m in cards.data) + ".", ""]
    with atomic_dir(out / "plots") as tmp:
        lines += ["## Scores per domain", ""]
        if ordered:
            plots.score_bars(ordered, "em", "Greedy exact match (higher is better)", tmp / "scores_em.png")
            plots.score_bars(ordered, "ce", "Response-token CE (lower is better)", tmp / "scores_ce.png")
            lines += ["![exact match](plots/scores_em.png)", "", "![response CE](plots/scores_ce.png)", ""]
        lines += ["### Greedy exact match (higher is better; `-`: not computed, the notes at the top say why)", ""]
        lines += score_table(ordered, "em", domains) + [""]
        lines += ["### Response-token CE (lower is better)", ""]
        lines += score_table(ordered, "ce", domains) + [""]
        lines += ["### Rows scored", "", "EM rows (of them, referenced by the last assistant reply, the row having "
                  "no `answer`) and CE rows, of the domain's held-out rows:", ""]
        lines += rows_table(ordered, domains) + [""]
        lines += harness_table(metrics["lm_eval"], "###")
        lines += judge_tables(metrics["judge"], metrics["judge_pairwise"], "###")
        lines += cut_table
        lines += ["## Who taught what", "",
                  "Per fusion run (`fuse@<source>`: the pair model; `fuse_all`: `fuselm`, every source at once) and "
                  "source: the alignment coverage (share of pivot response tokens with a mapped source "
                  "distribution) and, per domain, the share of training sequences whose teacher was the source "
                  "(MinCE; the source's mean weight for AvgCE).", ""]
        lines += teachers_table(teachers.data) + [""]
        lines += gate_lines(teachers.data)
        lines += ["## Alignment fidelity", ""] + fidelity_lines(teachers.data["alignment"])
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

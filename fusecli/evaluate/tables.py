"""eval/metrics.json as Markdown: eval/report.md, and the harness table that reports/index.md reuses."""

from __future__ import annotations

from fusecli.markdown import table


def report_markdown(metrics: dict) -> str:
    """A table per metric: models as rows, domains as columns (and lm-evaluation-harness tasks, if run)."""
    models = metrics["models"]
    domains = sorted({d for s in models.values() for d in s})
    lines = ["# fusecli evaluation", ""]
    for key, title in (("em", "Greedy exact match (higher is better)"), ("ce", "Response-token CE (lower is better)")):
        rows = [[name, *(scores.get(d, {}).get(key) for d in domains)] for name, scores in models.items()]
        lines += [f"## {title}", "", *table(["model", *domains], rows), ""]
    return "\n".join(lines + harness_table(metrics.get("lm_eval") or {}, "##"))


def harness_table(harness: dict[str, dict[str, dict[str, float]]], heading: str) -> list[str]:
    """lm-evaluation-harness scores (evaluate.backend: lm_eval): one column per task and metric."""
    columns = sorted({(t, m) for tasks in harness.values() for t, ms in tasks.items() for m in ms})
    if not columns:
        return []
    rows = [[name, *(tasks.get(t, {}).get(m) for t, m in columns)] for name, tasks in harness.items()]
    return [f"{heading} lm-evaluation-harness", "", *table(["model", *(f"{t} {m}" for t, m in columns)], rows), ""]

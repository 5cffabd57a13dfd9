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
    lines += judge_tables(metrics.get("judge") or {}, metrics.get("judge_pairwise") or {}, "##")
    return "\n".join(lines + harness_table(metrics.get("lm_eval") or {}, "##"))


def harness_table(harness: dict[str, dict[str, dict[str, float]]], heading: str) -> list[str]:
    """lm-evaluation-harness scores (evaluate.backend: lm_eval): one column per task and metric."""
    columns = sorted({(t, m) for tasks in harness.values() for t, ms in tasks.items() for m in ms})
    if not columns:
        return []
    rows = [[name, *(tasks.get(t, {}).get(m) for t, m in columns)] for name, tasks in harness.items()]
    return [f"{heading} lm-evaluation-harness", "", *table(["model", *(f"{t} {m}" for t, m in columns)], rows), ""]


def judge_tables(single: dict[str, dict[str, dict]], pairwise: dict[str, dict[str, dict]], heading: str) -> list[str]:
    """evaluate.backend: judge: the mean rating (and the win rate against evaluate.judge.pairwise) per
    category, with the missing judgments counted (left out of the means)."""
    lines = []
    for block, value, title in ((single, "score", "LLM judge: mean rating 1-10"),
                                (pairwise, "win_rate", "LLM judge: win rate against evaluate.judge.pairwise")):
        columns = list(next(iter(block.values()), {}))  # the categories, then overall
        if not columns:
            continue
        rows = [[name, *(scores.get(c, {}).get(value) for c in columns), _missing(scores["overall"])]
                for name, scores in block.items()]
        lines += [f"{heading} {title} (missing judgments left out)", "", *table(["model", *columns, "missing"], rows),
                  ""]
    return lines


def _missing(overall: dict) -> str:
    """"2 of 16": the judgments (or pairs) with no rating (or verdict), of all."""
    total = sum(v for k, v in overall.items() if k in ("graded", "wins", "ties", "losses", "missing"))
    return f"{overall['missing']} of {total}"

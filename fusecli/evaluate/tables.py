"""eval/metrics.json as Markdown: eval/report.md, and the harness table that reports/index.md reuses."""

from __future__ import annotations

from fusecli.markdown import table


def report_markdown(metrics: dict) -> str:
    """A table per metric: models as rows, domains as columns (and lm-evaluation-harness tasks, if run)."""
    models = metrics["models"]
    domains = sorted({d for s in models.values() for d in s})
    lines = ["# fusecli evaluation", "", *notes_lines(metrics.get("notes") or [])]
    for key, title in (("em", "Greedy exact match (higher is better)"), ("ce", "Response-token CE (lower is better)")):
        rows = [[name, *(scores.get(d, {}).get(key) for d in domains)] for name, scores in models.items()]
        lines += [f"## {title}", "", *table(["model", *domains], rows), ""]
    lines += ["## Rows scored", "", *rows_table(models, domains), ""]
    lines += judge_tables(metrics.get("judge") or {}, metrics.get("judge_pairwise") or {}, "##")
    return "\n".join(lines + harness_table(metrics.get("lm_eval") or {}, "##"))


def notes_lines(notes: list[str]) -> list[str]:
    """evaluate's notes (fusecli/evaluate/notes.py): why a score is `-` or covers fewer rows, and the fix."""
    if not notes:
        return []
    head = "> **Scores not computed or partial** (as the evaluate stage warns):"
    return [head, ">", *(f"> - {n}" for n in notes), ""]


def rows_table(models: dict[str, dict], domains: list[str]) -> list[str]:
    """Per model and domain, the rows behind each score: `EM rows / CE rows of rows` (`k from replies`: EM
    referenced by the last assistant reply, the row having no `answer`). Scores from before the counts: `-`."""

    def counts(s: dict) -> str | None:
        if "rows" not in s:
            return None
        reply = f" ({s['em_reply']} from replies)" if s.get("em_reply") else ""
        return f"EM {s['em_rows']}{reply}, CE {s['ce_rows']} of {s['rows']}"

    rows = [[name, *(counts(scores.get(d, {})) for d in domains)] for name, scores in models.items()]
    return table(["model", *domains], rows)


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

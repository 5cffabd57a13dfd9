"""Judged records -> the `judge` and `judge_pairwise` blocks of eval/metrics.json, per model and category.

Single: `{model: {category: {score, graded, missing}, ..., overall: {...}}}`; score is the mean rating of
the graded turns (None when none was graded), `overall` the mean over every graded turn (MT-Bench's score).
Pairwise (against one model, both orders): a pair of verdicts that agree is a win or a loss, verdicts that
disagree (position bias) or two ties are a tie, MT-Bench's rule; a pair with a missing verdict is missing.
`win_rate` = (wins + ties / 2) / decided pairs.
"""

from __future__ import annotations

from collections import defaultdict

from fusecli.evaluate.judge.questions import RESERVED
from fusecli.evaluate.summary import mean

OVERALL = RESERVED[0]


def _per_category(items: list[tuple[str, str, object]]) -> dict[str, dict[str, list]]:
    """(model, category, value) -> {model: {category: [values], overall: [values]}}, categories sorted."""
    grouped: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for model, category, value in items:
        grouped[model][category].append(value)
        grouped[model][OVERALL].append(value)
    return {m: {c: cats[c] for c in [*sorted(set(cats) - {OVERALL}), OVERALL]} for m, cats in grouped.items()}


def single_scores(records: list[dict]) -> dict[str, dict[str, dict]]:
    """Mean rating per model and category over the graded judgments; missing ratings counted apart."""
    items = [(r["model"], r["category"], r["rating"]) for r in records if r["kind"] == "single"]
    out: dict[str, dict[str, dict]] = {}
    for model, cats in _per_category(items).items():
        out[model] = {}
        for category, ratings in cats.items():
            graded = sum(x is not None for x in ratings)
            out[model][category] = {"score": mean(ratings), "graded": graded, "missing": len(ratings) - graded}
    return out


def outcome(model_first: str | None, model_second: str | None) -> str | None:
    """The model's result from the verdict with it shown as A and the one with it shown as B."""
    if model_first is None or model_second is None:
        return None
    first = {"A": "win", "B": "loss", "tie": "tie"}[model_first]
    second = {"B": "win", "A": "loss", "tie": "tie"}[model_second]
    return first if first == second else "tie"


def pairwise_scores(records: list[dict]) -> dict[str, dict[str, dict]]:
    """Wins, ties, losses, missing pairs and the win rate per model and category."""
    pairs: dict[tuple, dict[str, str | None]] = defaultdict(dict)
    category = {}
    for r in records:
        if r["kind"] == "pairwise":
            key = (r["model"], r["question_id"], r["turn"])
            pairs[key][r["model_is"]] = r["verdict"]
            category[key] = r["category"]
    items = [(key[0], category[key], outcome(v.get("A"), v.get("B"))) for key, v in pairs.items()]
    out: dict[str, dict[str, dict]] = {}
    for model, cats in _per_category(items).items():
        out[model] = {}
        for cat, results in cats.items():
            n = {k: results.count(k) for k in ("win", "tie", "loss")}
            decided = sum(n.values())
            out[model][cat] = {"win_rate": (n["win"] + n["tie"] / 2) / decided if decided else None,
                               "wins": n["win"], "ties": n["tie"], "losses": n["loss"],
                               "missing": len(results) - decided}
    return out

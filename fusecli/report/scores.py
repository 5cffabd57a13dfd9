"""Score tables, one way for reports/index.md and the model cards: per-domain values and their mean.

The mean is fusecli/evaluate/summary.py's, so a table's `mean` column is the `summary` of eval/metrics.json.
"""

from __future__ import annotations

from fusecli.evaluate.summary import BASELINES, gain, mean, model_means
from fusecli.markdown import table


def score_table(scores: dict[str, dict], metric: str, domains: list[str]) -> list[str]:
    rows = []
    for model, per_domain in scores.items():
        values = [per_domain.get(d, {}).get(metric) for d in domains]
        rows.append([model, *values, mean(values)])
    return table(["model", *domains, "mean"], rows)


def gain_table(scores: dict[str, dict], models: list[str]) -> list[str]:
    """Each model's mean EM and CE minus each baseline's (sft_baseline, pivot): the `summary.gain` of eval/metrics.json
    for `merged`. The headers say which sign is better: a CE gain is a difference, not an improvement."""
    rows = []
    for model in models:
        ours = model_means(scores[model])
        rows += [[model, b, *gain(ours, model_means(scores[b])).values()] for b in BASELINES if b in scores]
    return table(["model", "vs", "EM gain (higher is better)", "CE gain (lower is better)"], rows)

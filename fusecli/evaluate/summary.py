"""Summary metrics: each model's mean EM and CE over domains, and the merged model's gain over its baselines.

One function derives them from the per-domain scores (`summarize`); eval/metrics.json carries the result under
`summary`, reports/index.md and the model cards show it, and eval/summary.json is its terminal-sized slice: `dvc
metrics show` prints one column per key and has no key filter (targets are files), so the file a user passes
must be small. A domain without a value (EM None: no checkable answers) is left out of a mean, as in the
report's tables; a mean of nothing, and a gain involving it, is None.
"""

from __future__ import annotations

from fusecli.evaluate.names import MERGED

METRICS = ("em", "ce")  # greedy exact match (higher is better), response-token CE in nats (lower is better)
BASELINES = ("sft_baseline", "pivot")  # what the merged model has to beat: plain SFT, and the model it started from


def mean(values: list[float | None]) -> float | None:
    """The mean of the values present; None when none is."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def model_means(per_domain: dict[str, dict]) -> dict[str, float | None]:
    """{"em": mean over domains, "ce": mean over domains} of one model's eval/metrics.json entry."""
    return {m: mean([scores.get(m) for scores in per_domain.values()]) for m in METRICS}


def gain(model: dict[str, float | None], other: dict[str, float | None]) -> dict[str, float | None]:
    """`model` minus `other`, per metric: positive EM and negative CE mean `model` is better."""
    return {m: None if model[m] is None or other[m] is None else model[m] - other[m] for m in METRICS}


def gain_key(model: str, baseline: str) -> str:
    return f"{model}_vs_{baseline}"


def summarize(scores: dict[str, dict]) -> dict[str, dict]:
    """{"mean": {model: {"em", "ce"}}, "gain": {"merged_vs_<baseline>": {"em", "ce"}}} from {model: {domain: {...}}}."""
    means = {name: model_means(per_domain) for name, per_domain in scores.items()}
    gains = {gain_key(MERGED, b): gain(means[MERGED], means[b]) for b in BASELINES if MERGED in means and b in means}
    return {"mean": means, "gain": gains}


def terminal_summary(summary: dict[str, dict]) -> dict[str, dict]:
    """eval/summary.json: per metric, the merged model's mean and its gains (`em.merged`, `em.vs_pivot`, ...): six
    short keys, so `dvc metrics show` prints a line of about 110 characters."""
    gains = summary["gain"]
    return {
        m: {MERGED: summary["mean"][MERGED][m]}
        | {f"vs_{b}": gains[gain_key(MERGED, b)][m] for b in BASELINES if gain_key(MERGED, b) in gains}
        for m in METRICS
    }

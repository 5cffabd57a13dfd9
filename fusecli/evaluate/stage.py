"""The DVC `evaluate` stage: every model the pipeline made or used, side by side in eval/metrics.json.

Models: the pivot, each locked source (with its own tokenizer and template), sft_baseline, each
pair-fused model, `fuselm` (the FuseLLM-style row: one student distilled from every source at once),
`imf_sft` and `imf` (implicit fusion, FuseChat-3.0: trained on the sources' best sampled responses, then on
same-source preference pairs),
`merged:<method>` for every method in merge.methods, and `merged`, the default method's scores again
(so `dvc metrics diff` across merge.method changes reads one key).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from fusecli.errors import FusecliError
from fusecli.evaluate.cache import EvalCache
from fusecli.evaluate.names import FUSELM, IMF, IMF_SFT, MERGED, merged_name, model_names
from fusecli.evaluate.notes import metric_notes
from fusecli.evaluate.params import EvalParams
from fusecli.evaluate.run import EvalModel, evaluate
from fusecli.evaluate.summary import summarize
from fusecli.io import atomic_write_text
from fusecli.lock import read_lock
from fusecli.plan import MergeMethods, merged_weights


def pipeline_models(
    lock: str | Path,
    fused_dir: str | Path,
    fused_all: str | Path,
    baseline: str | Path,
    merged_dir: str | Path,
    imf_sft: str | Path,
    imf: str | Path,
    merge: MergeMethods,
) -> list[EvalModel]:
    locked = read_lock(lock)
    trust = locked.pivot.trust_remote_code  # every trained model is the pivot's architecture
    slugs = sorted(locked.sources)
    found = [EvalModel("pivot", locked.pivot.path, trust), EvalModel("sft_baseline", str(baseline), trust)]
    found += [EvalModel(f"source:{s}", locked.sources[s].path, locked.sources[s].trust_remote_code) for s in slugs]
    found += [EvalModel(f"fused:{s}", str(Path(fused_dir) / s), trust) for s in slugs]
    found.append(EvalModel(FUSELM, str(fused_all), trust))
    found += [EvalModel(IMF_SFT, str(imf_sft), trust), EvalModel(IMF, str(imf), trust)]
    found += [EvalModel(merged_name(m), str(merged_weights(Path(merged_dir) / m)), trust) for m in merge.methods]
    by_name = {m.name: m for m in found}
    models = [by_name[name] for name in model_names(slugs, list(merge.methods)) if name != MERGED]
    for m in models:
        if not Path(m.path).is_dir():
            raise FusecliError(f"{m.path} not found (model {m.name}): run `dvc repro` to build it")
    return models


def native_settings(params: EvalParams) -> dict:
    """The settings that decide native scores (the key of the result cache)."""
    settings = asdict(params)
    for key in ("backend", "lm_eval", "judge"):
        settings.pop(key)
    return settings


def run(
    params: EvalParams,
    models: list[EvalModel],
    data: str | Path,
    merge: MergeMethods,
    cache_dir: str | Path | None = None,
    judgments: str | Path | None = None,
) -> dict:
    """Native scores of `models` (+ lm-evaluation-harness tasks with backend lm_eval, + judged scores with
    backend judge, their raw judgments written to `judgments`), `merged` aliased, and their summary
    (fusecli/evaluate/summary.py)."""
    by_name = {m.name: m for m in models}
    by_name[MERGED] = replace(by_name[merged_name(merge.default)], name=MERGED)
    harness = params.lm_eval.models if params.backend == "lm_eval" else []
    unknown = [n for n in harness if n not in by_name]
    if unknown:
        raise FusecliError(
            f"evaluate.lm_eval.models names {unknown[0]!r}, which is not evaluated: use one of {', '.join(by_name)}"
        )
    aliases = {MERGED: merged_name(merge.default)}
    if params.backend == "judge":
        from fusecli.evaluate.judge.backend import plan_judge, run_judge  # openai is an optional extra

        judge = plan_judge(params, by_name, aliases)  # a bad setting stops the stage before any scoring
    cache = EvalCache(cache_dir, data, native_settings(params)) if cache_dir else None
    metrics = evaluate(models, data, params, cache)
    scores = metrics["models"]
    scores[MERGED] = scores[merged_name(merge.default)]
    metrics["summary"] = summarize(scores)
    metrics["notes"] = metric_notes(scores, params)  # why a score is missing or partial
    if harness:
        from fusecli.evaluate.harness import run_harness  # lm-eval is an optional extra

        metrics["lm_eval"] = run_harness([by_name[n] for n in harness], data, params)
    if params.backend == "judge":
        metrics.update(run_judge(judge, params, cache_dir, judgments, aliases))
    elif judgments is not None:
        atomic_write_text(judgments, "")  # no judgments: none left over from an earlier judged run
    return metrics

"""`evaluate.backend: lm_eval`: EleutherAI's lm-evaluation-harness tasks on the merged model(s).

Real models are compared on the harness's public tasks (`evaluate.lm_eval.tasks`, downloaded by the
harness). The task `fusecli_heldout` needs no download: it is this pipeline's own held-out split,
written as a JSONL and one generate-until task YAML per domain with checkable answers, so the
harness's greedy exact match can be checked against the native one, offline. Its prompt is the
dialogue's last user turn, rendered by the harness with the model's chat template.
Install with `pip install -e '.[eval]'`.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from fusecli.device import resolve_device, resolve_dtype
from fusecli.errors import FusecliError
from fusecli.evaluate.params import EvalParams
from fusecli.evaluate.run import EvalModel

LOCAL_TASK = "fusecli_heldout"
SKIPPED_KEYS = ("alias", "name", "sample_len", "samples")


def task_name(domain: str) -> str:
    return f"{LOCAL_TASK}_{re.sub(r'[^a-z0-9]+', '_', domain.lower()).strip('_')}"


def write_local_tasks(df: pl.DataFrame, folder: Path, max_new_tokens: int) -> list[str]:
    """One JSONL and one task YAML per domain with checkable answers; return the task names."""
    names = []
    checkable = df.filter(pl.col("answer").is_not_null())
    for (domain,), rows in sorted(checkable.group_by("domain"), key=lambda g: g[0][0]):
        name = task_name(domain)
        data = folder / f"{name}.jsonl"
        with data.open("w") as f:
            for row in rows.iter_rows(named=True):
                turns = json.loads(row["messages"])
                question = [t["content"] for t in turns if t["role"] == "user"][-1]
                f.write(json.dumps({"id": row["id"], "question": question, "answer": row["answer"]}) + "\n")
        task = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
            "test_split": "test",
            "output_type": "generate_until",
            "doc_to_text": "{{question}}",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": [], "max_gen_toks": max_new_tokens, "do_sample": False},
            # the native scorer's normalisation: case and surrounding whitespace do not count
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_case": True, "regexes_to_ignore": [r"^\s+", r"\s+$"]}],
        }
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
        names.append(name)
    return names


def _task_manager(include: list[str], wanted: list[str]) -> Any:
    """Index only our folders when they hold every wanted task: the harness's own index takes seconds."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include, include_defaults=False)
    if all(t in manager.all_tasks for t in wanted):
        return manager
    return TaskManager(include_path=include)


def scores_of(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The harness's `{task: {"metric,filter": value}}` -> `{task: {metric: value}}`, numbers only."""
    out: dict[str, dict[str, float]] = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if key in SKIPPED_KEYS or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            name = metric if filt in ("", "none") else f"{metric}_{filt}"
            out.setdefault(task, {})[name] = float(value)
    return out


def run_harness(models: list[EvalModel], data: str | Path, params: EvalParams) -> dict[str, dict]:
    """Run `params.lm_eval.tasks` on each model; `{model: {task: {metric: value}}}`."""
    try:
        import lm_eval
    except ImportError:
        raise FusecliError(
            "evaluate.backend = lm_eval needs lm-evaluation-harness: pip install -e '.[eval]'"
        ) from None
    opts = params.lm_eval
    device = resolve_device(params.device)
    dtype = str(resolve_dtype(params.dtype, device)).removeprefix("torch.")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fusecli-lm-eval-") as tmp:
        local = write_local_tasks(pl.read_parquet(data), Path(tmp), params.max_new_tokens)
        tasks = [t for name in opts.tasks for t in (local if name == LOCAL_TASK else [name])]
        if not tasks:
            raise FusecliError(f"no lm_eval task to run: {data} has no checkable answers for {LOCAL_TASK}")
        include = [tmp] + ([str(Path(opts.include_path).resolve())] if opts.include_path else [])
        manager = _task_manager(include, tasks)
        for m in models:
            out = lm_eval.simple_evaluate(
                model="hf",
                model_args={"pretrained": m.path, "dtype": dtype, "trust_remote_code": m.trust_remote_code},
                tasks=tasks,
                task_manager=manager,
                num_fewshot=opts.num_fewshot,
                batch_size=opts.batch_size,
                device=str(device),
                limit=opts.limit,
                apply_chat_template=opts.apply_chat_template,
                log_samples=False,
            )
            results[m.name] = scores_of(out["results"] if out else {})
    return results

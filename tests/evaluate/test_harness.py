"""The lm_eval backend: the held-out split as local harness tasks, run offline on a tiny model."""

import json
from dataclasses import replace

import polars as pl
import pytest
import torch
import yaml

from fusecli.data.render import prompt_text
from fusecli.errors import FusecliError
from fusecli.evaluate.harness import run_harness, scores_of, write_local_tasks
from fusecli.evaluate.params import EvalParams
from fusecli.evaluate.run import EvalModel, greedy_answers, score_model
from fusecli.evaluate.stage import run
from fusecli.evaluate.tables import report_markdown
from fusecli.models import load_model, load_tokenizer
from fusecli.plan import MergeMethods
from tests.params import section
from tests.tiny import write_dataset, write_model

pytest.importorskip("lm_eval")

BASE = section(EvalParams, "evaluate")
PARAMS = replace(BASE, batch_size=4, max_new_tokens=4, max_length=64, device="cpu", dtype="float32",
                 backend="lm_eval", lm_eval=replace(BASE.lm_eval, batch_size=4))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model and held-out rows whose gold answer is the model's own greedy answer on every other
    row, so exact match is 0.5 by construction (a random model would score 0 either way)."""
    root = tmp_path_factory.mktemp("harness")
    model = write_model(root / "m", "llama", 300, seed=3)
    df = pl.read_parquet(write_dataset(root / "raw.parquet", 8))
    tok = load_tokenizer(model)
    prompts = [prompt_text(tok, json.loads(m)) for m in df["messages"]]
    preds = greedy_answers(load_model(model, torch.device("cpu"), torch.float32), tok, prompts, PARAMS.batch_size,
                           PARAMS.max_new_tokens, torch.device("cpu"))
    answers = [p.strip() if i % 2 == 0 else "no such answer" for i, p in enumerate(preds)]
    df.with_columns(pl.Series("answer", answers)).write_parquet(root / "eval.parquet")
    return root


def test_local_tasks_one_per_domain_with_answers(world, tmp_path):
    df = pl.read_parquet(world / "eval.parquet")
    df = df.with_columns(pl.when(pl.col("domain") == "region").then(None).otherwise(pl.col("answer")).alias("answer"))
    names = write_local_tasks(df, tmp_path, 7)
    assert names == ["fusecli_heldout_capital", "fusecli_heldout_currency"]  # region: no checkable answers
    task = yaml.safe_load((tmp_path / "fusecli_heldout_capital.yaml").read_text())
    assert task["output_type"] == "generate_until" and task["generation_kwargs"]["max_gen_toks"] == 7
    rows = [json.loads(line) for line in (tmp_path / "fusecli_heldout_capital.jsonl").read_text().splitlines()]
    assert {r["answer"] for r in rows} <= set(df["answer"].drop_nulls()) and all(r["question"] for r in rows)


def test_scores_of_keeps_numbers_and_drops_stderr():
    raw = {"t": {"alias": "t", "exact_match,none": 0.5, "exact_match_stderr,none": 0.1, "acc,strict": 1}}
    assert scores_of(raw) == {"t": {"exact_match": 0.5, "acc_strict": 1.0}}


def test_harness_exact_match_equals_the_native_one(world):
    model = EvalModel("merged", str(world / "m"))
    harness = run_harness([model], world / "eval.parquet", PARAMS)
    native = score_model(model, pl.read_parquet(world / "eval.parquet"), PARAMS)
    for domain, scores in native.items():
        assert harness["merged"][f"fusecli_heldout_{domain}"]["exact_match"] == pytest.approx(scores["em"])
    assert 0 < sum(s["em"] for s in native.values()) < len(native)  # neither all wrong nor all right


def test_backend_lm_eval_folds_its_scores_into_the_metrics(world):
    m = str(world / "m")
    models = [EvalModel("pivot", m), EvalModel("merged:sce", m)]
    metrics = run(PARAMS, models, world / "eval.parquet", MergeMethods("sce", ("sce",)))
    assert set(metrics["models"]) == {"pivot", "merged:sce", "merged"}
    assert set(metrics["lm_eval"]) == {"merged"}
    assert {"fusecli_heldout_capital", "fusecli_heldout_currency", "fusecli_heldout_region"} == set(
        metrics["lm_eval"]["merged"])
    assert "## lm-evaluation-harness" in report_markdown(metrics)
    wrong = replace(PARAMS, lm_eval=replace(PARAMS.lm_eval, models=("fused:x",)))
    with pytest.raises(FusecliError, match="evaluate.lm_eval.models names 'fused:x'"):
        run(wrong, models, world / "eval.parquet", MergeMethods("sce", ("sce",)))

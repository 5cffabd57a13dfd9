import json

import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from fusecli.data.render import prompt_text, render, tokenize
from fusecli.errors import FusecliError
from fusecli.evaluate.params import EvalParams
from fusecli.evaluate.run import BanFirstTokens, EvalModel, evaluate, greedy_answers, response_ce
from fusecli.evaluate.tables import report_markdown
from fusecli.models import load_tokenizer
from tests.params import section
from tests.tiny import write_dataset, write_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    write_dataset(d / "eval.parquet", 9)
    write_model(d / "m", "llama", 300, seed=5)
    return d


def test_batched_left_padded_greedy_equals_one_by_one(tiny):
    tok = load_tokenizer(tiny / "m")
    model = AutoModelForCausalLM.from_pretrained(tiny / "m").eval()
    df = pl.read_parquet(tiny / "eval.parquet")
    prompts = [prompt_text(tok, json.loads(m)) for m in df["messages"]]
    batched = greedy_answers(model, tok, prompts, 4, 5, torch.device("cpu"))
    single = [greedy_answers(model, tok, [p], 4, 5, torch.device("cpu"))[0] for p in prompts]
    assert batched == single
    # a row that rules an answer out never starts with it (the demo's excluded named member)
    scores = torch.zeros(2, 10)
    BanFirstTokens([[3], [4, 5]], prompt_width=7)(torch.zeros(2, 7), scores)
    assert scores[0, 3] == scores[1, 4] == scores[1, 5] == -torch.inf and scores.isfinite().sum() == 17
    later = torch.zeros(2, 10)
    BanFirstTokens([[3], [4]], prompt_width=7)(torch.zeros(2, 8), later)
    assert later.isfinite().all()  # only the first reply token is constrained


def test_response_ce_equals_naive_mean_over_response_tokens(tiny):
    tok = load_tokenizer(tiny / "m")
    model = AutoModelForCausalLM.from_pretrained(tiny / "m").eval()
    dialogues = [json.loads(m) for m in pl.read_parquet(tiny / "eval.parquet")["messages"]]
    ces = response_ce(model, tok, dialogues, section(EvalParams, "evaluate", batch_size=3), torch.device("cpu"))
    for d, ce in zip(dialogues, ces, strict=True):
        it = tokenize(tok, render(tok, d))
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.as_tensor(it.input_ids[None])).logits[0], -1)
        t = np.nonzero(it.label_mask)[0]
        np.testing.assert_allclose(ce, -logp[t - 1, it.input_ids[t]].numpy(), atol=1e-5)


def test_metrics_shape_and_em_from_the_last_reply(tiny, tmp_path):
    df = pl.read_parquet(tiny / "eval.parquet")  # every `answer` is the row's last reply
    df.with_columns(pl.when(pl.col("domain") == "region").then(None).otherwise(pl.col("answer")).alias("answer")
                    ).write_parquet(tmp_path / "eval.parquet")
    params = section(EvalParams, "evaluate", batch_size=4)
    metrics = evaluate([EvalModel("pivot", str(tiny / "m"))], tmp_path / "eval.parquet", params)
    with_answers = evaluate([EvalModel("pivot", str(tiny / "m"))], tiny / "eval.parquet", params)["models"]["pivot"]
    scores = metrics["models"]["pivot"]
    assert set(scores) == {"capital", "currency", "region"}
    # region has no `answer`: its EM is scored against the last assistant reply, as if it were the answer
    assert scores["region"]["em"] == with_answers["region"]["em"] and scores["region"]["ce"] > 0
    assert scores["region"] | {"em_reply": 0} == with_answers["region"]
    assert (scores["region"]["rows"], scores["region"]["em_rows"], scores["region"]["em_reply"]) == (3, 3, 3)
    assert scores["capital"]["em_reply"] == 0 and scores["capital"]["ce_rows"] == 3
    assert 0.0 <= scores["capital"]["em"] <= 1.0
    assert scores["capital"]["ppl"] == pytest.approx(np.exp(scores["capital"]["ce"]))
    text = report_markdown(metrics)
    assert "| pivot |" in text and "EM 3 (3 from replies), CE 3 of 3" in text


def test_a_score_that_cannot_be_computed_says_why(tiny, tmp_path):
    from fusecli.evaluate.notes import metric_notes

    df = pl.read_parquet(tiny / "eval.parquet")
    df.with_columns(pl.when(pl.col("domain") == "region").then(None).otherwise(pl.col("answer")).alias("answer")
                    ).write_parquet(tmp_path / "eval.parquet")
    params = section(EvalParams, "evaluate", batch_size=4, max_new_tokens=1)  # no reply fits in one token
    models = [EvalModel("pivot", str(tiny / "m")), EvalModel("sft_baseline", str(tiny / "m"))]
    scores = evaluate(models, tmp_path / "eval.parquet", params)["models"]
    region, capital = scores["pivot"]["region"], scores["pivot"]["capital"]
    assert region["em"] is None and (region["em_rows"], region["em_too_long"]) == (0, 3)
    assert capital["em"] == 0.0 and capital["em_answer_cut"] == 3  # an `answer` that long is a miss, counted
    notes = metric_notes(scores, params)
    assert ("EM not computed for region: its 3 rows have no `answer` and a last reply longer than "
            "evaluate.max_new_tokens = 1 tokens: give them a short `answer`, or raise evaluate.max_new_tokens "
            "(every model)") in notes
    assert ("EM for capital: 3 `answer`s are longer than evaluate.max_new_tokens = 1 tokens and score as misses: "
            "raise evaluate.max_new_tokens (every model)") in notes
    short = section(EvalParams, "evaluate", batch_size=4, max_length=3)  # no response token within 3 tokens
    scores = evaluate(models[:1], tmp_path / "eval.parquet", short)["models"]
    assert scores["pivot"]["capital"]["ce"] is None and scores["pivot"]["capital"]["ce_rows"] == 0
    assert ("CE not computed for capital: none of its 3 rows has a response token within evaluate.max_length = 3 "
            "tokens: raise evaluate.max_length (every model)") in metric_notes(scores, short)


def test_empty_eval_set_is_a_clear_error(tiny, tmp_path):
    pl.read_parquet(tiny / "eval.parquet").head(0).write_parquet(tmp_path / "e.parquet")
    with pytest.raises(FusecliError, match="no evaluation rows"):
        evaluate([EvalModel("pivot", str(tiny / "m"))], tmp_path / "e.parquet", section(EvalParams, "evaluate"))

"""The evaluate stage's model list, the merge.methods contract, the result cache and the `merged` alias."""

import shutil

import pytest

import fusecli.evaluate.run as run_module
from fusecli.errors import FusecliError
from fusecli.evaluate.params import EvalParams
from fusecli.evaluate.stage import pipeline_models, run
from fusecli.evaluate.summary import summarize
from fusecli.lock import Lock, ModelEntry, dump_lock
from fusecli.plan import MergeMethods
from tests.params import section
from tests.tiny import write_dataset, write_model

METHODS = MergeMethods("sce", ("sce", "ties"))


def entry(name, path):
    return ModelEntry(name=name, origin="local", path=str(path), repo=None, revision=None,
                      content_hash="sha256:" + "0" * 64, architecture="LlamaForCausalLM", vocab_size=300,
                      dtype="float32", chat_template_hash=None, trust_remote_code=False, allow_pickle=False)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace whose every model folder is a copy of one tiny model (so the cache scores it once)."""
    root = tmp_path_factory.mktemp("evalws")
    write_dataset(root / "eval.parquet", 6)
    model = write_model(root / "model", "llama", 300, seed=1)
    folders = ["pivot", "src/b", "src/a", "baseline", "fused/a", "fused/b", "fused_all", "merged/sce", "merged/ties",
               "imf/sft", "imf/dpo"]
    for f in folders:
        shutil.copytree(model, root / f)
    lock = Lock(pivot=entry("pivot", root / "pivot"), sources={"b": entry("b", root / "src/b"),
                                                               "a": entry("a", root / "src/a")})
    (root / "models.lock").write_text(dump_lock(lock))
    return root


def models_of(ws):
    return pipeline_models(ws / "models.lock", ws / "fused", ws / "fused_all", ws / "baseline", ws / "merged",
                           ws / "imf/sft", ws / "imf/dpo", METHODS)


def test_every_model_in_a_fixed_order(ws):
    names = [m.name for m in models_of(ws)]
    assert names == ["pivot", "source:a", "source:b", "sft_baseline", "fused:a", "fused:b", "fuselm",
                     "imf_sft", "imf", "merged:sce", "merged:ties"]


def test_a_missing_model_folder_is_a_clear_error(ws):
    with pytest.raises(FusecliError, match=r"merged/dare_linear not found \(model merged:dare_linear\)"):
        pipeline_models(ws / "models.lock", ws / "fused", ws / "fused_all", ws / "baseline", ws / "merged",
                        ws / "imf/sft", ws / "imf/dpo", MergeMethods("sce", ("sce", "dare_linear")))


def test_merged_is_the_default_method_and_unchanged_models_are_not_rescored(ws, monkeypatch):
    calls = []
    score = run_module.score_model
    monkeypatch.setattr(run_module, "score_model", lambda m, df, p: calls.append(m.name) or score(m, df, p))
    params = section(EvalParams, "evaluate", batch_size=8, max_new_tokens=3, max_length=64)
    metrics = run(params, models_of(ws), ws / "eval.parquet", METHODS, ws / "cache")
    assert calls == ["pivot"]  # the other ten folders hold the same files: read back from the cache
    assert set(metrics["models"]) == {m.name for m in models_of(ws)} | {"merged"}
    assert metrics["models"]["merged"] == metrics["models"]["merged:sce"]
    assert metrics["summary"] == summarize(metrics["models"])  # the summary block of eval/metrics.json

    calls.clear()
    changed = write_model(ws / "other", "llama", 300, seed=2)
    shutil.rmtree(ws / "fused" / "b")
    shutil.copytree(changed, ws / "fused" / "b")
    again = run(params, models_of(ws), ws / "eval.parquet", METHODS, ws / "cache")
    assert calls == ["fused:b"]
    assert again["models"]["pivot"] == metrics["models"]["pivot"]

    calls.clear()
    other = section(EvalParams, "evaluate", batch_size=8, max_new_tokens=4, max_length=64)
    run(other, models_of(ws), ws / "eval.parquet", METHODS, ws / "cache")
    assert calls == ["pivot", "fused:b"]  # new settings: a new key per distinct model


def test_notes_say_once_for_every_model_why_a_score_is_partial(ws):
    """Every folder holds the same model: one note per cause, naming every model (the `merged` alias not twice)."""
    from fusecli.evaluate.notes import metric_notes

    params = section(EvalParams, "evaluate", batch_size=8, max_new_tokens=1, max_length=64)
    metrics = run(params, models_of(ws), ws / "eval.parquet", METHODS, ws / "cache")
    assert metrics["notes"] == metric_notes(metrics["models"], params) and metrics["notes"]
    assert all(n.endswith("(every model)") for n in metrics["notes"])
    assert any(n.startswith("EM for capital: 2 `answer`s are longer than evaluate.max_new_tokens = 1 tokens")
               for n in metrics["notes"])

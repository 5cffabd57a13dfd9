import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from fusecli.errors import FusecliError
from fusecli.lock import Lock, ModelEntry, dump_lock
from fusecli.merge.params import merge_params
from fusecli.merge.stage import locked_slugs
from fusecli.merge.stage import run as run_stage
from tests.test_card import hub_lock

from . import reference

STAGE = Path(__file__).resolve().parents[2] / "stages" / "merge.py"


def stage_main():
    spec = importlib.util.spec_from_file_location("merge_stage", STAGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def workspace(tiny, tmp_path):
    for slug, path in (("beta", tiny.m1), ("alpha", tiny.m2), ("gamma", tiny.m3)):
        shutil.copytree(path, tmp_path / "fused" / slug)
    merge = {"method": "ties", "methods": ["ties"], "device": "cpu", "max_shard_size": "5GB",
             "ties": {"weight": [0.5, 0.3], "density": 0.6, "normalize": True}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"merge": merge}))
    return tmp_path


def entry(name):
    return ModelEntry(name=name, origin="local", path=f"m/{name}", repo=None, revision=None,
                      content_hash="sha256:" + "0" * 64, architecture="Qwen2ForCausalLM", vocab_size=64,
                      dtype="float32",
                      chat_template_hash=None, trust_remote_code=False, allow_pickle=False)


def write_lock(path, slugs):
    path.write_text(dump_lock(Lock(pivot=entry("base"), sources={s: entry(s) for s in slugs})))
    return path


def run(workspace, tiny, lock, out):
    argv = ["--params", str(workspace / "params.yaml"), "--lock", str(lock), "--fused-dir", str(workspace / "fused")]
    stage_main()(argv + ["--base", str(tiny.base), "--out", str(workspace / out)])
    return workspace / out


def test_merges_exactly_the_locked_sources_in_sorted_order(workspace, tiny, capsys):
    a = run(workspace, tiny, write_lock(workspace / "a.lock", ["beta", "alpha"]), "a")
    b = run(workspace, tiny, write_lock(workspace / "b.lock", ["alpha", "beta"]), "b")
    assert reference.files(a) == reference.files(b)
    report = yaml.safe_load((a / "merge_report.json").read_text())
    assert list(report["models"]) == ["alpha", "beta"]  # gamma is in fused/ but not locked
    assert report["options"]["weight"] == [0.5, 0.3]
    assert "merged alpha, beta onto" in capsys.readouterr().out


def test_missing_fused_model_fails_clearly(workspace, tiny, capsys):
    lock = write_lock(workspace / "models.lock", ["alpha", "delta"])
    with pytest.raises(SystemExit) as exc:
        run(workspace, tiny, lock, "merged")
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "fused/delta not found" in err and "dvc repro fuse@delta" in err
    assert not (workspace / "merged").exists()


def test_bad_lock_files(tmp_path):
    write_lock(tmp_path / "models.lock", [])
    with pytest.raises(FusecliError, match="lists no sources"):
        locked_slugs(tmp_path / "models.lock")
    (tmp_path / "models.lock").write_text("[1, 2\n")
    with pytest.raises(FusecliError, match="YAML"):
        locked_slugs(tmp_path / "models.lock")


@pytest.mark.parametrize("hub", [True, False])
def test_merge_stage_names_the_locked_pivot_and_sources(tiny, tmp_path, hub):
    for slug, path in (("alpha", tiny.m1), ("beta", tiny.m2)):
        shutil.copytree(path, tmp_path / "fused" / slug)
    lock = hub_lock() if hub else Lock(pivot=entry("pivot"), sources={s: entry(s) for s in ("alpha", "beta")})
    (tmp_path / "models.lock").write_text(dump_lock(lock))
    out = run_stage(merge_params("linear"), tmp_path / "models.lock", tmp_path / "fused", tiny.base,
                    tmp_path / "merged").out
    data = ModelCard.load(out / "README.md").data.to_dict()
    assert data.get("base_model") == (["org/Pivot-7B"] if hub else None)
    assert set(data["fusecli"]["sources"]) == {"alpha", "beta"}
    assert data["fusecli"]["merged"]["models"] == {"alpha": str(tmp_path / "fused/alpha"),
                                                   "beta": str(tmp_path / "fused/beta")}


def test_one_source_merge_is_that_model_and_writes_no_copy(workspace, tiny, capsys, monkeypatch):
    """Seven methods once wrote seven copies of the one fused model: now each writes its card and report only,
    and every reader of merged/<method> (evaluate, `fusecli card`) gets the fused model's folder."""
    from fusecli.evaluate.stage import pipeline_models
    from fusecli.plan import IDENTITY, MergeMethods, merged_weights
    from fusecli.report.card import upload_folder

    out = run(workspace, tiny, write_lock(workspace / "one.lock", ["alpha"]), "merged/ties")
    fused = workspace / "fused" / "alpha"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "merge_report.json"]  # no weights
    report = yaml.safe_load((out / "merge_report.json").read_text())
    assert report[IDENTITY] == fused.as_posix() and list(report["models"]) == ["alpha"]
    assert report["options"]["weight"] == [0.5, 0.3]  # as written: weights do not apply to one model
    assert merged_weights(out) == fused and merged_weights(workspace / "fused" / "beta") == workspace / "fused" / "beta"
    card = ModelCard((out / "README.md").read_text())
    assert card.data.to_dict()["fusecli"]["merge"]["method"] == "ties" and "## One source" in card.text
    assert "one source: " in capsys.readouterr().out

    monkeypatch.chdir(workspace)
    for folder in ("m/base", "m/alpha", "fused_all", "sft", "imf/sft", "imf/dpo"):  # the other models evaluate scores
        (workspace / folder).mkdir(parents=True)
    lock = write_lock(workspace / "one.lock", ["alpha"])
    found = pipeline_models(lock, workspace / "fused", "fused_all", "sft", workspace / "merged", "imf/sft", "imf/dpo",
                            MergeMethods("ties", ("ties",)))
    models = {m.name: m.path for m in found}
    assert models["merged:ties"] == models["fused:alpha"] == str(fused)
    (workspace / "card.md").write_text("card\n")
    upload = upload_folder(merged_weights(out), workspace / "card.md", workspace / "upload")
    assert (upload / "model.safetensors").read_bytes() == (fused / "model.safetensors").read_bytes()
    assert (upload / "README.md").read_text() == "card\n"


def test_two_sources_still_merge(workspace, tiny):
    out = run(workspace, tiny, write_lock(workspace / "two.lock", ["alpha", "beta"]), "merged/ties")
    assert any(out.glob("*.safetensors"))
    assert "identity" not in yaml.safe_load((out / "merge_report.json").read_text())


def test_one_source_with_a_grown_vocabulary_is_merged_for_real(workspace, tiny):
    """Cropped to the base, the merge is not the fused model itself: its weights are written."""
    shutil.copytree(tiny.m3_grown, workspace / "fused" / "grown")
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["merge"]["ties"]["weight"] = 1.0  # one weight for one model (the fixture's two are for two)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    out = run(workspace, tiny, write_lock(workspace / "grown.lock", ["grown"]), "merged/ties")
    report = yaml.safe_load((out / "merge_report.json").read_text())
    assert "identity" not in report and report["cropped"]
    assert any(out.glob("*.safetensors"))

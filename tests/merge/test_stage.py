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

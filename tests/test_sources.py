from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest

from fusecli import hashing, sources
from fusecli.errors import FusecliError

SHA = "0123456789abcdef0123456789abcdef01234567"


def pin_folder(ref: str | Path, root: Path, **kw: object):
    return sources.pin(sources.locate(str(ref), root, kw.pop("name", None)), root, **kw)  # type: ignore[arg-type]


# --- locate: classifying a reference -------------------------------------------------------------


def test_derive_slug() -> None:
    assert sources.derive_slug("Qwen1.5-72B-Chat") == "qwen1-5-72b-chat"
    assert sources.derive_slug("openchat_3.5") == "openchat_3-5"
    with pytest.raises(FusecliError, match="pass --name"):
        sources.derive_slug("...")


def test_aliases_resolve_to_the_papers_repos(ws: Path) -> None:
    located = sources.locate("mixtral-8x7b-instruct", ws)  # case-insensitive
    assert located.repo == "mistralai/Mixtral-8x7B-Instruct-v0.1" and located.slug == "mixtral-8x7b-instruct-v0-1"
    qwen = "Qwen/Qwen1.5-72B-Chat"
    assert sources.locate("Qwen1.5-Chat-72B", ws).repo == sources.locate("Qwen1.5-72B", ws).repo == qwen
    assert sources.locate("OpenChat-3.5-7B", ws, name="openchat").slug == "openchat"
    with pytest.raises(FusecliError, match="pass --trust-remote-code"):
        sources.locate("InternLM2-Chat-20B", ws)
    assert sources.locate("InternLM2-Chat-20B", ws, trust_remote_code=True).repo == "internlm/internlm2-chat-20b"


def test_locate_errors(ws: Path) -> None:
    with pytest.raises(FusecliError, match="valid aliases are OpenChat-3.5-7B, Starling-LM-7B-alpha"):
        sources.locate("gpt-5", ws)
    with pytest.raises(FusecliError, match="model folder ./missing does not exist"):
        sources.locate("./missing", ws)
    with pytest.raises(FusecliError, match="model folder local/missing/x does not exist"):
        sources.locate("local/missing/x", ws)
    with pytest.raises(FusecliError, match="invalid slug 'Bad!'"):
        sources.locate("local/qwen", ws, name="Bad!")
    with pytest.raises(FusecliError, match="drop --revision"):
        sources.locate("local/qwen", ws, revision="main")
    with pytest.raises(FusecliError, match="is a file, not a model folder"):
        sources.locate("local/qwen/config.json", ws)
    assert sources.locate("owner/repo", ws).repo == "owner/repo"


# --- local folders -------------------------------------------------------------------------------


def test_local_folder_is_described_from_its_files(ws: Path) -> None:
    entry = pin_folder("local/qwen", ws)
    assert (entry.name, entry.origin, entry.path) == ("qwen", "local", "local/qwen")
    assert (entry.architecture, entry.dtype) == ("Qwen2ForCausalLM", "float32")
    assert entry.vocab_size == json.loads((ws / "local/qwen/config.json").read_text())["vocab_size"]
    jinja = (ws / "local/qwen/chat_template.jinja").read_bytes()
    assert entry.chat_template_hash == "sha256:" + hashlib.sha256(jinja).hexdigest()
    assert entry.content_hash.startswith("sha256:") and not entry.trust_remote_code and not entry.allow_pickle
    assert pin_folder("local/llama", ws).architecture == "LlamaForCausalLM"


def test_paths_inside_are_relative_outside_absolute_and_demo_is_pinned_by_dvc(ws: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "qwen"
    shutil.copytree(ws / "local/qwen", outside)
    assert pin_folder(outside, ws).path == outside.as_posix()
    assert pin_folder(ws / "local" / ".." / "local" / "qwen", ws).path == "local/qwen"  # never stores '..'
    shutil.copytree(ws / "local/qwen", ws / "demo/models/qwen2-languages")
    demo = pin_folder("demo/models/qwen2-languages", ws)
    assert (demo.origin, demo.content_hash, demo.name) == ("demo", "dvc", "qwen2-languages")


def test_weights_config_and_tokenizer_are_required(ws: Path) -> None:
    folder = ws / "local/qwen"
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(FusecliError, match="only pickle weights .*pass --allow-pickle"):
        pin_folder(folder, ws)
    entry = pin_folder(folder, ws, allow_pickle=True)
    assert entry.allow_pickle and entry.content_hash.startswith("sha256:")
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(FusecliError, match="has no safetensors weights"):
        pin_folder(folder, ws)
    llama = ws / "local/llama"
    (llama / "tokenizer.json").unlink()
    with pytest.raises(FusecliError, match="has no tokenizer"):
        pin_folder(llama, ws)
    (llama / "config.json").unlink()
    with pytest.raises(FusecliError, match="has no config.json"):
        pin_folder(llama, ws)


def test_missing_shard_is_reported(ws: Path) -> None:
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (ws / "local/qwen/model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FusecliError, match="missing shard model-00002-of-00002.safetensors"):
        pin_folder("local/qwen", ws)


def test_remote_code_needs_the_flag(ws: Path) -> None:
    config_path = ws / "local/qwen/config.json"
    config = json.loads(config_path.read_text())
    config.update(model_type="tinycustom", auto_map={"AutoConfig": "configuration_tiny.TinyConfig"})
    config_path.write_text(json.dumps(config))
    with pytest.raises(FusecliError, match="model_type 'tinycustom'.*needs custom code: pass --trust-remote-code"):
        pin_folder("local/qwen", ws)


# --- hub (huggingface_hub monkeypatched: never the network) ---------------------------------------


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tiny_models: dict[str, Path]) -> dict[str, object]:
    """HfApi.model_info / snapshot_download stand-ins serving the tiny Llama folder as any repo."""
    calls: dict[str, object] = {"files": sorted(p.name for p in tiny_models["llama"].iterdir()) + ["README.md"]}

    class FakeApi:
        def model_info(self, repo: str, revision: str | None = None) -> SimpleNamespace:
            calls["info"] = (repo, revision)
            files = calls["files"]
            return SimpleNamespace(sha=SHA, siblings=[SimpleNamespace(rfilename=f) for f in files])  # type: ignore[union-attr]

    def fake_snapshot(repo: str, *, revision: str, local_dir: Path, allow_patterns: list[str]) -> str:
        calls["download"] = (repo, revision, Path(local_dir), allow_patterns)
        shutil.copytree(tiny_models["llama"], local_dir, dirs_exist_ok=True)
        (Path(local_dir) / ".cache/huggingface").mkdir(parents=True, exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    return calls


def test_hub_repo_is_pinned_to_a_commit_and_downloaded(
    ws: Path, fake_hub: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    stale = ws / "models/starling-lm-7b-alpha/model-00009-of-00009.safetensors"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from an earlier snapshot")
    entry = pin_folder("Starling-LM-7B-alpha", ws, revision="v1")
    assert fake_hub["info"] == ("berkeley-nest/Starling-LM-7B-alpha", "v1")
    repo, revision, local_dir, patterns = fake_hub["download"]
    assert (repo, revision) == ("berkeley-nest/Starling-LM-7B-alpha", SHA)
    assert local_dir == ws / "models/starling-lm-7b-alpha"
    assert "*.safetensors" in patterns and "tokenizer.json" in patterns and "*.py" not in patterns
    assert (entry.origin, entry.repo, entry.revision, entry.path) == (
        "hub", "berkeley-nest/Starling-LM-7B-alpha", SHA, "models/starling-lm-7b-alpha")
    assert not stale.exists()
    assert entry.content_hash == hashing.content_hash(ws / "local/llama")  # same files, same hash
    for path in ws.rglob("*"):
        assert not path.is_file() or b"hf_secret_token_value" not in path.read_bytes()


def test_hub_refuses_pickle_only_repos_before_downloading(ws: Path, fake_hub: dict) -> None:
    fake_hub["files"] = ["config.json", "pytorch_model.bin", "tokenizer.json"]
    with pytest.raises(FusecliError, match="no safetensors weights: .*--allow-pickle"):
        pin_folder("owner/pickled", ws)
    assert "download" not in fake_hub


def test_hub_errors_are_one_line(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class NotFound(huggingface_hub.errors.RepositoryNotFoundError):
        def __init__(self) -> None:  # the real one wants an HTTP response object
            Exception.__init__(self, "404 Client Error.\n\nRepository Not Found")

    class MissingApi:
        def model_info(self, repo: str, revision: str | None = None) -> None:
            raise NotFound()

    monkeypatch.setattr(huggingface_hub, "HfApi", MissingApi)
    with pytest.raises(FusecliError, match="owner/nope is neither a local folder nor a hub repo") as err:
        pin_folder("owner/nope", ws)
    assert "\n" not in str(err.value)


# --- hashing ---------------------------------------------------------------------------------------


def test_content_hash_covers_model_files_only(ws: Path) -> None:
    folder = ws / "local/qwen"
    before = hashing.content_hash(folder)
    (folder / "README.md").write_text("docs do not change the model")
    assert hashing.content_hash(folder) == before
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert hashing.content_hash(folder) != before


def test_hash_cache_skips_unchanged_files(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, cache = ws / "local/qwen", ws / hashing.CACHE_FILE
    first = hashing.content_hash(folder, cache)
    assert cache.exists()
    real = hashing.file_sha256

    def no_rehash(path: Path) -> str:
        raise AssertionError(f"re-hashed {path.name}")

    monkeypatch.setattr(hashing, "file_sha256", no_rehash)
    assert hashing.content_hash(folder, cache) == first
    with open(folder / "model.safetensors", "r+b") as f:  # same size, new mtime: must re-hash
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(AssertionError, match="re-hashed model.safetensors"):
        hashing.content_hash(folder, cache)
    monkeypatch.setattr(hashing, "file_sha256", real)
    assert hashing.content_hash(folder, cache) != first


def test_verify_entry_detects_changed_weights(ws: Path) -> None:
    entry = pin_folder("local/qwen", ws)
    hashing.verify_entry(entry, ws)
    (ws / "local/qwen/model.safetensors").write_bytes(b"corrupted")
    with pytest.raises(FusecliError, match="sources.qwen: weights changed on disk after pinning") as err:
        hashing.verify_entry(entry, ws)
    assert "fusecli add-source local/qwen --name qwen --replace" in str(err.value)
    shutil.rmtree(ws / "local/qwen")
    with pytest.raises(FusecliError, match="model folder local/qwen is missing"):
        hashing.verify_entry(entry, ws, is_pivot=True)
    hashing.verify_entry(dataclasses.replace(entry, origin="demo", content_hash="dvc"), ws)  # dvc.lock pins demo

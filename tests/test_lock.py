from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from fusecli.errors import FusecliError
from fusecli.lock import Lock, ModelEntry, dump_lock, locked_update, parse_lock, read_lock, write_lock

H = "sha256:" + "ab" * 32


def entry(name: str, **over: object) -> ModelEntry:
    fields = dict(
        name=name, origin="local", path=f"local/{name}", repo=None, revision=None, content_hash=H,
        architecture="LlamaForCausalLM", vocab_size=320, dtype="float32", chat_template_hash=H,
        trust_remote_code=False, allow_pickle=False,
    )
    return ModelEntry(**{**fields, **over})  # type: ignore[arg-type]


def sample() -> Lock:
    hub = entry("mixtral", origin="hub", path="models/mixtral", repo="mistralai/Mixtral-8x7B-Instruct-v0.1",
                revision="0123456789abcdef0123456789abcdef01234567", chat_template_hash=None)
    demo = entry("llama-crops", origin="demo", path="demo/models/llama-crops", content_hash="dvc")
    return Lock(pivot=entry("qwen2-languages", architecture="Qwen2ForCausalLM"),
                sources={"llama-crops": demo, "mixtral": hub})


def test_round_trip_keeps_sources_a_mapping_in_order(tmp_path: Path) -> None:
    path = tmp_path / "models.lock"
    write_lock(path, sample())
    assert read_lock(path) == sample()
    data = yaml.safe_load(path.read_text())
    assert list(data["sources"]) == ["llama-crops", "mixtral"]
    assert "name" not in data["sources"]["mixtral"] and data["pivot"]["name"] == "qwen2-languages"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.lock", "models.lock.lock"]


def _mutated(edit) -> str:
    data = yaml.safe_load(dump_lock(sample()))
    edit(data)
    return yaml.safe_dump(data, sort_keys=False)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["sources"]["mixtral"].update(vocab_size="big"), "vocab_size = 'big' must be of type int"),
    (lambda d: d["sources"]["mixtral"].update(vocab_size=True), "sources.mixtral.vocab_size = True must be a number"),
    (lambda d: d["sources"]["mixtral"].update(vocab_size=0), "sources.mixtral.vocab_size must be positive"),
    (lambda d: d["sources"]["mixtral"].update(colour="red"), "sources.mixtral: unknown key 'colour'"),
    (lambda d: d["pivot"].pop("dtype"), "pivot.dtype is missing"),
    (lambda d: d["pivot"].update(origin="ftp"), "pivot.origin = 'ftp' is not one of ['demo', 'local', 'hub', 'gguf']"),
    (lambda d: d["sources"]["mixtral"].update(revision="main"), "sources.mixtral.revision must be a 40-character"),
    (lambda d: d["pivot"].update(revision="0" * 40), "pivot.revision must be null for origin local"),
    (lambda d: d["pivot"].update(path="../elsewhere"), "pivot.path must be a path without '..'"),
    (lambda d: d["pivot"].update(content_hash="md5:1"), "pivot.content_hash must be 'sha256:'"),
    (lambda d: d["sources"]["llama-crops"].update(content_hash=H), "content_hash must be 'dvc' for origin demo"),
    (lambda d: d["pivot"].update(trust_remote_code="no"), "pivot.trust_remote_code must be true or false"),
    (lambda d: d["pivot"].update(chat_template_hash="x"), "pivot.chat_template_hash must be null or"),
    (lambda d: d.update(sources=[d["sources"]["mixtral"]]), "sources must be a mapping keyed by slug"),
    (lambda d: d["sources"].update({"Bad Key": d["sources"]["mixtral"]}), "sources key 'Bad Key' must be a slug"),
    (lambda d: d["sources"].update({"qwen2-languages": d["sources"]["mixtral"]}), "has the pivot's name"),
    (lambda d: d["sources"]["mixtral"].update(name="other"), "sources.mixtral.name must equal its key"),
    (lambda d: d.update(version=2), "version must be 1"),
    (lambda d: d.pop("pivot"), "pivot is missing"),
    (lambda d: d.update(extra=1), "unknown top-level key 'extra'"),
])
def test_every_field_is_validated_with_a_one_line_error(edit, message: str) -> None:
    with pytest.raises(FusecliError) as err:
        parse_lock(_mutated(edit))
    text = str(err.value)
    assert text.startswith("models.lock: ") and message in text and "\n" not in text


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FusecliError, match=r"models.lock is not valid YAML \(line \d+\)"):
        parse_lock("version: 1\npivot: [unclosed\n")
    with pytest.raises(FusecliError, match="create it with fusecli set-pivot"):
        read_lock(tmp_path / "models.lock")


def test_locked_update_writes_only_on_success(tmp_path: Path) -> None:
    path = tmp_path / "models.lock"
    write_lock(path, sample())
    before = path.read_bytes()
    with pytest.raises(RuntimeError), locked_update(path) as update:
        update.lock = sample().without_source("mixtral")
        raise RuntimeError("boom")
    assert path.read_bytes() == before
    with locked_update(path) as update:  # unchanged: no rewrite
        pass
    assert path.read_bytes() == before
    with locked_update(path) as update:
        assert update.lock is not None
        update.lock = update.lock.without_source("mixtral")
    assert list(read_lock(path).sources) == ["llama-crops"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.lock", "models.lock.lock"]  # no temp files


def test_locked_update_create(tmp_path: Path) -> None:
    path = tmp_path / "models.lock"
    with locked_update(path, create=True) as update:
        assert update.lock is None
    assert not path.exists()
    with locked_update(path, create=True) as update:
        update.lock = sample()
    assert read_lock(path) == sample()


def test_never_writes_a_lock_it_would_reject(tmp_path: Path) -> None:
    path = tmp_path / "models.lock"
    write_lock(path, sample())
    before = path.read_bytes()
    bad = dataclasses.replace(sample(), pivot=entry("Not A Slug"))
    with pytest.raises(FusecliError, match="pivot.name"):
        write_lock(path, bad)
    assert path.read_bytes() == before


def test_concurrent_updates_serialise(tmp_path: Path) -> None:
    """A second writer waits for the first, then sees its entry: neither update is lost."""
    path = tmp_path / "models.lock"
    write_lock(path, Lock(pivot=entry("pivot"), sources={}))
    holding = tmp_path / "holding"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from fusecli.lock import ModelEntry, locked_update
        with locked_update({str(path)!r}) as update:
            Path({str(holding)!r}).touch()
            time.sleep(1.0)
            entry = ModelEntry(**{{**update.lock.pivot.__dict__, "name": "first", "path": "local/first"}})
            update.lock = update.lock.with_source(entry)
    """)
    child = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not holding.exists():
        assert child.poll() is None and time.monotonic() < deadline, "child failed to take the lock"
        time.sleep(0.02)
    with locked_update(path) as update:  # blocks until the child has written
        assert update.lock is not None and "first" in update.lock.sources
        update.lock = update.lock.with_source(entry("second"))
    assert child.wait(timeout=30) == 0
    assert list(read_lock(path).sources) == ["first", "second"]

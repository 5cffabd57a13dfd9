"""Content hash of a model folder: what pins a local or downloaded model in models.lock.

The hash covers exactly the files that define the model's outputs (weights, config, tokenizer, chat
template) and nothing else, so a README edit does not rerun the pipeline. Per-file digests are cached
by (size, mtime_ns) in `.fusecli/hash-cache.json`, so re-checking a 140 GB model costs a few stats.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fusecli.errors import FusecliError
from fusecli.io import atomic_write_json
from fusecli.lock import DVC_PINNED, Lock, ModelEntry

CACHE_FILE = Path(".fusecli") / "hash-cache.json"
CONFIG_FILES = frozenset({"config.json", "generation_config.json"})
TOKENIZER_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "tokenizer.model", "chat_template.jinja", "added_tokens.json",
})
SAFETENSORS_SUFFIXES = (".safetensors", ".safetensors.index.json")
# Pickled weights (they can run code when loaded): hashed only when a folder has no safetensors
# (transformers prefers safetensors), refused by `merge` and by pinning without --allow-pickle.
PICKLE_SUFFIXES = (".bin", ".bin.index.json", ".pt", ".pth", ".ckpt", ".pkl")
CHUNK = 1 << 24


def safetensors_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(SAFETENSORS_SUFFIXES))


def pickle_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))


def hashed_files(folder: Path) -> list[Path]:
    """Top-level files only: the loader reads nothing else (`.cache/` of snapshot_download is skipped)."""
    weights = safetensors_files(folder) or pickle_files(folder)
    named = [p for p in folder.iterdir() if p.is_file() and p.name in CONFIG_FILES | TOKENIZER_FILES]
    return sorted(weights + named)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# Each cache file's contents as last read or written by this process, with the file's (inode, size,
# mtime) then: checking N models reads the file once, not N times (it holds every file of every model,
# so re-reading it per model made `fusecli status` quadratic in the number of sources).
_MEMO: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _load_cache(cache_file: Path | None) -> dict[str, Any]:
    """The cache's entries for files that still exist; reused while the file is unchanged on disk."""
    if cache_file is None:
        return {}
    stamp = _stamp(cache_file)
    if stamp is None:
        return {}
    hit = _MEMO.get(str(cache_file.absolute()))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}  # a cache is disposable: a corrupt one is rebuilt
    if not isinstance(data, dict):
        return {}
    live = {k: v for k, v in data.items() if os.path.exists(k)}  # pruned once per read, not per write
    _MEMO[str(cache_file.absolute())] = (stamp, live)
    return live


def _save_cache(cache_file: Path, cache: dict[str, Any]) -> None:
    try:
        atomic_write_json(cache_file, cache)
    except OSError:
        return  # read-only workspace: hashing still works, only slower next time
    stamp = _stamp(cache_file)
    if stamp is not None:
        _MEMO[str(cache_file.absolute())] = (stamp, cache)


def content_hash(folder: str | Path, cache_file: str | Path | None = None) -> str:
    """sha256 over the sorted (relative path, sha256 of file) lines of the model's defining files."""
    folder = Path(folder)
    files = hashed_files(folder)
    if not files:
        raise FusecliError(f"{folder} has no weight, config or tokenizer files to hash: check the folder")
    digests = _cached_sha256(files, cache_file)
    lines = [f"{path.relative_to(folder).as_posix()}\t{digest}\n" for path, digest in zip(files, digests, strict=True)]
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def file_hash(path: str | Path, cache_file: str | Path | None = None) -> str:
    """sha256:... of one file (a GGUF a model was converted from), through the same cache."""
    return "sha256:" + _cached_sha256([Path(path)], cache_file)[0]


def _cached_sha256(files: list[Path], cache_file: str | Path | None) -> list[str]:
    cache_file = Path(cache_file) if cache_file is not None else None
    cache = _load_cache(cache_file)
    changed = False
    digests = []
    for path in files:
        st = path.stat()
        key = str(path.resolve())
        hit = cache.get(key)
        if isinstance(hit, list) and hit[:2] == [st.st_size, st.st_mtime_ns]:
            digest = hit[2]
        else:
            digest = file_sha256(path)
            cache[key] = [st.st_size, st.st_mtime_ns, digest]
            changed = True
        digests.append(digest)
    if changed and cache_file is not None:
        _save_cache(cache_file, cache)
    return digests


def chat_template_hash(folder: str | Path) -> str | None:
    """Hash of the chat template text (chat_template.jinja, else tokenizer_config.json's), None if absent."""
    folder = Path(folder)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        text = jinja.read_text(encoding="utf-8")
    else:
        config = folder / "tokenizer_config.json"
        try:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError):
            template = None
        if not template:
            return None
        # Some tokenizers ship a list of named templates; hash their canonical JSON.
        text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def verify_entry(entry: ModelEntry, root: str | Path, cache_file: str | Path | None = None,
                 is_pivot: bool = False) -> None:
    """Fail if the pinned files changed since add-source / set-pivot (demo models are pinned by dvc.lock)."""
    where = "pivot" if is_pivot else f"sources.{entry.name}"
    repin = repin_command(entry, is_pivot)
    if entry.content_hash == DVC_PINNED:
        return
    folder = entry.folder(root)
    if entry.gguf is not None:  # the folder is the GGUF's conversion: a changed GGUF makes it stale
        gguf = Path(root) / entry.gguf.file
        if gguf.is_file() and file_hash(gguf, cache_file) != entry.gguf.sha256:
            raise FusecliError(f"{where}: {entry.gguf.file} changed on disk after it was converted: "
                               f"convert and re-pin it with {repin}, or restore the file")
    if not folder.is_dir():
        raise FusecliError(f"{where}: model folder {entry.path} is missing: restore the files or re-pin with {repin}")
    actual = content_hash(folder, cache_file)
    if actual != entry.content_hash:
        raise FusecliError(
            f"{where}: weights changed on disk after pinning ({entry.path}): re-pin with {repin} or restore the files"
        )


def repin_command(entry: ModelEntry, is_pivot: bool) -> str:
    """The command that pins `entry` again from what it was pinned from (a GGUF is converted again)."""
    if entry.origin == "hub":
        ref = f"{entry.repo} --revision {entry.revision}"
    elif entry.gguf is not None:
        template = f" --chat-template {entry.gguf.chat_template}" if entry.gguf.chat_template else ""
        ref = f"{entry.gguf.file} --dtype {entry.dtype}{template}"
    else:
        ref = entry.path
    if is_pivot:
        return f"fusecli set-pivot {ref} --name {entry.name}"
    return f"fusecli add-source {ref} --name {entry.name} --replace"


def verify_pinned(lock: Lock, root: str | Path, sources: Iterable[str] = ()) -> None:
    """What stage entry points call before any work: the pivot and the named sources are unchanged on disk."""
    cache = Path(root) / CACHE_FILE
    verify_entry(lock.pivot, root, cache, is_pivot=True)
    for slug in sources:
        verify_entry(lock.sources[slug], root, cache)

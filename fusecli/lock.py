"""models.lock: the pinned pivot and sources, the one file that says which models the pipeline fuses.

YAML despite the extension (DVC reads it as `vars:` and as a `params:` file). `sources` is a mapping
keyed by slug, never a list: a list would name stages by index (`fuse@0`), so removing one source would
rerun every later one, and DVC splits param keys on dots, so raw repo ids cannot be keys.

Every read validates every field (one-line errors naming it); every write is atomic (temp + rename)
under a file lock, so a reader never sees half a file and two writers never lose each other's entry.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from filelock import FileLock, Timeout

from fusecli.config import from_dict, parse_yaml
from fusecli.errors import FusecliError
from fusecli.io import atomic_write_text

VERSION = 1
SLUG_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")
SHA_RE = re.compile(r"[0-9a-f]{40}")
DVC_PINNED = "dvc"  # content_hash of demo models: the build_demo stage's outputs are pinned by dvc.lock
LOCK_TIMEOUT_S = 60.0
HEADER = "# Pinned models for the fusion pipeline. Edit with: fusecli set-pivot | add-source | remove-source\n"


@dataclass(frozen=True)
class GgufPin:
    """The GGUF file a model folder was converted from (origin gguf): re-converting it reproduces the folder."""

    file: str  # workspace-relative (posix) inside the workspace, else absolute
    sha256: str  # sha256:... of the file
    chat_template: str | None  # the --chat-template file given, as `file`; None: the GGUF's own template


@dataclass(frozen=True)
class ModelEntry:
    """One pinned model: everything that defines what the pipeline computes from it."""

    name: str  # the slug (the key under `sources`, or the pivot's `name`)
    origin: Literal["demo", "local", "hub", "gguf"]
    path: str  # folder the stages read: workspace-relative (posix), or absolute for a local folder outside it
    repo: str | None  # hub repo id (origin hub)
    revision: str | None  # resolved commit sha (origin hub)
    content_hash: str  # sha256:... of weights + config + tokenizer files; "dvc" for origin demo
    architecture: str
    vocab_size: int
    dtype: str
    chat_template_hash: str | None  # None: the model has no chat template (fine for a source)
    trust_remote_code: bool
    allow_pickle: bool
    gguf: GgufPin | None = None  # origin gguf only; left out of the file otherwise

    def folder(self, root: str | Path) -> Path:
        """The model folder on disk, `path` resolved against the workspace root."""
        return Path(root) / self.path


FIELDS = tuple(f.name for f in dataclasses.fields(ModelEntry))
REQUIRED = tuple(f.name for f in dataclasses.fields(ModelEntry) if f.default is dataclasses.MISSING)


@dataclass(frozen=True)
class Lock:
    pivot: ModelEntry
    sources: Mapping[str, ModelEntry]  # slug -> entry, in the order they were added
    version: int = VERSION

    def names(self) -> list[str]:
        return [self.pivot.name, *self.sources]

    def with_source(self, entry: ModelEntry) -> Lock:
        """Add or replace a source (a replaced one keeps its position: reordering reruns nothing anyway)."""
        return dataclasses.replace(self, sources={**self.sources, entry.name: entry})

    def without_source(self, slug: str) -> Lock:
        return dataclasses.replace(self, sources={k: v for k, v in self.sources.items() if k != slug})

    def with_pivot(self, entry: ModelEntry) -> Lock:
        return dataclasses.replace(self, pivot=entry)


def validate_slug(slug: str, what: str = "slug") -> str:
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise FusecliError(
            f"invalid {what} {slug!r}: use lowercase letters, digits, '-' and '_', starting with a letter or digit"
        )
    return slug


class _Invalid(Exception):
    """A field-level problem; read_lock turns it into one FusecliError line naming file and field."""


def _entry(data: Any, where: str, slug: str | None) -> ModelEntry:
    """Types, unknown and missing keys by the dataclass loader every section uses; then `_check_entry`."""
    if isinstance(data, dict) and slug is not None:  # a source's name is its key; an explicit `name` must agree
        data = dict(data)
        if data.setdefault("name", slug) != slug:
            raise _Invalid(f"{where}.name must equal its key {slug!r}, got {data['name']!r}")
    if isinstance(data, dict):
        missing = [f for f in REQUIRED if f not in data]
        if missing:
            raise _Invalid(f"{where}.{missing[0]} is missing")
    try:
        entry = from_dict(ModelEntry, data, where)
    except FusecliError as exc:
        raise _Invalid(str(exc)) from None
    _check_entry(entry, where)
    return entry


def _check_entry(e: ModelEntry, where: str) -> None:
    """What the types cannot say: slugs, hashes, shas, and which fields each origin allows."""

    def check(field: str, ok: bool, expected: str) -> None:
        if not ok:
            raise _Invalid(f"{where}.{field} must be {expected}, got {getattr(e, field)!r}")

    check("name", bool(SLUG_RE.fullmatch(e.name)), "a slug [a-z0-9][a-z0-9_-]*")
    check("path", e.path != "", "a non-empty path")
    path = PurePosixPath(e.path)
    check("path", "\\" not in e.path and ".." not in path.parts, "a path without '..' or backslashes")
    check("path", e.origin == "local" or not path.is_absolute(),
          f"workspace-relative for origin {e.origin} (only local folders may lie outside the workspace)")
    if e.origin == "hub":
        check("repo", e.repo is not None and e.repo.count("/") == 1, "a hub repo id 'owner/name'")
        check("revision", e.revision is not None and bool(SHA_RE.fullmatch(e.revision)), "a 40-character commit sha")
    else:
        check("repo", e.repo is None, f"null for origin {e.origin}")
        check("revision", e.revision is None, f"null for origin {e.origin}")
    if e.origin == "demo":
        check("content_hash", e.content_hash == DVC_PINNED, f"'{DVC_PINNED}' for origin demo")
    else:
        check("content_hash", bool(HASH_RE.fullmatch(e.content_hash)), "'sha256:' followed by 64 hex digits")
    check("architecture", e.architecture != "", "a non-empty string")
    check("vocab_size", e.vocab_size > 0, "positive")
    check("dtype", e.dtype != "", "a dtype name such as float32")
    check("chat_template_hash", e.chat_template_hash is None or bool(HASH_RE.fullmatch(e.chat_template_hash)),
          "null or 'sha256:' followed by 64 hex digits")
    check("gguf", (e.gguf is not None) == (e.origin == "gguf"), "set for origin gguf only (the converted file)")
    if e.gguf is not None:
        sha = e.gguf.sha256
        check("gguf", bool(HASH_RE.fullmatch(sha)), f"a mapping whose sha256 is 'sha256:' + 64 hex digits, not {sha!r}")


def parse_lock(text: str, name: str = "models.lock") -> Lock:
    """Validate the YAML text of a lock file; every problem is one line naming the field."""
    fix = "fix the file or re-pin with fusecli set-pivot / add-source"
    data = parse_yaml(text, name, fix)
    try:
        if not isinstance(data, dict):
            raise _Invalid("must hold a mapping with version, pivot and sources")
        unknown = sorted(set(data) - {"version", "pivot", "sources"})
        if unknown:
            raise _Invalid(f"unknown top-level key {unknown[0]!r} (valid keys: version, pivot, sources)")
        if data.get("version") != VERSION or isinstance(data.get("version"), bool):
            raise _Invalid(f"version must be {VERSION}, got {data.get('version')!r}")
        if "pivot" not in data:
            raise _Invalid("pivot is missing")
        pivot = _entry(data["pivot"], "pivot", None)
        raw = data.get("sources", {})
        if not isinstance(raw, dict):
            raise _Invalid("sources must be a mapping keyed by slug (not a list)")
        sources = {}
        for slug, entry in raw.items():
            if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
                raise _Invalid(f"sources key {slug!r} must be a slug [a-z0-9][a-z0-9_-]*")
            if slug == pivot.name:
                raise _Invalid(f"sources.{slug} has the pivot's name: slugs must be unique")
            sources[slug] = _entry(entry, f"sources.{slug}", slug)
    except _Invalid as exc:
        raise FusecliError(f"{name}: {exc}: {fix}") from None
    return Lock(pivot=pivot, sources=sources)


def read_lock(path: str | Path) -> Lock:
    path = Path(path)
    if not path.exists():
        raise FusecliError(f"{path} not found: create it with fusecli set-pivot REF")
    return parse_lock(path.read_text(encoding="utf-8"), path.name)


def _entry_dict(entry: ModelEntry, with_name: bool) -> dict[str, Any]:
    d = dataclasses.asdict(entry)
    if d["gguf"] is None:
        del d["gguf"]
    if not with_name:
        del d["name"]
    return d


def dump_lock(lock: Lock) -> str:
    data = {
        "version": lock.version,
        "pivot": _entry_dict(lock.pivot, with_name=True),
        "sources": {slug: _entry_dict(e, with_name=False) for slug, e in lock.sources.items()},
    }
    return HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)


def _file_lock(path: Path) -> FileLock:
    return FileLock(str(path.with_name(path.name + ".lock")), timeout=LOCK_TIMEOUT_S)


def _write(path: Path, lock: Lock) -> None:
    text = dump_lock(lock)
    parse_lock(text, path.name)  # never write a file that the next read would reject
    atomic_write_text(path, text)


def write_lock(path: str | Path, lock: Lock) -> None:
    """Atomically replace the lock file (temp + rename) while holding `<name>.lock`."""
    path = Path(path)
    try:
        with _file_lock(path):
            _write(path, lock)
    except Timeout:
        raise FusecliError(_busy(path)) from None


def _busy(path: Path) -> str:
    return f"{path.name} is held by another fusecli process ({path.name}.lock): wait for it to finish and retry"


@dataclass
class Update:
    """What `locked_update` yields: read `lock`, assign a new one to have it written."""

    lock: Lock | None


@contextmanager
def locked_update(path: str | Path, create: bool = False) -> Iterator[Update]:
    """Read, let the caller change, write: all under the file lock, so concurrent updates serialise.

    The file is written only when the body finishes without an exception and changed the lock; with
    `create`, a missing file yields `lock=None` instead of failing.
    """
    path = Path(path)
    file_lock = _file_lock(path)
    try:
        file_lock.acquire()
    except Timeout:
        raise FusecliError(_busy(path)) from None
    try:
        before = read_lock(path) if (path.exists() or not create) else None
        update = Update(before)
        yield update
        if update.lock is not None and update.lock != before:
            _write(path, update.lock)
    finally:
        file_lock.release()

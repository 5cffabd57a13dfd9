"""`fusecli pull-models`: restore every hub model of models.lock on a fresh clone or CI runner.

Hub models live in git-ignored `models/<slug>`, outside DVC, so a clone has their pins but not their
files. This downloads exactly the pinned commit of each into the Hugging Face cache (the hub client
resumes a cut download there), links or copies its files into `models/<slug>` as one atomic folder,
and keeps it only if its content hash is the pinned one. A folder that already matches is left alone,
so a second run downloads and copies nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

from fusecli import hashing
from fusecli.errors import FusecliError
from fusecli.io import atomic_dir
from fusecli.lock import Lock, ModelEntry


def hub_models(lock: Lock) -> list[tuple[str, ModelEntry]]:
    """(role, entry) of every hub model: the pivot first, then the sources in lock order."""
    models = [("pivot", lock.pivot), *((f"sources.{slug}", e) for slug, e in lock.sources.items())]
    return [(role, entry) for role, entry in models if entry.origin == "hub"]


def _matches(folder: Path, entry: ModelEntry, cache: Path) -> bool:
    return folder.is_dir() and bool(hashing.hashed_files(folder)) and \
        hashing.content_hash(folder, cache) == entry.content_hash


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link to the cache's blob (no second copy of 140 GB), or a copy across file systems."""
    try:
        os.link(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def _download(entry: ModelEntry, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    from fusecli.sources import hub_error

    try:
        return Path(snapshot_download(entry.repo, revision=entry.revision, allow_patterns=patterns))
    except Exception as exc:  # network, auth, a cache without this snapshot: one actionable line each
        raise hub_error(str(entry.repo), entry.revision, exc) from None


def pull_model(role: str, entry: ModelEntry, root: Path) -> bool:
    """Make `entry.folder(root)` the pinned snapshot; return False if it already was."""
    from fusecli.sources import hub_patterns

    folder, cache = entry.folder(root), root / hashing.CACHE_FILE
    if _matches(folder, entry, cache):
        return False
    patterns = hub_patterns([], entry.trust_remote_code, entry.allow_pickle)
    snapshot = _download(entry, patterns)
    with atomic_dir(folder) as tmp:  # the folder appears whole and verified, or stays as it was
        for src in sorted(snapshot.iterdir()):
            if src.is_file() and any(fnmatch(src.name, p) for p in patterns):
                _link_or_copy(src, tmp / src.name)
        got = hashing.content_hash(tmp)
        if got != entry.content_hash:
            raise FusecliError(
                f"{role}: {entry.repo}@{entry.revision[:8] if entry.revision else '?'} hashes to {got[:15]}…, "
                f"not the pinned {entry.content_hash[:15]}… in models.lock: the files were changed in the hub "
                f"cache or the lock was edited; delete the cached snapshot and rerun, or re-pin with "
                f"fusecli {'set-pivot' if role == 'pivot' else 'add-source'} {entry.repo} --revision {entry.revision}"
            )
    hashing.content_hash(folder, cache)  # record the new files' digests: the next check costs a few stats
    return True


def pull_models(lock: Lock, root: Path, log: Callable[[str], None]) -> list[str]:
    """Pull every hub model of `lock`; return the roles that were fetched."""
    fetched = []
    models = hub_models(lock)
    for n, (role, entry) in enumerate(models, start=1):
        log(f"[{n}/{len(models)}] {role}: {entry.repo}@{entry.revision} -> {entry.path}")
        if pull_model(role, entry, root):
            fetched.append(role)
            log(f"[{n}/{len(models)}] {role}: fetched, content hash verified")
        else:
            log(f"[{n}/{len(models)}] {role}: up to date")
    return fetched

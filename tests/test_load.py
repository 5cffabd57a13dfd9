"""Costs that grow with the number of sources stay linear (benchmarks/load.py measures them at scale)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from fusecli import hashing, sources
from fusecli.io import atomic_write_json


def pinned_copies(ws: Path, n: int) -> list:
    """`n` pinned sources, each its own folder (hard links to local/llama's files)."""
    entry = sources.describe_folder(ws / "local" / "llama", "s0", ws)
    out = []
    for i in range(n):
        folder = ws / "many" / f"s{i}"
        shutil.copytree(ws / "local" / "llama", folder, copy_function=os.link)
        out.append(replace(entry, name=f"s{i}", path=f"many/s{i}"))
    return out


def test_checking_many_sources_reads_the_hash_cache_once(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fusecli status` checks every source against one cache holding every model's files: read it per
    source and the check is quadratic (35 ms per source at 2,000 sources instead of 0.3)."""
    entries, cache = pinned_copies(ws, 12), ws / hashing.CACHE_FILE
    for entry in entries:
        hashing.verify_entry(entry, ws, cache)
    reads = []
    real_loads = json.loads
    monkeypatch.setattr(hashing.json, "loads", lambda text: reads.append(1) or real_loads(text))
    for entry in entries:
        hashing.verify_entry(entry, ws, cache)
    assert len(reads) == 0, "an unchanged cache file is not parsed again"
    cached = set(json.loads(cache.read_text()))
    assert all(str(f.resolve()) in cached for e in entries for f in hashing.hashed_files(e.folder(ws)))


def test_a_cache_rewritten_by_another_process_is_read_again(ws: Path) -> None:
    folder, cache = ws / "local" / "qwen", ws / hashing.CACHE_FILE
    first = hashing.content_hash(folder, cache)
    poisoned = {k: [v[0], v[1], "0" * 64] for k, v in json.loads(cache.read_text()).items()}
    atomic_write_json(cache, poisoned)  # what another fusecli process's write looks like: a new file
    assert hashing.content_hash(folder, cache) != first  # the new contents are used, not the remembered ones

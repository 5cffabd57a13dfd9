"""Sharded, append-only record store on safetensors: what extract and align write, and fuse streams.

A store is a folder: `manifest.json` plus `shard-XXXXX.safetensors`. Each record is a mapping of
field name -> numpy array (first axis ragged across records) or a Python scalar. A shard holds a
run of records as one concatenated tensor per field plus `<field>.offsets`. Shards are written
atomically and the manifest lists only complete shards, so a reader never sees a partial one and a
killed writer resumes from the last listed shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save

from fusecli.errors import FusecliError
from fusecli.io import atomic_write_bytes, atomic_write_json

MANIFEST = "manifest.json"
Record = dict[str, Any]


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def encode_shard(records: list[Record]) -> bytes:
    """Concatenate each field across records; scalars become a 1-D array with one entry per record."""
    if not records:
        raise ValueError("cannot write an empty shard")
    tensors: dict[str, np.ndarray] = {}
    for name in records[0]:
        values = [r[name] for r in records]
        if np.isscalar(values[0]) or np.ndim(values[0]) == 0:
            tensors[name] = np.asarray(values)
            continue
        arrays = [np.ascontiguousarray(v) for v in values]
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        tensors[name] = np.ascontiguousarray(np.concatenate(arrays, axis=0))
        tensors[f"{name}.offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return save(tensors)


def decode_shard(tensors: dict[str, np.ndarray]) -> Iterator[Record]:
    names = [n for n in tensors if not n.endswith(".offsets")]
    n_rec = None
    for n in names:
        off = tensors.get(f"{n}.offsets")
        count = len(off) - 1 if off is not None else len(tensors[n])
        n_rec = count if n_rec is None else n_rec
        if count != n_rec:
            raise FusecliError("corrupt shard: fields disagree on the record count; rerun the stage")
    for i in range(n_rec or 0):
        rec: Record = {}
        for n in names:
            off = tensors.get(f"{n}.offsets")
            rec[n] = tensors[n][off[i] : off[i + 1]] if off is not None else tensors[n][i].item()
        yield rec


@dataclass
class StoreWriter:
    """Writes records in shards of `shard_size`; resumable: `done` tells how many records are stored."""

    root: Path
    meta: dict[str, Any]
    shard_size: int = 256
    shards: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, root: str | Path, meta: dict[str, Any], shard_size: int = 256) -> StoreWriter:
        """Open for writing; resume when an earlier run with the same `meta` left complete shards."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        writer = cls(root=root, meta=meta, shard_size=shard_size)
        manifest = root / MANIFEST
        if manifest.exists():
            old = json.loads(manifest.read_text())
            if old.get("meta") == meta:
                for shard in old["shards"]:  # keep the prefix of shards whose files are intact
                    if shard["file"] is not None and not (root / shard["file"]).exists():
                        break
                    writer.shards.append(shard)
        for stale in root.glob("shard-*.safetensors"):
            if stale.name not in {s["file"] for s in writer.shards}:
                stale.unlink()
        return writer

    @property
    def done(self) -> int:
        return sum(s["records"] for s in self.shards)

    def write(self, records: list[Record]) -> None:
        """Write one shard; an empty one (every record dropped) is listed without a file."""
        name = _shard_name(len(self.shards)) if records else None
        if name is not None:
            atomic_write_bytes(self.root / name, encode_shard(records))
        self.shards.append({"file": name, "records": len(records)})
        self._manifest(complete=False)

    def write_all(self, records: Iterable[Record]) -> None:
        batch: list[Record] = []
        for rec in records:
            batch.append(rec)
            if len(batch) == self.shard_size:
                self.write(batch)
                batch = []
        if batch:
            self.write(batch)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        self._manifest(complete=True, summary=summary or {})

    def _manifest(self, complete: bool, summary: dict[str, Any] | None = None) -> None:
        body = {"meta": self.meta, "shards": self.shards, "records": self.done, "complete": complete}
        if summary is not None:
            body["summary"] = summary
        atomic_write_json(self.root / MANIFEST, body)


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FusecliError(f"{root} holds no {MANIFEST}: run the stage that writes it (dvc repro)")
    manifest = json.loads(path.read_text())
    if not manifest.get("complete"):
        raise FusecliError(f"{root} is incomplete (an interrupted run): rerun `dvc repro`")
    return manifest


def iter_records(root: str | Path) -> Iterator[Record]:
    """Stream records shard by shard, in write order, holding one shard in memory at a time."""
    root = Path(root)
    for shard in read_manifest(root)["shards"]:
        if shard["file"] is not None:
            yield from decode_shard(load_file(root / shard["file"]))

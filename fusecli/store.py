"""Sharded, append-only record store on safetensors: what extract and align write, and fuse streams.

A store is a folder: `manifest.json` plus `shard-XXXXX.safetensors`. Each record is a mapping of
field name -> numpy array (first axis ragged across records) or a Python scalar. A shard holds a
run of records as one concatenated tensor per field plus `<field>.offsets`. Shards are written
atomically and the manifest lists only complete shards, so a reader never sees a partial one and a
killed writer resumes from the last listed shard.

Data-parallel writers (one per rank) each write the shards whose index is theirs into the same
folder and list them in `manifest.part-<rank>.json`; `merge_parts` then writes the one manifest.
Shard i has the same name and bytes whichever process wrote it, so N processes give the same store
as one.

A store whose `meta.codec` is set holds top-K rows packed by `fusecli.extract.codec` (field
`topk_code`); `iter_records` unpacks them into `topk_ids`, `topk_logprobs` and `token_ce`, so
readers see the same fields either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
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


def _part_manifest(rank: int) -> str:
    return f"manifest.part-{rank}.json"


def _unpack_topk(tensors: dict[str, np.ndarray], spec: dict[str, int]) -> dict[str, np.ndarray]:
    from fusecli.extract.codec import TopKCodec  # the only codec; it lives with the rows it packs

    codes, offsets = tensors.pop("topk_code"), tensors.pop("topk_code.offsets")
    ids, logp, ce = TopKCodec(**spec).decode(codes)
    for name, value in (("topk_ids", ids), ("topk_logprobs", logp), ("token_ce", ce)):
        tensors[name], tensors[f"{name}.offsets"] = value, offsets
    return tensors


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
    """Writes records in shards of `shard_size`; resumable: `done` tells how many records are stored.

    With `rank`/`world` set (data parallel), this writer owns the shard indices i with
    i % world == rank and lists them in its own part manifest.
    """

    root: Path
    meta: dict[str, Any]
    shard_size: int = 256
    shards: list[dict[str, Any]] = field(default_factory=list)
    rank: int | None = None
    world: int = 1

    @classmethod
    def open(
        cls, root: str | Path, meta: dict[str, Any], shard_size: int = 256, rank: int | None = None, world: int = 1
    ) -> StoreWriter:
        """Open for writing; resume when an earlier run with the same `meta` left complete shards."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        writer = cls(root=root, meta=meta, shard_size=shard_size, rank=rank, world=world)
        if rank is None:
            writer.shards = _intact(root, MANIFEST, meta, prefix=True)
            for part in root.glob(_part_manifest("*")):
                part.unlink()
        else:  # a finished run's merged manifest counts too: rerunning it is then a no-op
            found = _intact(root, MANIFEST, meta) + _intact(root, _part_manifest(rank), meta)
            mine = {s["index"]: s for s in found if s["index"] % world == rank}
            writer.shards = [mine[i] for i in sorted(mine)]
        kept = {s["file"] for s in writer.shards}
        for stale in root.glob("shard-*.safetensors"):
            if stale.name not in kept and writer.owns(int(stale.stem.removeprefix("shard-"))):
                stale.unlink()
        return writer

    def owns(self, index: int) -> bool:
        return self.rank is None or index % self.world == self.rank

    @property
    def done(self) -> int:
        return sum(s["records"] for s in self.shards)

    @property
    def done_indices(self) -> set[int]:
        return {s["index"] for s in self.shards}

    def write(self, records: list[Record], index: int | None = None) -> None:
        """Write shard `index` (default: the next one); an empty one (every record dropped) has no file."""
        index = len(self.shards) if index is None else index
        if not self.owns(index):
            raise ValueError(f"shard {index} belongs to another rank than {self.rank}")
        name = _shard_name(index) if records else None
        if name is not None:
            atomic_write_bytes(self.root / name, encode_shard(records))
        self.shards.append({"index": index, "file": name, "records": len(records)})
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
        name = MANIFEST if self.rank is None else _part_manifest(self.rank)
        atomic_write_json(self.root / name, body)


def _intact(root: Path, name: str, meta: dict[str, Any], prefix: bool = False) -> list[dict[str, Any]]:
    """The shards a manifest of the same `meta` lists whose files exist (with `prefix`, up to the first gap)."""
    path = root / name
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    if old.get("meta") != meta:
        return []
    kept = []
    for i, shard in enumerate(old["shards"]):
        shard = {"index": i, **shard}  # stores written before shards carried their index
        if shard["file"] is not None and not (root / shard["file"]).exists():
            if prefix:
                break
            continue
        kept.append(shard)
    return kept


def merge_parts(
    root: str | Path, world: int, combine: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Join the `world` part manifests into the store's manifest (every shard index 0..n-1 once).

    `combine` turns the ranks' summaries into the store's; returns the merged manifest.
    """
    root = Path(root)
    parts = [json.loads((root / _part_manifest(r)).read_text()) for r in range(world)]
    if not all(p["complete"] for p in parts) or any(p["meta"] != parts[0]["meta"] for p in parts):
        raise FusecliError(f"{root}: a data-parallel rank did not finish: rerun the stage")
    shards = sorted((s for p in parts for s in p["shards"]), key=lambda s: s["index"])
    if [s["index"] for s in shards] != list(range(len(shards))):
        raise FusecliError(f"{root}: data-parallel parts miss shards: rerun the stage")
    writer = StoreWriter(root=root, meta=parts[0]["meta"], shards=shards)
    writer.close(combine([p.get("summary", {}) for p in parts]) if combine else {})
    for r in range(world):
        (root / _part_manifest(r)).unlink()
    return json.loads((root / MANIFEST).read_text())


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
    manifest = read_manifest(root)
    codec = manifest["meta"].get("codec")
    for shard in manifest["shards"]:
        if shard["file"] is None:
            continue
        path = root / shard["file"]
        if not path.exists():
            raise FusecliError(f"{path} is missing: rerun the stage that wrote {root} (dvc repro)")
        tensors = load_file(path)
        yield from decode_shard(_unpack_topk(tensors, codec) if codec else tensors)

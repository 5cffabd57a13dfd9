"""Read HF model folders lazily and write sharded safetensors: the merge never holds a whole model.

`ModelFolder` memory-maps each safetensors shard when first needed and returns one tensor at a
time; `ShardedWriter` buffers at most one shard of output before writing it. Weights are read from
safetensors only: pickle checkpoints (`pytorch_model.bin`) can run code when loaded and are refused.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fusecli.errors import FusecliError
from fusecli.io import atomic_write_json

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Files copied from the base so the merged folder loads, tokenizes and chats like the base.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
)
SIDE_PREFIXES = ("tokenizer",)

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: str | int) -> int:
    """Bytes from an int or a string like "500MB", "5GB", "2GiB" (HF's convention: GB = 10^9)."""
    if isinstance(size, int) and not isinstance(size, bool):
        n = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
        if not m:
            raise FusecliError(f"max_shard_size = {size!r} is not a size: use bytes or e.g. '500MB', '5GB'")
        n = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if n <= 0:
        raise FusecliError(f"max_shard_size = {size!r} must be positive")
    return n


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise FusecliError(f"{folder} has no config.json: pass a Hugging Face model folder")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise FusecliError(f"{path} is not valid JSON: fix or re-save the model") from None
    if not isinstance(config, dict):
        raise FusecliError(f"{path} must hold a JSON object")
    return config


class ModelFolder:
    """A HF model folder whose safetensors are opened lazily and read one tensor at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FusecliError(f"model folder {self.path} not found: check the path")
        self.config = read_config(self.path)
        self.weight_map = self._weight_map()
        self._handles: dict[str, Any] = {}
        self._unread: dict[str, set[str]] = {}
        for name, shard in self.weight_map.items():
            self._unread.setdefault(shard, set()).add(name)

    def _weight_map(self) -> dict[str, str]:
        index, single = self.path / INDEX, self.path / WEIGHTS
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise FusecliError(f"{index} has no valid weight_map: re-save the model") from None
            for shard in sorted(set(weight_map.values())):
                if not (self.path / shard).is_file():
                    raise FusecliError(f"{self.path / shard} listed in {INDEX} is missing: re-download it")
            return dict(weight_map)
        if single.is_file():
            with safe_open(single, framework="pt") as f:
                return dict.fromkeys(f.keys(), WEIGHTS)
        pickles = sorted(p.name for p in self.path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise FusecliError(
                f"{self.path} has only pickle weights ({pickles[0]}), which can run code when loaded: "
                "convert it to safetensors (model.save_pretrained(..., safe_serialization=True))"
            )
        raise FusecliError(f"{self.path} has no {WEIGHTS} or {INDEX}: pass a model folder with weights")

    def _handle(self, name: str) -> Any:
        if name not in self.weight_map:
            raise KeyError(name)
        shard = self.weight_map[name]
        if shard not in self._handles:
            self._handles[shard] = safe_open(self.path / shard, framework="pt")
        return self._handles[shard]

    def names(self) -> list[str]:
        """Tensor names, grouped by shard so each shard is read front to back."""
        return sorted(self.weight_map, key=lambda n: (self.weight_map[n], n))

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """The safetensors dtype tag: "F32", "BF16", "I64", ..."""
        return self._handle(name).get_slice(name).get_dtype()

    def tensor(self, name: str, rows: int | None = None) -> torch.Tensor:
        """One tensor (a copy); `rows` reads only the first rows (cropping a grown vocabulary).
        A shard is unmapped once each of its tensors has been read, so that a merge does not keep
        every input model mapped to the end."""
        handle = self._handle(name)
        tensor = handle.get_tensor(name) if rows is None else handle.get_slice(name)[:rows]
        shard = self.weight_map[name]
        unread = self._unread.get(shard, set())
        unread.discard(name)
        if not unread:
            del self._handles[shard]
        return tensor

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> ModelFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardedWriter:
    """Write tensors into `model-XXXXX-of-YYYYY.safetensors` shards of at most `max_bytes` each
    (a larger tensor gets a shard of its own), then `model.safetensors.index.json`."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_bytes:
            self._flush()
        self._pending[name] = tensor.detach().to("cpu").contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.folder / f".shard-{len(self._shards):05d}.tmp"
        save_file(self._pending, path, metadata={"format": "pt"})
        self._shards.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> dict[str, str]:
        """Name the shards now that their count is known; write the index; return the weight map."""
        if self._pending:
            self._flush()
        n = len(self._shards)
        weight_map: dict[str, str] = {}
        for i, (tmp, names) in enumerate(self._shards, start=1):
            final = f"model-{i:05d}-of-{n:05d}.safetensors"
            tmp.rename(self.folder / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_json(self.folder / INDEX, index)
        return weight_map


def copy_side_files(base: Path, out: Path) -> list[str]:
    """Copy config, generation config, tokenizer files and chat template from the base."""
    copied = []
    for path in sorted(base.iterdir()):
        if path.is_file() and (path.name in SIDE_FILES or path.name.startswith(SIDE_PREFIXES)):
            shutil.copy2(path, out / path.name)
            copied.append(path.name)
    return copied

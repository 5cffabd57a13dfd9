"""Read HF model folders lazily and write sharded safetensors: the merge never holds a whole model.

`ModelFolder` reads the rows asked for of one tensor at a time with pread, never a memory map: a
mapped file's pages count as the process's memory (RSS) until it is unmapped, so mapping four 2 GB
inputs shows as 8 GB. `ShardedWriter` knows the output layout up front, writes each shard's header
first and then each tensor, or each row block of one, as it comes (from a thread, while the next
block is merged): memory holds a block or two, never a shard. Weights are read from safetensors
only: pickle checkpoints (`pytorch_model.bin`) can run code when loaded and are refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fusecli.dtypes import SAFETENSORS
from fusecli.errors import FusecliError
from fusecli.hashing import PICKLE_SUFFIXES
from fusecli.io import atomic_write_json

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
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


DTYPES = {tag: getattr(torch, name) for tag, name in SAFETENSORS.items()}  # safetensors tag -> torch dtype
TAGS = {dtype: tag for tag, dtype in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in a safetensors file: dtype tag, shape, absolute byte range."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def row_bytes(self) -> int:
        return (self.end - self.start) // self.shape[0] if self.shape and self.shape[0] else 0


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of a safetensors file (format: u64 header length, JSON header, data)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 2 <= n <= 100 * 2**20 else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise FusecliError(f"{path} is not a safetensors file: re-save the model with safetensors")
    header.pop("__metadata__", None)
    data = 8 + n
    try:
        return {
            name: TensorInfo(h["dtype"], tuple(h["shape"]), data + h["data_offsets"][0], data + h["data_offsets"][1])
            for name, h in header.items()
        }
    except (KeyError, TypeError, IndexError):
        raise FusecliError(f"{path} has a malformed safetensors header: re-save the model") from None


def pread_into(fd: int, buffer: memoryview, offset: int) -> None:
    """Fill `buffer` from `fd` at `offset` (one read may return less than asked for, e.g. past 2 GB)."""
    done = 0
    while done < len(buffer):
        n = os.preadv(fd, [buffer[done:]], offset + done)
        if n <= 0:
            raise FusecliError(f"unexpected end of file reading {len(buffer)} bytes at {offset}: re-download the model")
        done += n


class ModelFolder:
    """A HF model folder whose safetensors tensors are read on demand, row block by row block."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FusecliError(f"model folder {self.path} not found: check the path")
        self.config = read_config(self.path)
        self.weight_map = self._weight_map()
        self._info: dict[str, TensorInfo] = {}
        for shard in sorted(set(self.weight_map.values())):
            header = read_header(self.path / shard)
            for name, shard_of in self.weight_map.items():
                if shard_of == shard:
                    if name not in header:
                        raise FusecliError(f"{self.path / shard} lacks {name!r} listed in {INDEX}: re-download it")
                    self._info[name] = header[name]
        self._fds: dict[str, int] = {}

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
            return dict.fromkeys(read_header(single), WEIGHTS)
        pickles = sorted(p.name for p in self.path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise FusecliError(
                f"{self.path} has only pickle weights ({pickles[0]}), which can run code when loaded: "
                "convert it to safetensors (model.save_pretrained(..., safe_serialization=True))"
            )
        raise FusecliError(f"{self.path} has no {WEIGHTS} or {INDEX}: pass a model folder with weights")

    def names(self) -> list[str]:
        """Tensor names in file order, so each shard is read front to back."""
        return sorted(self.weight_map, key=lambda n: (self.weight_map[n], self._info[n].start))

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info[name].shape

    def dtype(self, name: str) -> str:
        """The safetensors dtype tag: "F32", "BF16", "I64", ..."""
        return self._info[name].dtype

    def read(self, name: str, rows: slice = slice(None)) -> torch.Tensor:
        """Rows `rows` (a step-1 slice of the first axis) of one tensor, as a new tensor: one pread of
        their bytes, which are contiguous in the file."""
        info = self._info[name]
        if info.dtype not in DTYPES:
            raise FusecliError(f"tensor {name!r} of {self.path} has dtype {info.dtype}, which fusecli cannot merge")
        shape, start, end = info.shape, info.start, info.end
        if shape and rows != slice(None):
            lo, hi, _ = rows.indices(shape[0])
            shape = (max(hi - lo, 0), *shape[1:])
            start, end = start + lo * info.row_bytes, start + max(hi, lo) * info.row_bytes
        raw = torch.empty(end - start, dtype=torch.uint8)
        shard = self.weight_map[name]
        if shard not in self._fds:
            self._fds[shard] = os.open(self.path / shard, os.O_RDONLY)
        pread_into(self._fds[shard], memoryview(raw.numpy()), start)
        return raw.view(DTYPES[info.dtype]).reshape(shape)

    def tensor(self, name: str, rows: int | None = None) -> torch.Tensor:
        """One whole tensor; `rows` reads only the first rows (cropping a grown vocabulary)."""
        return self.read(name, slice(None) if rows is None else slice(0, rows))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> ModelFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_layout(
    layout: Sequence[tuple[str, str, tuple[int, ...]]], max_bytes: int
) -> list[list[tuple[str, str, tuple[int, ...], int]]]:
    """Cut (name, dtype tag, shape) entries, in writing order, into shards of at most `max_bytes` (a
    larger tensor gets a shard of its own); each entry gains its size in bytes."""
    shards: list[list[tuple[str, str, tuple[int, ...], int]]] = [[]]
    filled = 0
    for name, tag, shape in layout:
        size = DTYPES[tag].itemsize * int(torch.Size(shape).numel())
        if shards[-1] and filled + size > max_bytes:
            shards.append([])
            filled = 0
        shards[-1].append((name, tag, tuple(shape), size))
        filled += size
    return shards


class ShardedWriter:
    """Write tensors, in the order of `layout` (name, dtype tag, shape), into
    `model-XXXXX-of-YYYYY.safetensors` shards of at most `max_bytes` each, then the index. `add`
    takes a whole tensor or its next rows and returns while a thread writes them, so the disk works
    while the caller merges the next block (at most one block in flight; the tensor must not change
    until written). Use it as a context manager: after an error it finishes the write in flight."""

    def __init__(self, folder: Path, max_bytes: int, layout: Sequence[tuple[str, str, tuple[int, ...]]]):
        self.folder = Path(folder)
        self._shards = shard_layout(layout, max_bytes)
        self._queue = [(i, name, tag, size) for i, shard in enumerate(self._shards) for name, tag, _, size in shard]
        self._next, self._written = 0, 0
        self._file: Any = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusecli-writer")
        self._inflight: Future | None = None
        self.total_bytes = sum(size for *_, size in self._queue)

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            self._finish(raise_errors=False)

    def _name(self, i: int) -> str:
        return f"model-{i + 1:05d}-of-{len(self._shards):05d}.safetensors"

    def _open(self, i: int) -> None:
        """Start shard i with its header: every offset is known before any data is written."""
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, tag, shape, size in self._shards[i]:
            header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the reference writer pads the header to 8 bytes
        self._file = open(self.folder / self._name(i), "wb")
        self._file.write(len(text).to_bytes(8, "little") + text)

    def _write(self, shard: int, data: Any, last: bool) -> None:
        """In the writer thread: open the shard on its first bytes, close it after its last tensor."""
        if self._file is None:
            self._open(shard)
        self._file.write(memoryview(data))
        if last:
            self._file.close()
            self._file = None

    def _wait(self) -> None:
        """Wait until the block in flight is on disk; re-raise its error."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.result()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._queue) or self._queue[self._next][1] != name:
            expected = self._queue[self._next][1] if self._next < len(self._queue) else "nothing"
            raise ValueError(f"ShardedWriter got {name!r} but expected {expected!r}")
        shard, _, tag, size = self._queue[self._next]
        if tensor.dtype != DTYPES[tag]:
            raise ValueError(f"{name!r} is {tensor.dtype}, its layout says {tag}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        if self._written + len(data) > size:
            raise ValueError(f"{name!r} got more than its {size} bytes")
        self._written += len(data)
        last = False
        if self._written == size:
            self._next, self._written = self._next + 1, 0
            last = self._next == len(self._queue) or self._queue[self._next][0] != shard
        self._wait()
        self._inflight = self._thread.submit(self._write, shard, data, last)

    def _finish(self, raise_errors: bool) -> None:
        try:
            self._wait()
        except Exception:
            if raise_errors:
                raise
        finally:
            self._thread.shutdown()
            if self._file is not None:
                self._file.close()
                self._file = None

    def close(self) -> dict[str, str]:
        """Wait for the last write; check that every tensor was written; write the index; return the
        weight map."""
        self._finish(raise_errors=True)
        if self._next < len(self._queue):
            raise ValueError(f"ShardedWriter closed before {self._queue[self._next][1]!r} was written")
        weight_map = {name: self._name(i) for i, name, _, _ in self._queue}
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

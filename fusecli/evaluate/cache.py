"""Per-model evaluation results on disk, so `evaluate` rescores only the models that changed.

DVC reruns `evaluate` as a whole whenever any model changes (a source added, a merge rerun), but the
pivot, the sources and most pair-fused models are then byte-for-byte the same. A result is keyed by
everything that decides it: the model folder's content hash (weights, config, tokenizer), the eval
data's hash, the evaluation settings, the scoring code and the torch/transformers versions. The
cache lives in an ignored scratch folder (.fusecli/) and is disposable: delete it and nothing is lost.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import transformers

from fusecli.closure import ROOT, closure
from fusecli.hashing import CACHE_FILE, content_hash, file_sha256
from fusecli.io import atomic_write_json

DEFAULT_DIR = Path(".fusecli") / "cache" / "evaluate"
SCORING = "fusecli.evaluate.run"  # score_model: its import closure is the scoring code


def code_hash(code: str = SCORING) -> str:
    """The scoring code (every file module `code` imports, fusecli/closure.py) and the libraries it runs on:
    a change to either invalidates every result."""
    h = hashlib.sha256(f"torch {torch.__version__} transformers {transformers.__version__}\n".encode())
    for path in closure(code):
        h.update(f"{path}\n".encode())
        h.update((ROOT / path).read_bytes())
    return h.hexdigest()


class EvalCache:
    """Scores per model folder for one eval data file and one set of evaluation settings; `code` names the
    module whose import closure computes them (the judge's answers are cached the same way)."""

    def __init__(self, folder: str | Path, data: str | Path, settings: dict[str, Any], code: str = SCORING) -> None:
        self.folder = Path(folder)
        self.hash_cache = self.folder.parent / Path(CACHE_FILE).name  # size/mtime-keyed file hashes
        fixed = {"data": file_sha256(Path(data)), "settings": settings, "code": code_hash(code)}
        self._fixed = json.dumps(fixed, sort_keys=True)

    def key(self, model: str | Path) -> str:
        digest = content_hash(model, self.hash_cache)
        return hashlib.sha256(f"{self._fixed}\n{digest}".encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.folder / f"{key}.json"
        try:
            return json.loads(path.read_text())["scores"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or corrupt: rescore

    def put(self, key: str, scores: dict[str, Any]) -> None:
        try:
            atomic_write_json(self.folder / f"{key}.json", {"scores": scores})
        except OSError:
            pass  # a read-only workspace only loses the speed-up

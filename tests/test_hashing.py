"""Which files decide a model folder's content hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusecli import hashing
from fusecli.errors import FusecliError
from fusecli.merge.io import ModelFolder


@pytest.mark.parametrize("weights", ["model.pkl", "pytorch_model.bin", "model.pt"])
def test_pickle_only_weights_are_hashed_and_refused_by_merge(tmp_path: Path, weights: str) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / weights).write_bytes(b"\x80\x04 one")
    before = hashing.content_hash(tmp_path)
    (tmp_path / weights).write_bytes(b"\x80\x04 two")
    assert hashing.content_hash(tmp_path) != before  # a changed pickle is a changed model
    with pytest.raises(FusecliError, match=f"only pickle weights \\({weights}\\)"):
        ModelFolder(tmp_path)

import os
from pathlib import Path

import numpy as np
import pytest

from fusecli.errors import FusecliError
from fusecli.store import StoreWriter, iter_records, merge_parts, read_manifest


def recs(lo, hi):
    return [{"seq_index": i, "x": np.arange(i % 3 + 1, dtype=np.int32), "s": float(i)} for i in range(lo, hi)]


def test_round_trip_and_resume_keeps_the_written_prefix(tmp_path):
    w = StoreWriter.open(tmp_path, {"v": 1}, shard_size=2)
    w.write(recs(0, 2))
    w.write(recs(2, 4))
    again = StoreWriter.open(tmp_path, {"v": 1}, shard_size=2)  # a killed run, reopened
    assert again.done == 4 and again.done_indices == {0, 1}
    again.write([])  # every record of a shard dropped: listed without a file
    again.write(recs(4, 5))
    again.close()
    got = list(iter_records(tmp_path))
    assert [r["seq_index"] for r in got] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(got[4]["x"], np.arange(2))
    assert StoreWriter.open(tmp_path, {"v": 2}).done == 0  # other meta: start over


def test_part_writers_merge_into_the_single_writer_store(tmp_path):
    single = StoreWriter.open(tmp_path / "one", {"v": 1})
    for g in range(5):
        single.write(recs(2 * g, 2 * g + 2))
    single.close({"n": 1})
    for rank in (1, 0):
        w = StoreWriter.open(tmp_path / "dp", {"v": 1}, rank=rank, world=2)
        for g in range(rank, 5, 2):
            w.write(recs(2 * g, 2 * g + 2), index=g)
        with pytest.raises(ValueError):
            w.write([], index=rank + 1)  # another rank's shard
        w.close({"tokens": rank})
    merged = merge_parts(tmp_path / "dp", 2, lambda parts: {"tokens": sum(p["tokens"] for p in parts)})
    assert merged["shards"] == read_manifest(tmp_path / "one")["shards"] and merged["summary"] == {"tokens": 1}
    for g in range(5):
        name = f"shard-{g:05d}.safetensors"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "dp" / name).read_bytes()
    assert not list((tmp_path / "dp").glob("manifest.part-*"))


def test_merge_refuses_an_unfinished_rank_and_reading_refuses_a_missing_shard(tmp_path):
    for rank in (0, 1):
        w = StoreWriter.open(tmp_path, {"v": 1}, rank=rank, world=2)
        w.write(recs(rank, rank + 1), index=rank)
        if rank == 0:
            w.close()
    with pytest.raises(FusecliError, match="did not finish"):
        merge_parts(tmp_path, 2)
    StoreWriter.open(tmp_path, {"v": 1}, rank=1, world=2).close()
    merge_parts(tmp_path, 2)
    (tmp_path / "shard-00001.safetensors").unlink()
    with pytest.raises(FusecliError, match="missing"):
        list(iter_records(tmp_path))


def test_atomic_dir_output_gets_the_usual_mode(tmp_path: Path) -> None:
    """mkdtemp makes 0700 folders; an output folder must be readable like any other (umask applies)."""
    from fusecli.io import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755

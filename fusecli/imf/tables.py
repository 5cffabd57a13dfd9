"""The imf stages' tables on disk: parquet written atomically, read back with their columns checked."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from fusecli.errors import FusecliError
from fusecli.io import atomic_write_bytes

SAMPLES = {"row": pl.Int64, "id": pl.String, "source": pl.String, "k": pl.Int64, "prompt": pl.String,
           "response": pl.String}  # imf/samples/<slug>.parquet; prompt: the JSON messages before the response
SCORES = {"row": pl.Int64, "source": pl.String, "k": pl.Int64, "score": pl.Float64}  # imf/scores.parquet


def write_table(df: pl.DataFrame, path: str | Path) -> None:
    buf = io.BytesIO()
    df.write_parquet(buf)
    atomic_write_bytes(path, buf.getvalue())


def read_table(path: str | Path, columns: dict[str, pl.DataType], made_by: str) -> pl.DataFrame:
    """The table at `path` with `columns`; missing or of another shape: rerun `made_by`."""
    try:
        df = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError):
        raise FusecliError(f"{path} is missing or unreadable: run `dvc repro {made_by}`") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FusecliError(f"{path} has no column {missing[0]!r}: it was written by another version; "
                           f"run `dvc repro -f {made_by}`")
    return df.select(list(columns))


def load_samples(samples_dir: str | Path, slugs: list[str]) -> pl.DataFrame:
    """Every locked source's samples, in slug order."""
    if not slugs:
        raise FusecliError("models.lock has no sources to sample from: add one with `fusecli add-source`")
    return pl.concat([read_table(Path(samples_dir) / f"{s}.parquet", SAMPLES, f"sample@{s}") for s in slugs])

"""sample@<slug>: n seeded responses per training prompt, in the source's own template; the same settings
give the same bytes, another seed other responses."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import polars as pl
import pytest

from fusecli.errors import FusecliError
from fusecli.imf.params import SampleParams
from fusecli.imf.sample import sample
from fusecli.imf.tables import SAMPLES, read_table
from tests.tiny import dialogues, write_model

PARAMS = SampleParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=4, batch_size=2, seed=0,
                      backend="transformers", device="cpu", dtype="auto")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    rows = dialogues(5)
    rows[4] = rows[0] + [{"role": "user", "content": "And again?"}, {"role": "assistant", "content": "Paris"}]
    pl.DataFrame({"id": [f"r{i}" for i in range(5)], "messages": [json.dumps(m) for m in rows]}
                 ).write_parquet(root / "train.parquet")
    return root, write_model(root / "src", "llama", 300, seed=4), rows


def test_n_responses_per_prompt_seeded(world, tmp_path):
    root, model, rows = world
    done = sample(root / "train.parquet", "src", str(model), tmp_path / "a.parquet", PARAMS)
    assert done["prompts"] == 5 and done["responses"] == 15
    table = read_table(tmp_path / "a.parquet", SAMPLES, "sample@src")
    assert table.group_by("row").len().sort("row")["len"].to_list() == [3] * 5
    assert set(table["source"]) == {"src"} and table.filter(pl.col("row") == 4)["id"].to_list() == ["r4"] * 3
    assert json.loads(table.filter(pl.col("row") == 4)["prompt"][0]) == rows[4][:3]  # before the last reply
    sample(root / "train.parquet", "src", str(model), tmp_path / "b.parquet", PARAMS)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    other = dataclasses.replace(PARAMS, seed=1)
    sample(root / "train.parquet", "src", str(model), tmp_path / "c.parquet", other)
    assert read_table(tmp_path / "c.parquet", SAMPLES, "")["response"].to_list() != table["response"].to_list()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="the error is for machines without vllm")
def test_vllm_backend_without_vllm_is_one_line(world, tmp_path):
    root, model, _ = world
    params = dataclasses.replace(PARAMS, backend="vllm")
    with pytest.raises(FusecliError, match=r"^imf.sample.backend = vllm but vllm is not installed: pip install vllm"):
        sample(root / "train.parquet", "src", str(model), tmp_path / "v.parquet", params)

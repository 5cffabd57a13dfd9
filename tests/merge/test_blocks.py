"""Merging in row blocks (tensors too large for memory) gives what merging whole tensors gives."""

import json

import pytest
import torch

from fusecli.merge import merge_models, merge_params
from fusecli.merge import run as merge_run
from fusecli.merge.io import ModelFolder, ShardedWriter
from fusecli.merge.methods.common import kth_largest

from . import reference

METHODS = ["sce", "varm", "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"]


@pytest.mark.parametrize("k", [0, 1, 7, 500, 3000, 3699, 3700, 4000])
def test_kth_largest_over_chunks_is_kthvalue(k):
    torch.manual_seed(0)
    x = torch.randn(3, 100, 37).abs()
    x[:, :5] = 0  # zeros: k counts nonzero values below
    x[1, 40:60] = x[1, 40, 0]  # ties at many positions
    x[2, 70, :3] = torch.tensor([1e-40, 2e-40, 3e-45])  # subnormals share the lowest high-bit bucket
    got = kth_largest(lambda: (x[:, i : i + 13] for i in range(0, 100, 13)), lambda nonzero: k)
    flat = x.flatten(1)
    for n in range(3):
        if k <= 0:
            assert got[n] == float("inf")
        elif k >= flat.shape[1]:
            assert got[n] == float("-inf")
        else:
            assert got[n] == flat[n].kthvalue(flat.shape[1] - k + 1).values


def test_kth_largest_sees_nonzero_counts():
    x = torch.tensor([[0.0, 0.0, 3.0, 1.0, 2.0, 0.0]])
    assert kth_largest(lambda: [x[:, :3], x[:, 3:]], lambda nonzero: nonzero - 1).tolist() == [2.0]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_row_blocks_give_the_whole_tensor_result(tiny, tmp_path, monkeypatch, method):
    """Every tensor cut into blocks of 100 elements (a few rows of the 96 x 32 embeddings)."""
    params = merge_params(method, **({"variant": "sparse"} if method == "sce" else {}))
    whole = merge_models(tiny.base, tiny.models, params, tmp_path / "whole")
    monkeypatch.setattr(merge_run, "BLOCK_ELEMENTS", 100)
    assert len(merge_run.row_blocks((96, 32))) == 32
    blocked = merge_models(tiny.base, tiny.models, params, tmp_path / "blocked")
    assert reference.files(blocked.out) == reference.files(whole.out)
    for name, per_model in whole.report["coefficients"].items():
        assert blocked.report["coefficients"][name] == pytest.approx(per_model, rel=1e-12, abs=1e-15), name


@pytest.mark.slow
def test_row_blocks_crop_a_grown_vocabulary(tiny, tmp_path, monkeypatch):
    models = [("m1", tiny.m1), ("m2", tiny.m2), ("m3", tiny.m3_grown)]
    whole = merge_models(tiny.base, models, merge_params("ties"), tmp_path / "whole")
    monkeypatch.setattr(merge_run, "BLOCK_ELEMENTS", 100)
    blocked = merge_models(tiny.base, models, merge_params("ties"), tmp_path / "blocked")
    assert reference.files(blocked.out) == reference.files(whole.out)


def test_read_rows(tiny):
    with ModelFolder(tiny.m1_sharded) as folder:
        full = folder.read("model.embed_tokens.weight")
        assert torch.equal(folder.read("model.embed_tokens.weight", slice(10, 25)), full[10:25])
        assert folder.read("model.embed_tokens.weight", slice(5, 5)).shape == (0, 32)


def test_writer_takes_row_blocks_in_layout_order(tmp_path):
    a, b = torch.arange(12, dtype=torch.float32).reshape(4, 3), torch.ones(2, dtype=torch.bfloat16)
    writer = ShardedWriter(tmp_path, max_bytes=10**6, layout=[("a", "F32", (4, 3)), ("b", "BF16", (2,))])
    with pytest.raises(ValueError, match="expected 'a'"):
        writer.add("b", b)
    writer.add("a", a[:1])
    writer.add("a", a[1:])
    with pytest.raises(ValueError, match="BF16"):
        writer.add("b", b.float())
    writer.add("b", b)
    weight_map = writer.close()
    assert weight_map == {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}
    (tmp_path / "config.json").write_text(json.dumps({}))
    with ModelFolder(tmp_path) as folder:
        assert torch.equal(folder.tensor("a"), a) and torch.equal(folder.tensor("b"), b)


def test_writer_refuses_to_close_early(tmp_path):
    writer = ShardedWriter(tmp_path, max_bytes=10**6, layout=[("a", "F32", (4,))])
    writer.add("a", torch.zeros(2))
    with pytest.raises(ValueError, match="before 'a' was written"):
        writer.close()

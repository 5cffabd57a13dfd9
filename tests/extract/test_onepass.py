"""The one-pass head (fusecli/extract/onepass.py) against plain log_softmax + topk.

The torch path runs everywhere; the Triton kernels run on CUDA (or on the CPU under TRITON_INTERPRET=1
with triton installed), and are skipped otherwise: CI has no GPU.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from fusecli.extract.onepass import tiled_row_stats
from fusecli.extract.topk import row_stats


def kernel_device() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None:
        return "cpu"
    return None


needs_kernel = pytest.mark.skipif(kernel_device() is None, reason="needs CUDA (or TRITON_INTERPRET=1 with triton)")
KERNELS = ["triton_row_stats", "rowloop_row_stats"]  # per-tile candidates then a merge; one program per row


def kernel(name: str):
    from fusecli.extract import onepass_kernel

    return getattr(onepass_kernel, name)


def reference(logits: torch.Tensor, gold: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp64 log_softmax; top-K by a stable descending sort, so ties go to the lowest id."""
    logp = torch.log_softmax(logits.double(), -1)
    order = torch.sort(logits.double(), dim=-1, descending=True, stable=True).indices[:, :k]
    return order, logp.gather(-1, order), -logp.gather(-1, gold[:, None]).squeeze(-1)


def assert_matches(got: tuple, ref: tuple, atol: float) -> None:
    ids, lp, ce = got
    ref_ids, ref_lp, ref_ce = ref
    assert ids.dtype == torch.int64 and lp.dtype == torch.float32 and ce.dtype == torch.float32
    assert torch.equal(ids.cpu(), ref_ids.cpu())
    np.testing.assert_allclose(lp.cpu().double().numpy(), ref_lp.cpu().numpy(), rtol=0, atol=atol)
    np.testing.assert_allclose(ce.cpu().double().numpy(), ref_ce.cpu().numpy(), rtol=0, atol=atol)


def make(rows: int, vocab: int, dtype: torch.dtype, seed: int, device: str = "cpu", levels: int = 0):
    """Random logits at a real model's scale; `levels` > 0 draws from that many values (many ties)."""
    g = torch.Generator().manual_seed(seed)
    if levels:
        x = torch.randint(1, levels + 1, (rows, vocab), generator=g).float() * 0.25
    else:
        x = torch.randn(rows, vocab, generator=g) * 3
    gold = torch.randint(0, vocab, (rows,), generator=g)
    return x.to(dtype).to(device), gold.to(device)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("vocab,block", [(300, 64), (256, 64), (50, 4096), (1000, 16)])
def test_torch_path_matches_log_softmax_topk(seed, vocab, block):
    """Tiles of `block` columns (several, a partial last one, or one larger than the row) change nothing."""
    logits, gold = make(37, vocab, torch.float32, seed)
    assert_matches(tiled_row_stats(logits, gold, 10, block), reference(logits, gold, 10), atol=2e-5)
    # and the path extraction used before: same ids and values (no ties in random fp32 logits)
    ids, lp, ce = row_stats(logits, gold, 10)
    assert_matches(tiled_row_stats(logits, gold, 10, block), (ids, lp.double(), ce.double()), atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_ties_go_to_the_lowest_id_across_tiles(dtype):
    logits, gold = make(23, 700, dtype, seed=5, levels=6)  # ~117 copies of the top value per row
    assert_matches(tiled_row_stats(logits, gold, 10, 64), reference(logits, gold, 10), atol=2e-5)


def test_rows_with_nan_or_inf_come_out_non_finite():
    """What the stage's NaN/inf check (run.py `finite`) drops, here as in the plain path."""
    logits, gold = make(4, 300, torch.float32, seed=3)
    logits[0, 17], logits[1, 250], logits[2, 5] = torch.nan, torch.inf, -torch.inf
    ids, lp, ce = tiled_row_stats(logits, gold, 10, 64)
    finite = torch.isfinite(lp).all(1) & torch.isfinite(ce)
    assert finite.tolist() == [False, False, gold[2].item() != 5, True]
    assert (ids >= 0).all() and (ids < 300).all()


@needs_kernel
@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_the_torch_path_and_the_reference(name, dtype, seed):
    device = kernel_device()
    logits, gold = make(19, 1000, dtype, seed, device)
    got = kernel(name)(logits, gold, 10, 128)
    assert_matches(got, reference(logits, gold, 10), atol=2e-5)
    assert_matches(got, tuple(t.double() if t.is_floating_point() else t for t in tiled_row_stats(
        logits, gold, 10, 128)), atol=2e-5)


@needs_kernel
@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_breaks_ties_like_the_torch_path(name, dtype):
    logits, gold = make(11, 700, dtype, seed=9, device=kernel_device(), levels=6)
    assert_matches(kernel(name)(logits, gold, 10, 64), reference(logits, gold, 10), atol=2e-5)


@needs_kernel
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_rows_with_nan_or_inf_come_out_non_finite(name):
    logits, gold = make(4, 300, torch.bfloat16, seed=3, device=kernel_device())
    logits[0, 17], logits[1, 250], logits[2, 5] = torch.nan, torch.inf, -torch.inf
    ids, lp, ce = kernel(name)(logits, gold, 10, 64)
    finite = (torch.isfinite(lp).all(1) & torch.isfinite(ce)).tolist()
    assert finite == [False, False, gold[2].item() != 5, True]
    assert (ids >= 0).all() and (ids < 300).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_at_a_real_vocabulary_matches_the_compiled_path(name):
    """152,064 columns in tiles of 4,096 (a partial last tile), bf16 as the LM head makes them."""
    logits, gold = make(1024, 152_064, torch.bfloat16, seed=4, device="cuda")
    ids, lp, ce = kernel(name)(logits, gold, 10, 4096)
    ref_ids, ref_lp, ref_ce = reference(logits, gold, 10)
    torch.testing.assert_close(lp.double(), ref_lp, rtol=0, atol=2e-5)
    torch.testing.assert_close(ce.double(), ref_ce, rtol=0, atol=2e-5)
    assert torch.equal(ids, ref_ids)
    old_ids, old_lp, old_ce = row_stats(logits, gold, 10)  # today's path: same values (ids may differ on ties)
    torch.testing.assert_close(lp, old_lp, rtol=0, atol=2e-5)
    torch.testing.assert_close(ce, old_ce, rtol=0, atol=2e-5)
    assert (logits.gather(1, ids) == logits.gather(1, old_ids)).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_extraction_on_cuda_stores_the_same_rows_with_the_onepass_head(tmp_path):
    """The stage's wiring: extract.onepass on and off write the same rows (exact store, eager layers)."""
    from fusecli.data.render import Tokenized
    from fusecli.extract.run import ExtractParams, extract_items
    from fusecli.perf import QWEN2, random_qwen2
    from fusecli.store import iter_records

    model = random_qwen2({**QWEN2["smoke"], "vocab_size": 5000}, torch.bfloat16, torch.device("cuda")).eval()
    rng = np.random.default_rng(0)
    items = []
    for length in rng.integers(20, 120, 12):
        mask = np.arange(length) >= length // 3
        turns = np.array([[0, 0, length, length]], np.int32)
        items.append(Tokenized(rng.integers(0, 5000, length), np.zeros((length, 2), np.int32), mask, turns))
    stores = {}
    for onepass in (False, True):
        params = ExtractParams(k=8, max_length=128, batch_tokens=256, shard_size=6, compact=False, compile=False,
                               onepass=onepass)
        extract_items(items, model, tmp_path / str(onepass), params, torch.device("cuda"))
        stores[onepass] = list(iter_records(tmp_path / str(onepass)))
    assert [r["seq_index"] for r in stores[True]] == [r["seq_index"] for r in stores[False]] == list(range(12))
    for old, new in zip(stores[False], stores[True], strict=True):
        np.testing.assert_allclose(new["topk_logprobs"], old["topk_logprobs"], rtol=0, atol=2e-5)
        np.testing.assert_allclose(new["token_ce"], old["token_ce"], rtol=0, atol=2e-5)
        for ids_new, ids_old, lp in zip(new["topk_ids"], old["topk_ids"], old["topk_logprobs"], strict=True):
            above = lp > lp.min()  # entries tied with the K-th value may be other ids of that same value
            assert set(ids_new[above]) == set(ids_old[above])

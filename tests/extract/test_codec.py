import numpy as np
import pytest
import torch

from fusecli.extract.codec import GAP_LEVELS, TopKCodec, topk_kl


def rows(rng, n, vocab, k, scale):
    """Top-K of random logits over a 64-candidate tail: sharp (large scale) to flat (small scale)."""
    logits = rng.normal(size=(n, 64)) * scale
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    lp = (np.sort(logits, 1)[:, ::-1][:, :k] - lse[:, None]).astype(np.float32)
    ids = np.argsort(rng.random((n, vocab)), axis=1)[:, :k] if vocab < 5000 else rng.integers(0, vocab, (n, k))
    return ids, lp, rng.exponential(2.0, n).astype(np.float32)


@pytest.mark.parametrize(("vocab", "k"), [(152_064, 10), (32_000, 10), (300, 4), (50, 1)])
def test_round_trip_within_kl_bound(vocab, k):
    rng = np.random.default_rng(vocab)
    codec = TopKCodec(vocab, k)
    for scale in (0.3, 2.0, 8.0, 40.0):
        ids, lp, ce = rows(rng, 2000, vocab, k, scale)
        if vocab >= 5000:  # distinct ids per row, including the extremes of the range
            ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(len(ids))])
            ids[0] = np.arange(vocab - k, vocab)
            ids[1] = np.arange(k)
        codes = codec.encode(torch.from_numpy(ids), torch.from_numpy(lp), torch.from_numpy(ce)).numpy()
        assert codes.shape == (len(ids), codec.row_bytes) and codes.dtype == np.uint8
        got_ids, got_lp, got_ce = codec.decode(codes)
        assert topk_kl(got_ids, got_lp, ids, lp).max() <= 1e-3
        assert (np.diff(got_lp, axis=1) <= 0).all()  # descending, like the exact rows
        np.testing.assert_allclose(got_lp[:, 0], lp[:, 0], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(got_ce, ce, rtol=1e-3)


def test_worst_case_rounding_stays_within_kl_bound():
    """Every gap half-way between two levels (the largest rounding error) in the dense head."""
    codec = TopKCodec(152_064, 10)
    rng = np.random.default_rng(0)
    mid = (GAP_LEVELS[1:] + GAP_LEVELS[:-1]) / 2 - 1e-6
    gaps = np.sort(rng.choice(mid[:110], (5000, 9)), axis=1)
    lp = np.concatenate([np.zeros((5000, 1)), -gaps], axis=1).astype(np.float32) - 0.5
    ids = np.stack([rng.choice(152_064, 10, replace=False) for _ in range(5000)])
    codes = codec.encode(torch.from_numpy(ids), torch.from_numpy(lp), torch.zeros(5000))
    got_ids, got_lp, _ = codec.decode(codes.numpy())
    assert topk_kl(got_ids, got_lp, ids, lp).max() <= 1e-3


def test_qwen_vocabulary_fits_32_bytes_per_token():
    assert TopKCodec(152_064, 10).row_bytes == 32  # plain int32 ids + fp16 values: 60
    assert TopKCodec(32_000, 10).row_bytes <= 32

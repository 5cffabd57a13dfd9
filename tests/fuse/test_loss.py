import numpy as np
import pytest
import torch

from fusecli.fuse.functions import FUSION_FUNCTIONS, avg_ce, fuse_targets, min_ce, teacher_probs
from fusecli.fuse.loss import combine, sparse_losses


def dense_reference(hidden, head, gold, ids, probs, vocab):
    """The release's way: dense |V| targets and a full log-softmax."""
    logp = torch.log_softmax(head(hidden).float(), -1)
    q = torch.zeros(len(ids), vocab)
    for r in range(len(ids)):
        for j in range(ids.shape[1]):
            if ids[r, j] >= 0:
                q[r, ids[r, j]] += probs[r, j]
    fuse = -(q * logp).sum(-1).mean()
    sft = -logp.gather(-1, gold[:, None]).mean()
    return sft, fuse


def test_sparse_loss_and_gradients_equal_dense_reference():
    torch.manual_seed(0)
    vocab, n = 40, 23
    head = torch.nn.Linear(8, vocab, bias=False)
    hidden = torch.randn(n, 8, requires_grad=True)
    gold = torch.randint(0, vocab, (n,))
    ids = torch.randint(-1, vocab, (n, 6))  # -1 = padding
    probs = torch.rand(n, 6) * (ids >= 0)
    probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-9)
    sft, fuse = sparse_losses(hidden, head, gold, ids, probs, chunk=7)
    ref_sft, ref_fuse = dense_reference(hidden, head, gold, ids, probs, vocab)
    torch.testing.assert_close(sft, ref_sft)
    torch.testing.assert_close(fuse, ref_fuse)
    g = torch.autograd.grad(combine(sft, fuse, 0.9), [hidden, head.weight])
    g_ref = torch.autograd.grad(combine(ref_sft, ref_fuse, 0.9), [hidden, head.weight])
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_combine_weighs_sft_by_lambda():
    sft, fuse = torch.tensor(2.0), torch.tensor(4.0)
    assert combine(sft, fuse, 0.9).item() == pytest.approx(0.9 * 2 + 0.1 * 4)
    assert combine(sft, fuse, 1.0).item() == 2.0


def test_teacher_probs_is_softmax_over_topk_with_temperature():
    lp = np.array([[-0.5, -1.5, -np.inf]])
    q = teacher_probs(lp, 2.0)
    ref = np.exp([-0.25, -0.75])
    np.testing.assert_allclose(q[0, :2], ref / ref.sum())
    assert q[0, 2] == 0


def test_mince_picks_lowest_sequence_ce_ties_to_pivot():
    np.testing.assert_array_equal(min_ce(np.array([1.2, 0.7])), [0, 1])
    np.testing.assert_array_equal(min_ce(np.array([0.7, 1.2])), [1, 0])
    np.testing.assert_array_equal(min_ce(np.array([0.7, 0.7])), [1, 0])
    np.testing.assert_array_equal(min_ce(np.array([0.7, np.inf])), [1, 0])


def test_avgce_is_softmax_of_rewards():
    ce = np.array([1.0, 2.0])
    r = np.exp(-ce)
    np.testing.assert_allclose(avg_ce(ce), np.exp(r) / np.exp(r).sum())
    np.testing.assert_allclose(avg_ce(np.array([1.0, np.inf])), [1.0, 0.0])
    assert set(FUSION_FUNCTIONS) >= {"mince", "avgce"}


def test_fuse_targets_equals_weighted_dense_sum():
    ids = [np.array([[1, 2]]), np.array([[2, 3]])]
    probs = [np.array([[0.6, 0.4]]), np.array([[0.5, 0.5]])]
    t_ids, t_p = fuse_targets(np.array([0.25, 0.75]), ids, probs)
    dense = np.zeros(4)
    np.add.at(dense, t_ids[0], t_p[0])
    np.testing.assert_allclose(dense, [0, 0.15, 0.1 + 0.375, 0.375])
    only_pivot_ids, _ = fuse_targets(np.array([1.0, 0.0]), ids, probs)
    np.testing.assert_array_equal(only_pivot_ids, ids[0])

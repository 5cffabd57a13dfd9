import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch.func import functional_call, grad
from transformers import AutoModelForCausalLM

from fusecli.errors import FusecliError
from fusecli.fuse.data import Example
from fusecli.fuse.fisher import FisherParams, diag_fisher, run, taught
from tests.tiny import write_model

VOCAB = 300


def examples(n: int, seed: int = 0, weights=None) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(6, 12))
        ids = rng.integers(0, VOCAB, size=length)
        positions = np.arange(int(rng.integers(2, length - 1)), length)
        w = 1.0 if weights is None else weights[i]
        out.append(Example(ids, positions, ids[positions, None], np.ones((len(positions), 1), np.float32), w))
    return out


def plain_fisher(model, exs, weights):
    """Per sequence, the gradient of sum_t log q(argmax_t) by torch.func, squared, weighted and averaged."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for ex, w in zip(exs, weights, strict=True):
        ids = torch.as_tensor(ex.input_ids)[None]
        pos = torch.as_tensor(ex.positions)

        def own(p, ids=ids, pos=pos):
            lp = torch.log_softmax(functional_call(model, p, (ids,)).logits[0, pos - 1], dim=-1)
            return lp[torch.arange(len(pos)), lp.argmax(-1)].sum()

        for n, g in grad(own)(params).items():
            total[n] += w * g**2
    return {n: t / sum(weights) for n, t in total.items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("m") / "pair", vocab_size=VOCAB, tie_word_embeddings=True)


def test_diag_fisher_matches_per_sequence_gradients(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    exs = examples(4)
    weights = np.array([1.0, 0.5, 2.0, 1.0])
    got = diag_fisher(model, exs, weights, torch.device("cpu"))
    expected = plain_fisher(model, exs, weights)
    assert set(got) == set(expected)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-12, msg=n)
    assert all(float(f.sum()) > 0 for f in got.values())


def test_taught_keeps_the_sources_sequences_and_draws_a_seeded_subset():
    exs = examples(10, weights=[0, 1, 1, 0, 0.5, 1, 0, 1, 1, 0])
    index, w = taught(exs, seed=0, limit=100)
    assert index == [1, 2, 4, 5, 7, 8] and w.tolist() == [1, 1, 0.5, 1, 1, 1]
    a, _ = taught(exs, seed=3, limit=3)
    assert len(a) == 3 and set(a) <= set(index) and a == sorted(a) and a == taught(exs, seed=3, limit=3)[0]


def test_output_is_a_model_shaped_folder_with_the_stored_names(tiny, tmp_path):
    exs = examples(5, weights=[1, 0, 1, 1, 0])
    summary = run(tiny, exs, FisherParams(sequences=2, seed=0, device="cpu"), tmp_path / "fisher")
    assert summary["sequences"] == 2 and summary["taught"] == 3 and summary["of"] == 5
    with safe_open(str(tiny / "model.safetensors"), "pt") as m, safe_open(str(tmp_path / "fisher/model.safetensors"),
                                                                          "pt") as f:  # fmt: skip
        assert sorted(f.keys()) == sorted(m.keys())  # a tied lm_head is stored once, as the embedding
        assert "lm_head.weight" not in f.keys()
        for name in m.keys():
            assert f.get_tensor(name).shape == m.get_tensor(name).shape
            assert torch.all(f.get_tensor(name) >= 0)
    assert (tmp_path / "fisher/config.json").read_text() == (tiny / "config.json").read_text()


def test_a_source_that_taught_nothing_gets_zero_importance(tiny, tmp_path):
    summary = run(tiny, examples(3, weights=[0, 0, 0]), FisherParams(sequences=8, seed=0, device="cpu"),
                  tmp_path / "f")  # fmt: skip
    assert summary["sequences"] == 0 and summary["taught"] == 0
    with safe_open(str(tmp_path / "f/model.safetensors"), "pt") as f:
        assert all(float(f.get_tensor(n).abs().sum()) == 0.0 for n in f.keys())


def test_bad_sequences():
    with pytest.raises(FusecliError, match="fisher.sequences = 0"):
        FisherParams(sequences=0, seed=0, device="cpu").validate()

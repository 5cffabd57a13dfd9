from collections import Counter

import numpy as np
import pytest

from fusecli.align.vocab import Cooccurrence, direct_map, em_map, mined_vocab_map, ms_map, weighted_distance
from fusecli.errors import FusecliError

from .reference import make_table

SOURCE = make_table(["<unk>", "<s>", "</s>", "▁the", "the", "▁ca", "x", "▁dog", "▁cats"], "<s>", "</s>", "<unk>")
PIVOT = make_table(["<unk>", "<s>", "</s>", "▁the", "▁cat", "▁c", "at", "▁th"], "<s>", "</s>", "<unk>")


def _cooc(counts: dict[tuple[int, int], int], flush_at: int = 1 << 22) -> Cooccurrence:
    cooc = Cooccurrence(PIVOT.size, SOURCE.size, flush_at=flush_at)
    for (p, s), n in counts.items():
        cooc.add(np.full(n, p), np.full(n, s))
    return cooc


def test_cooccurrence_counts_pairs_sparsely():
    rng = np.random.default_rng(0)
    p, s = rng.integers(0, 50, 500), rng.integers(0, 70, 500)
    cooc = Cooccurrence(50, 70, flush_at=37)  # several merges
    for lo in range(0, 500, 23):
        cooc.add(p[lo : lo + 23], s[lo : lo + 23])
    got_p, got_s, got_n = cooc.pairs()
    assert dict(zip(zip(got_p.tolist(), got_s.tolist(), strict=True), got_n.tolist(), strict=True)) == Counter(
        zip(p.tolist(), s.tolist(), strict=True)
    )
    assert list(zip(got_s, got_p, strict=True)) == sorted(zip(got_s, got_p, strict=True))


def test_weighted_distance_shrinks_containment():
    got = weighted_distance(
        ["ca", "the", "x", ""], ["cat", "at", "c", ""], ["▁ca", "the", "x", "▁"], ["▁cat", "at", "c", "▁"]
    )
    np.testing.assert_allclose(got, [0.1, 3.0, 1.0, 0.0])


def test_ms_map_hand_computed():
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    cooc = _cooc(
        {
            (3, 3): 1, (7, 3): 10,  # "▁the": exact pivot "▁the" (ED' 0) beats the frequent "▁th"
            (4, 5): 1, (5, 5): 5,  # "▁ca": "▁cat" 0.1*sig(1) < "▁c" 0.1*sig(5)
            (7, 4): 2, (6, 4): 1,  # "the": "▁th" 0.1*sig(2) < "at" 3*sig(1)
            (6, 6): 3, (5, 6): 3,  # "x": "▁c" 1*sig(3) < "at" 2*sig(3)
            (6, 7): 4, (4, 7): 4,  # "▁dog": a tie at 3*sig(4): the lowest pivot id ("▁cat")
            (3, 1): 1,  # bos co-occurring with "▁the" still maps to bos
        }
    )  # fmt: skip
    assert 0.1 * sig(1) < 0.1 * sig(5) and 0.1 * sig(2) < 3 * sig(1)
    mapping = ms_map(cooc, SOURCE, PIVOT)
    assert mapping.tolist() == [0, 1, 2, 3, 7, 4, 5, 4, 0]  # "<unk>" and "▁cats" never seen -> pivot unk


def test_ms_map_counts_do_not_depend_on_flushing():
    counts = {(3, 3): 2, (7, 3): 1, (4, 5): 3, (5, 5): 1, (6, 6): 2}
    np.testing.assert_array_equal(ms_map(_cooc(counts), SOURCE, PIVOT), ms_map(_cooc(counts, 2), SOURCE, PIVOT))


def test_em_map_and_fallback_to_eos():
    assert em_map(SOURCE, PIVOT).tolist() == [0, 1, 2, 3, 0, 0, 0, 0, 0]
    no_unk = make_table(["<|im_end|>", "▁the", "x"], eos="<|im_end|>")
    src = make_table(["</s>", "▁the", "y", "x"], eos="</s>")
    assert em_map(src, no_unk).tolist() == [0, 1, 0, 2]
    with pytest.raises(FusecliError, match="neither an unk nor an eos"):
        em_map(src, make_table(["a", "b"]))


def test_mined_vocab_map_nearest_token():
    got = mined_vocab_map(SOURCE, PIVOT, chunk=2)
    assert got[3] == 3  # exact
    assert got[4] == 3  # "the" -> "▁the" (stripped distance 0)
    assert got[6] == 5  # "x" -> "▁c" (distance 1, the first at that distance)
    assert got[8] == 4  # "▁cats" -> "▁cat"
    assert got[:3].tolist() == [0, 1, 2]


def test_direct_map_prefers_exact_match():
    vocab_map = np.zeros(SOURCE.size, dtype=np.int32)
    assert direct_map(vocab_map, SOURCE, PIVOT).tolist() == [0, 1, 2, 3, 0, 0, 0, 0, 0]
    vocab_map[4] = 7
    assert direct_map(vocab_map, SOURCE, PIVOT)[4] == 7

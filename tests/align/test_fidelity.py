"""Fidelity (fusecli/align/fidelity.py): the teacher mass of the used source rows, split by where the map
sends each token, against one plain loop (reference.fidelity_reference)."""

import numpy as np
import pytest

from fusecli.align.dist import MAPPED_RULES, RULES
from fusecli.align.fidelity import WHOLE_TOKEN_RULES, Fidelity, consistent_targets
from fusecli.align.pieces import PIECE_RULES, canon_bytes, prefix_map

from .reference import assert_close_tree, fidelity_reference, make_table


def _state(to_pivot, consistent, piece_rule):
    return {
        "to_pivot": np.asarray(to_pivot), "consistent": np.asarray(consistent), "piece_rule": np.asarray(piece_rule)
    }


def _reference(batches, state, within=()):
    """`batches`: (ids, logprobs, rules, gold[, source wins]) as Fidelity.add takes them."""
    rows = [
        (ids[r].tolist(), lp[r].tolist(), RULES[rule[r]], int(gold[r]), bool(rest and rest[0]))
        for ids, lp, rule, gold, *rest in batches
        for r in range(len(ids))
    ]
    pairs = [(src[r].tolist(), kept[r].tolist()) for src, kept in within for r in range(len(src))]
    return fidelity_reference(rows, state["to_pivot"].tolist(), state["consistent"].tolist(),
                              state["piece_rule"].tolist(), RULES, PIECE_RULES, WHOLE_TOKEN_RULES, pairs)


def test_hand_made_rows():
    """Source ids: 0 `▁Archery` -> pivot 5 (consistent, first piece), 1 `▁Athletics` -> 5 (consistent),
    2 `rchery`-like wrong target 7 (not consistent), 3 dropped (-1), 4 the source's end of turn -> pivot 9."""
    state = _state([5, 5, 7, -1, 9], [True, True, False, False, True], [1, 1, 0, 4, 3])
    ids = np.array([[0, 1, 2, 3], [4, 2, 0, 6]])  # 6 is past the table: no mass counted
    lp = np.log(np.array([[0.5, 0.2, 0.2, 0.1], [0.6, 0.3, 0.05, 0.05]]))
    rule = np.array([RULES.index("content"), RULES.index("end_of_turn")])
    fid = Fidelity()
    fid.add(ids, lp, rule, np.array([5, 9]), state)
    got = fid.summary()
    assert got["teacher_mass"] == pytest.approx(1.95)
    assert got["consistent"] == pytest.approx((0.5 + 0.2 + 0.6 + 0.05) / 1.95)
    assert got["dropped"] == pytest.approx(0.1 / 1.95)
    assert got["by_row_rule"]["end_of_turn"]["mass"] == pytest.approx(0.95 / 1.95)
    assert got["by_piece_rule"]["first_piece"]["consistent"] == pytest.approx(0.75 / 1.95)
    assert got["by_piece_rule"]["exact"] == {"mass": pytest.approx(0.5 / 1.95), "consistent": 0.0}
    assert got["end_of_turn"] == {"rows": 1, "mass_on_end_of_turn": pytest.approx(0.6), "top_is_end_of_turn": 1.0}
    assert_close_tree(got, _reference([(ids, lp, rule, np.array([5, 9]))], state))


def test_end_of_turn_top_is_the_summed_pivot_token():
    """Two text tokens that both map to pivot 7 (0.35 + 0.3) outweigh the end of turn (0.35): not on top."""
    state = _state([9, 7, 7], [True, True, True], [3, 1, 1])
    ids, lp = np.array([[0, 1, 2]]), np.log(np.array([[0.35, 0.35, 0.3]]))
    fid = Fidelity()
    fid.add(ids, lp, np.array([RULES.index("end_of_turn")]), np.array([9]), state)
    assert fid.summary()["end_of_turn"] == {"rows": 1, "mass_on_end_of_turn": pytest.approx(0.35),
                                            "top_is_end_of_turn": 0.0}


@pytest.mark.parametrize("seed", range(3))
def test_random_rows_match_the_loop_and_merge_adds(seed):
    rng = np.random.default_rng(seed)
    vs, vp, k = 50, 20, 6
    state = _state(rng.integers(-1, vp, vs), rng.random(vs) < 0.7, rng.integers(0, len(PIECE_RULES), vs))
    batches = []
    for _ in range(4):
        r = int(rng.integers(1, 30))
        ids = rng.integers(0, vs + 3, (r, k))
        lp = np.log(rng.dirichlet(np.ones(k), r)).astype(np.float32)
        lp[rng.random((r, k)) < 0.05] = -np.inf
        rule = rng.choice([RULES.index(n) for n in MAPPED_RULES], r)
        gold = rng.integers(0, vp, r)
        eot = rule == RULES.index("end_of_turn")  # their gold: often the top token's image (a pivot id, never -1)
        image = state["to_pivot"][np.minimum(ids[:, 0], vs - 1)]
        gold[eot] = np.where(image[eot] >= 0, image[eot], gold[eot])
        batches.append((ids, lp, rule, gold, len(batches) % 2 == 1))  # odd batches: sequences the source wins
    within = [(np.log(rng.dirichlet(np.ones(k), 3)), np.log(rng.dirichlet(np.ones(k), 3)) - 1.0) for _ in range(2)]
    whole, parts = Fidelity(), []
    for b, w in zip(batches, within + [None] * len(batches), strict=False):
        for fid in (whole, part := Fidelity()):
            fid.add(*b[:4], state, source_wins=b[4])
            if w is not None:
                fid.add_within(*w)
        parts.append(part)
    merged = Fidelity()
    for p in parts:
        merged.merge(p)
    expected = _reference(batches, state, within)
    assert_close_tree(whole.summary(), expected, rel=1e-6)
    assert_close_tree(merged.summary(), expected, rel=1e-6)
    assert expected["end_of_turn"]["rows"] > expected["end_of_turn_source_wins"]["rows"] > 0
    assert 0 < expected["consistent"] < 1 and 0 < expected["within_token"]["kept"] < 1


def test_empty():
    fid = Fidelity()
    fid.add(np.zeros((0, 3), np.int64), np.zeros((0, 3)), np.zeros(0, np.int8), np.zeros(0, np.int64), {})
    got = fid.summary()
    assert got["teacher_mass"] == 0.0 and got["consistent"] is None and got["end_of_turn"]["rows"] == 0


def test_consistent_targets():
    """Whether each source token's image starts its text (bytes), special tokens to special tokens only,
    against a direct bytes comparison; the paper's `Archery` -> `rchery` is not."""
    pivot = make_table(["<|im_end|>", "A", "rchery", "▁A", "▁", "<"], special=("<|im_end|>",))
    source = make_table(["<end_of_turn>", "▁Archery", "Archery", "Archery", "▁x", "<0xE4>", "<a>"],
                        special=("<end_of_turn>",))
    to_pivot = np.array([0, 3, 1, 2, -1, 4, 0])  # source 3 -> `rchery` (the paper's map), 6 (text) -> special
    got = consistent_targets(to_pivot, source, pivot).tolist()
    assert got == [True, True, True, False, False, False, False]
    for s, p in enumerate(to_pivot.tolist()):
        if s not in source.special and p >= 0 and p not in pivot.special:
            assert got[s] == canon_bytes(source.canon[s]).startswith(canon_bytes(pivot.canon[p]))


def test_the_prefix_map_is_consistent_everywhere_it_maps(tables, tokenizers):
    for pivot, source in (("byte", "meta"), ("meta", "byte"), ("byte", "gemma")):
        to_pivot, _ = prefix_map(tables[source], tables[pivot], tokenizers[pivot])
        assert (consistent_targets(to_pivot, tables[source], tables[pivot]) == (to_pivot >= 0)).all()

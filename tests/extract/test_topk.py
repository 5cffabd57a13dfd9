import numpy as np
import pytest
import torch

from fusecli.extract import run as extract_run
from fusecli.extract.codec import topk_kl
from fusecli.extract.run import ExtractParams, ModelRef, Rank, extract
from fusecli.extract.topk import topk_logprobs
from fusecli.store import iter_records, read_manifest
from tests.tiny import write_dataset, write_model


def test_chunked_topk_equals_full_log_softmax():
    torch.manual_seed(0)
    hidden, head = torch.randn(37, 8), torch.nn.Linear(8, 50, bias=False)
    gold = torch.randint(0, 50, (37,))
    ids, logp, ce = topk_logprobs(hidden, head, gold, k=5, chunk=10)
    full = torch.log_softmax(head(hidden), dim=-1)
    ref_lp, ref_id = full.topk(5, dim=-1)
    assert torch.equal(ids, ref_id)
    torch.testing.assert_close(logp, ref_lp)
    torch.testing.assert_close(ce, -full.gather(-1, gold[:, None]).squeeze(-1))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("extract")
    write_dataset(d / "train.parquet", 20)
    write_model(d / "pivot", "qwen2", 300)
    write_model(d / "source", "llama", 280, seed=1)
    return d


PARAMS = ExtractParams(k=4, max_length=64, batch_tokens=200, shard_size=6)
EXACT = ExtractParams(k=4, max_length=64, batch_tokens=200, shard_size=6, compact=False)


def naive(model, r):
    """Full logits of one unpadded sequence; the stored row for response token t comes from position t-1."""
    with torch.no_grad():
        logits = model(torch.as_tensor(r["input_ids"][None], dtype=torch.long)).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    t = np.nonzero(r["label_mask"])[0]
    ref_lp, ref_id = logp[t - 1].topk(4, dim=-1)
    return ref_id.numpy(), ref_lp.numpy(), -logp[t - 1, r["input_ids"][t]].numpy()


def test_extract_matches_naive_full_logits(world):
    from transformers import AutoModelForCausalLM

    extract(world / "train.parquet", ModelRef(str(world / "source")), world / "out", EXACT)
    model = AutoModelForCausalLM.from_pretrained(world / "source").eval()
    records = list(iter_records(world / "out"))
    assert [r["seq_index"] for r in records] == list(range(20))
    for r in records:
        ref_id, ref_lp, gold_ce = naive(model, r)
        np.testing.assert_array_equal(r["topk_ids"], ref_id)
        np.testing.assert_allclose(r["topk_logprobs"], ref_lp, atol=1e-5)
        np.testing.assert_allclose(r["token_ce"], gold_ce, atol=1e-5)
        assert r["seq_ce"] == pytest.approx(float(gold_ce.mean()), abs=1e-5)


ALPACA = (
    "{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
    "{% else %}### Response:\n{{ m['content'] }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


def test_each_model_reads_the_dataset_in_its_own_chat_template(tmp_path):
    """A source whose template is not the pivot's (text markup, no ChatML): its store holds its own
    rendering, token for token, and each record's `turns` (span and content start/end per assistant turn)."""
    from fusecli.data.render import render, tokenize
    from fusecli.extract.run import load_dialogues
    from fusecli.tokenizer import load_tokenizer

    write_dataset(tmp_path / "train.parquet", 6)
    folder = write_model(tmp_path / "source", "llama", 280, seed=1)
    tok = load_tokenizer(folder)
    tok.chat_template = ALPACA
    tok.save_pretrained(folder)
    extract(tmp_path / "train.parquet", ModelRef(str(folder)), tmp_path / "out", EXACT)
    tok = load_tokenizer(folder)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    dialogues = load_dialogues(tmp_path / "train.parquet")
    records = list(iter_records(tmp_path / "out"))
    assert len(records) == len(dialogues) == 6
    for r, msgs in zip(records, dialogues, strict=True):
        rendered = render(tok, msgs)
        own = tokenize(tok, rendered, EXACT.max_length)
        assert rendered.text.startswith("### Instruction:\n")
        np.testing.assert_array_equal(r["input_ids"], own.input_ids)
        np.testing.assert_array_equal(r["turns"], rendered.turns)
        assert r["turns"].dtype == np.int32 and im_start not in r["input_ids"]
        (_, a, b, _), answer = r["turns"][0].tolist(), msgs[-1]["content"]
        assert rendered.text[a:b] == answer


def test_compact_store_is_within_the_kl_bound_and_reads_the_same_fields(world):
    from transformers import AutoModelForCausalLM

    extract(world / "train.parquet", ModelRef(str(world / "source")), world / "packed", PARAMS)
    assert read_manifest(world / "packed")["meta"]["codec"] == {"vocab": 280, "k": 4}
    model = AutoModelForCausalLM.from_pretrained(world / "source").eval()
    records = list(iter_records(world / "packed"))
    assert [r["seq_index"] for r in records] == list(range(20))
    for r in records:
        ref_id, ref_lp, gold_ce = naive(model, r)
        assert r["topk_ids"].dtype == np.int32 and r["topk_logprobs"].dtype == np.float32
        assert (np.diff(r["topk_logprobs"], axis=1) <= 0).all()
        assert topk_kl(r["topk_ids"], r["topk_logprobs"], ref_id, ref_lp).max() <= 1e-3
        np.testing.assert_allclose(r["token_ce"], gold_ce, rtol=1e-3)
        assert r["seq_ce"] == pytest.approx(float(gold_ce.mean()), abs=1e-5)  # from the exact values


def test_data_parallel_ranks_write_the_same_store_as_one_process(world):
    pivot = ModelRef(str(world / "pivot"))
    extract(world / "train.parquet", pivot, world / "single", PARAMS)
    for r in (2, 1, 0):  # rank 0 merges after the barrier, so it finishes last
        extract(world / "train.parquet", pivot, world / "dp", PARAMS, rank=Rank(r, 3))
    single, dp = read_manifest(world / "single"), read_manifest(world / "dp")
    assert dp["shards"] == single["shards"] and dp["records"] == single["records"] == 20
    assert dp["summary"]["world_size"] == 3
    names = sorted(p.name for p in (world / "single").iterdir())
    assert names == sorted(p.name for p in (world / "dp").iterdir())  # part manifests are gone
    for name in names:
        if name.endswith(".safetensors"):
            assert (world / "single" / name).read_bytes() == (world / "dp" / name).read_bytes()
    # a finished store is not redone, even by another number of ranks
    stamps = {p.name: p.stat().st_mtime_ns for p in (world / "dp").glob("*.safetensors")}
    for r in (1, 0):
        extract(world / "train.parquet", pivot, world / "dp", PARAMS, rank=Rank(r, 2))
    assert read_manifest(world / "dp")["shards"] == single["shards"]
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (world / "dp").glob("*.safetensors")}


def test_resume_after_interruption_gives_identical_bytes(world, monkeypatch):
    pivot = ModelRef(str(world / "pivot"))
    extract(world / "train.parquet", pivot, world / "full", PARAMS)

    original = extract_run.StoreWriter.write
    calls = {"n": 0}

    def dying_write(self, records, index=None):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while the third shard was being produced
        calls["n"] += 1
        original(self, records, index)

    monkeypatch.setattr(extract_run.StoreWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        extract(world / "train.parquet", pivot, world / "resumed", PARAMS)
    monkeypatch.setattr(extract_run.StoreWriter, "write", original)
    assert len(read_manifest_partial(world / "resumed")) == 2
    extract(world / "train.parquet", pivot, world / "resumed", PARAMS)
    full = sorted(p.name for p in (world / "full").iterdir())
    assert full == sorted(p.name for p in (world / "resumed").iterdir())
    for name in full:
        if name.endswith(".safetensors"):
            assert (world / "full" / name).read_bytes() == (world / "resumed" / name).read_bytes()


def read_manifest_partial(root):
    import json

    return json.loads((root / "manifest.json").read_text())["shards"]


def test_nan_rows_are_reported_and_excluded(world, monkeypatch):
    original = extract_run.forward_rows

    def poisoned(*args, **kwargs):
        ids, lp, ce, counts = original(*args, **kwargs)
        lp[: counts[0]] = float("nan")  # the first sequence of every batch
        return ids, lp, ce, counts

    monkeypatch.setattr(extract_run, "forward_rows", poisoned)
    pivot = ModelRef(str(world / "pivot"))
    summary = extract(world / "train.parquet", pivot, world / "nan", PARAMS)
    assert summary["dropped_rows"]
    kept = {r["seq_index"] for r in iter_records(world / "nan")}
    assert kept.isdisjoint(summary["dropped_rows"])
    assert len(kept) + len(summary["dropped_rows"]) == 20
    assert read_manifest(world / "nan")["summary"]["dropped_rows"] == summary["dropped_rows"]


def test_rows_cut_at_max_length_are_counted_and_warned(world, tmp_path):
    """A reply past extract.max_length loses its end and end-of-turn: the store's summary counts the rows and
    the response tokens lost (against the full tokenization), and the warning names them with the fix."""
    from fusecli.data.render import render, tokenize
    from fusecli.extract import truncation
    from fusecli.extract.run import load_dialogues, row_ids
    from fusecli.tokenizer import load_tokenizer

    params = ExtractParams(k=4, max_length=24, batch_tokens=200, shard_size=6)
    summary = extract(world / "train.parquet", ModelRef(str(world / "source")), tmp_path / "out", params)
    tok = load_tokenizer(world / "source")
    full = [tokenize(tok, render(tok, d)) for d in load_dialogues(world / "train.parquet")]
    lost = [int(t.label_mask[24:].sum()) for t in full]
    assert summary["cut_rows"] == [i for i, n in enumerate(lost) if n] and summary["cut_rows"]
    assert summary["response_tokens_cut"] == sum(lost)
    assert summary["response_tokens"] == sum(int(t.label_mask.sum()) for t in full)
    found = truncation.read(tmp_path / "out")
    assert found == {**{k: summary[k] for k in truncation.KEYS}, "rows": 20, "max_length": 24}
    ids = row_ids(world / "train.parquet")
    line = truncation.warning(summary, 20, 24, ids)
    assert line.startswith(f"{len(summary['cut_rows'])} of 20 rows cut at extract.max_length = 24 (ids r")
    share = sum(lost) / summary["response_tokens"]
    assert f"({share:.1%}) lost with their end-of-turn: raise extract.max_length" in line
    assert truncation.warning(extract(world / "train.parquet", ModelRef(str(world / "source")), tmp_path / "all",
                                      PARAMS), 20, 64) is None  # nothing cut at 64

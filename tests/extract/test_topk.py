import numpy as np
import pytest
import torch

from fusecli.extract import run as extract_run
from fusecli.extract.run import ExtractParams, ModelRef, extract
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


def test_extract_matches_naive_full_logits(world):
    from transformers import AutoModelForCausalLM

    pivot = ModelRef(str(world / "pivot"))
    extract(world / "train.parquet", ModelRef(str(world / "source")), pivot, world / "out", PARAMS)
    model = AutoModelForCausalLM.from_pretrained(world / "source").eval()
    records = list(iter_records(world / "out"))
    assert [r["seq_index"] for r in records] == list(range(20))
    for r in records:
        with torch.no_grad():
            logits = model(torch.as_tensor(r["input_ids"][None], dtype=torch.long)).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        t = np.nonzero(r["label_mask"])[0]
        # the distribution stored for response token t is the one at position t-1 (it predicts token t)
        ref_lp, ref_id = logp[t - 1].topk(4, dim=-1)
        np.testing.assert_array_equal(r["topk_ids"], ref_id.numpy())
        np.testing.assert_allclose(r["topk_logprobs"], ref_lp.numpy(), atol=1e-5)
        gold_ce = -logp[t - 1, r["input_ids"][t]].numpy()
        np.testing.assert_allclose(r["token_ce"], gold_ce, atol=1e-5)
        assert r["seq_ce"] == pytest.approx(float(gold_ce.mean()), abs=1e-5)


def test_resume_after_interruption_gives_identical_bytes(world, monkeypatch):
    pivot = ModelRef(str(world / "pivot"))
    extract(world / "train.parquet", pivot, pivot, world / "full", PARAMS)

    original = extract_run.StoreWriter.write
    calls = {"n": 0}

    def dying_write(self, records):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while the third shard was being produced
        calls["n"] += 1
        original(self, records)

    monkeypatch.setattr(extract_run.StoreWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        extract(world / "train.parquet", pivot, pivot, world / "resumed", PARAMS)
    monkeypatch.setattr(extract_run.StoreWriter, "write", original)
    assert len(read_manifest_partial(world / "resumed")) == 2
    extract(world / "train.parquet", pivot, pivot, world / "resumed", PARAMS)
    full = sorted(p.name for p in (world / "full").iterdir())
    assert full == sorted(p.name for p in (world / "resumed").iterdir())
    for name in full:
        if name.endswith(".safetensors"):
            assert (world / "full" / name).read_bytes() == (world / "resumed" / name).read_bytes()


def read_manifest_partial(root):
    import json

    return json.loads((root / "manifest.json").read_text())["shards"]


def test_nan_rows_are_reported_and_excluded(world, monkeypatch):
    original = extract_run.extract_batch

    def poisoned(model, items, k, device, chunk):
        out = original(model, items, k, device, chunk)
        ids, lp, ce = out[0]
        out[0] = (ids, np.full_like(lp, np.nan), ce)
        return out

    monkeypatch.setattr(extract_run, "extract_batch", poisoned)
    pivot = ModelRef(str(world / "pivot"))
    summary = extract(world / "train.parquet", pivot, pivot, world / "nan", PARAMS)
    assert summary["dropped_rows"]
    kept = {r["seq_index"] for r in iter_records(world / "nan")}
    assert kept.isdisjoint(summary["dropped_rows"])
    assert len(kept) + len(summary["dropped_rows"]) == 20
    assert read_manifest(world / "nan")["summary"]["dropped_rows"] == summary["dropped_rows"]

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from fusecli.extract.run import ExtractParams, ModelRef, extract
from fusecli.fuse import train as train_mod
from fusecli.fuse.data import build_examples
from fusecli.fuse.train import FuseParams, train
from fusecli.store import StoreWriter, iter_records
from tests.killing import TIMING_KEYS
from tests.tiny import write_dataset, write_model

pytestmark = pytest.mark.slow  # trains tiny models: make test, not make test-fast


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A pivot, its extract store, and an 'aligned source' that is a sharper copy of the pivot's teacher."""
    d = tmp_path_factory.mktemp("fuse")
    write_dataset(d / "train.parquet", 16)
    write_model(d / "pivot", "qwen2", 300)
    ref = ModelRef(str(d / "pivot"))
    extract(d / "train.parquet", ref, d / "extract", ExtractParams(k=4, max_length=64, batch_tokens=512))
    w = StoreWriter.open(d / "align", {"test": 1})
    records = []
    for r in iter_records(d / "extract"):
        gold = r["input_ids"][np.nonzero(r["label_mask"])[0]]
        ids = np.full_like(r["topk_ids"], -1)
        ids[:, 0] = gold  # the source is a confident expert: one-hot on the gold token
        lp = np.full(ids.shape, -np.inf, dtype=np.float32)
        lp[:, 0] = 0.0
        records.append(
            {"seq_index": r["seq_index"], "topk_ids": ids, "topk_logprobs": lp,
             "mapped": np.ones(len(ids), np.uint8), "seq_ce": 0.01}
        )
    w.write_all(records)
    w.close()
    return d


def params(d, **kw):
    base = dict(learning_rate=3e-3, epochs=1.0, max_steps=12, global_batch_size=8, micro_batch_size=4,
                save_steps=4, logging_steps=2, scratch=str(d / "scratch"), seed=3)
    return FuseParams(**{**base, **kw})


def fusion_loss(model_dir, d):
    from transformers import AutoModelForCausalLM

    from fusecli.extract.topk import final_hidden
    from fusecli.fuse.data import collate
    from fusecli.fuse.loss import sparse_losses

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    examples, _ = build_examples(d / "extract", [d / "align"], d / "train.parquet", "mince", 1.0, 10_000)
    b = collate([{"input_ids": e.input_ids, "positions": e.positions, "ids": e.target_ids,
                  "probs": e.target_probs} for e in examples])
    with torch.no_grad():
        h = final_hidden(model, b["input_ids"], b["attention_mask"])
        _, fuse = sparse_losses(h[b["row_batch"], b["row_pos"] - 1], model.get_output_embeddings(),
                                b["input_ids"][b["row_batch"], b["row_pos"]], b["target_ids"], b["target_probs"])
    return float(fuse)


def test_training_lowers_fusion_loss_and_writes_hf_folder(pair):
    stats = train(str(pair / "pivot"), str(pair / "extract"), [str(pair / "align")], str(pair / "train.parquet"),
                  str(pair / "fused"), str(pair / "logs"), params(pair))
    assert fusion_loss(pair / "fused", pair) < fusion_loss(pair / "pivot", pair) - 0.1
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (pair / "fused").iterdir()}
    assert not list((pair / "fused").glob("*.bin"))
    # the source is far more confident than the random pivot, so MinCE chose it everywhere
    assert stats["source_share"] == {"capital": 1.0, "currency": 1.0, "region": 1.0}
    assert (pair / "logs" / "metrics.json").exists()


def test_checkpoint_interval_changes_no_byte_of_the_output(pair):
    """fuse.save_steps is unhashed (fusecli/pipeline.py): checkpoints must not change the result."""
    args = (str(pair / "pivot"), str(pair / "extract"), [str(pair / "align")], str(pair / "train.parquet"))
    train(*args, str(pair / "save4"), str(pair / "logs4"), params(pair, save_steps=4))
    train(*args, str(pair / "save6"), str(pair / "logs6"), params(pair, save_steps=6))
    files = sorted(p.name for p in (pair / "save4").iterdir())
    assert files == sorted(p.name for p in (pair / "save6").iterdir())
    for name in files:
        assert (pair / "save4" / name).read_bytes() == (pair / "save6" / name).read_bytes(), name
    curves = sorted(p.relative_to(pair / "logs4") for p in (pair / "logs4").rglob("*.tsv") if p.stem not in TIMING_KEYS)
    assert len(curves) > 3
    for f in curves:
        assert (pair / "logs4" / f).read_bytes() == (pair / "logs6" / f).read_bytes(), f


class Killer(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 7:
            raise KeyboardInterrupt


def test_resume_after_kill_reaches_identical_weights(pair, monkeypatch):
    args = (str(pair / "pivot"), str(pair / "extract"), [str(pair / "align")], str(pair / "train.parquet"))
    train(*args, str(pair / "straight"), str(pair / "logs_a"), params(pair))
    original = train_mod.FusionTrainer.__init__

    def with_killer(self, *a, **kw):
        original(self, *a, **kw)
        self.add_callback(Killer())

    monkeypatch.setattr(train_mod.FusionTrainer, "__init__", with_killer)
    with pytest.raises(KeyboardInterrupt):
        train(*args, str(pair / "resumed"), str(pair / "logs_b"), params(pair))
    assert not (pair / "resumed").exists()
    monkeypatch.setattr(train_mod.FusionTrainer, "__init__", original)
    train(*args, str(pair / "resumed"), str(pair / "logs_b"), params(pair))
    a = load_file(pair / "straight" / "model.safetensors")
    b = load_file(pair / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_missing_aligned_shard_is_a_one_line_error(pair, tmp_path):
    import shutil

    from fusecli.errors import FusecliError

    broken = tmp_path / "align"
    shutil.copytree(pair / "align", broken)
    next(broken.glob("shard-*.safetensors")).unlink()
    with pytest.raises(FusecliError, match="missing: rerun") as err:
        train(str(pair / "pivot"), str(pair / "extract"), [str(broken)], str(pair / "train.parquet"),
              str(tmp_path / "out"), str(tmp_path / "logs"), params(pair))
    assert "\n" not in str(err.value)


def test_stores_made_for_another_pivot_vocabulary_are_refused(pair, tmp_path):
    from fusecli.errors import FusecliError
    from fusecli.fuse.train import check_inputs

    vocab = len(__import__("transformers").AutoTokenizer.from_pretrained(pair / "pivot"))
    check_inputs(pair / "extract", [pair / "align"], vocab)
    with pytest.raises(FusecliError, match="rerun extract_pivot"):
        check_inputs(pair / "extract", [], vocab + 1)
    w = StoreWriter.open(tmp_path / "align", {"kind": "align", "pivot_vocab": vocab + 7})
    w.write_all([])
    w.close()
    with pytest.raises(FusecliError, match="rerun align"):
        check_inputs(pair / "extract", [tmp_path / "align"], vocab)
    with pytest.raises(FusecliError, match="outside the pivot's vocabulary"):
        build_examples(pair / "extract", [pair / "align"], pair / "train.parquet", "mince", 1.0, 5)


def test_lambda_outside_unit_interval_exits_with_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from stages import fuse as stage

    (tmp_path / "params.yaml").write_text("fuse:\n  lam: 1.5\n")
    argv = ["fuse.py", "--params", str(tmp_path / "params.yaml"), "--data", "d", "--pivot-extract", "p",
            "--align", "a", "--out", "o", "--live-dir", "l"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as code:
        stage.main()
    assert code.value.code == 1
    assert capsys.readouterr().err.strip() == "error: fuse.lam = 1.5 must be within [0, 1]"


def test_deepspeed_config_is_completed_by_the_transformers_integration():
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from fusecli.fuse.train import deepspeed_config, training_args

    p = FuseParams(zero_stage=3, micro_batch_size=4, global_batch_size=128)
    ds = HfTrainerDeepSpeedConfig(deepspeed_config(p, bf16=True))
    ds.trainer_config_process(training_args(FuseParams(micro_batch_size=4), "unused", torch.device("cpu"),
                                            torch.float32))
    assert ds.is_zero3() and ds.config["train_batch_size"] == 128
    assert ds.config["gradient_accumulation_steps"] == 32 and ds.config["bf16"]["enabled"] is False


def test_align_root_teaches_with_every_locked_source_in_slug_order(tmp_path, monkeypatch):
    import sys

    from fusecli.lock import Lock, ModelEntry, dump_lock
    from stages import fuse as stage

    def entry(name):
        return ModelEntry(name=name, origin="local", path=f"m/{name}", repo=None, revision=None,
                          content_hash="sha256:" + "0" * 64, architecture="Qwen2ForCausalLM", vocab_size=64,
                          dtype="float32", chat_template_hash=None, trust_remote_code=False, allow_pickle=False)

    (tmp_path / "params.yaml").write_text("fuse:\n  gate: 1.0\n  teacher: reference\n")
    (tmp_path / "models.lock").write_text(dump_lock(Lock(pivot=entry("p"), sources={"b": entry("b"), "a": entry("a")})))
    calls = []
    monkeypatch.setattr(stage, "verify_pinned", lambda *a, **k: None)
    monkeypatch.setattr(stage, "train", lambda *a: calls.append(a))
    base = ["fuse.py", "--params", str(tmp_path / "params.yaml"), "--lock", str(tmp_path / "models.lock"),
            "--data", "d", "--pivot-extract", "p", "--out", "o", "--live-dir", "l"]
    monkeypatch.setattr(sys, "argv", [*base, "--align-root", "align"])
    stage.main()
    assert calls[-1][2] == ["align/a", "align/b"]
    assert calls[-1][6].gate == 1.0 and calls[-1][6].teacher == "reference"
    monkeypatch.setattr(sys, "argv", [*base, "--align", "align/b"])
    stage.main()
    assert calls[-1][2] == ["align/b"]
    monkeypatch.setattr(sys, "argv", [*base, "--sft-baseline"])
    stage.main()
    assert calls[-1][2] == [] and calls[-1][6].lam == 1.0
    assert (calls[-1][6].gate, calls[-1][6].teacher) == (None, "model")  # fixed: no fusion term (fuse/sft.py)

"""A source that teaches nothing is said out loud: in the fuse stage's log and at the top of reports/index.md."""

import json
import sys

import numpy as np
import polars as pl
import pytest

from fusecli.fuse.data import build_examples
from fusecli.fuse.selection import control_line, silent, taught, warnings
from fusecli.lock import Lock, ModelEntry, dump_lock
from fusecli.report.stage import run as report
from fusecli.store import StoreWriter
from stages import fuse as stage
from tests.report.workspace import build as report_workspace
from tests.report.workspace import inputs as report_inputs

VOCAB, K, N = 30, 3, 150
DOMAINS = ["capital", "currency"]


def write_store(path, records):
    w = StoreWriter.open(path, {"test": 1})
    w.write_all(records)
    w.close()
    return path


def row(rng, r):
    ids = np.stack([rng.choice(VOCAB, K, replace=False) for _ in range(r)]).astype(np.int64)
    return ids, np.log(np.full((r, K), 1 / K, dtype=np.float32))


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    """A pivot store and source `b`, whose sequence CE beats the pivot's on one sequence of 150 (0.67%)."""
    d = tmp_path_factory.mktemp("quiet")
    rng = np.random.default_rng(0)
    pl.DataFrame({"domain": [DOMAINS[i % 2] for i in range(N)]}).write_parquet(d / "train.parquet")
    pivot, source = [], []
    for i in range(N):
        mask = np.array([0, 0, 1, 1], np.uint8)
        ids, lp = row(rng, 2)
        pivot.append({"seq_index": i, "input_ids": rng.integers(0, VOCAB, 4).astype(np.int64), "label_mask": mask,
                      "topk_ids": ids, "topk_logprobs": lp, "seq_ce": 1.0})
        ids, lp = row(rng, 2)
        source.append({"seq_index": i, "topk_ids": ids, "topk_logprobs": lp, "seq_ce": 0.5 if i == 7 else 3.0})
    write_store(d / "extract", pivot)
    write_store(d / "align" / "b", source)
    return d


def write_pivot_lock(path):
    """A models.lock with a pivot only: the fuse stage reads it; `train` is faked, so no weights are needed."""
    entry = ModelEntry(name="p", origin="local", path="m/p", repo=None, revision=None,
                       content_hash="sha256:" + "0" * 64, architecture="Qwen2ForCausalLM", vocab_size=VOCAB,
                       dtype="float32", chat_template_hash=None, trust_remote_code=False, allow_pickle=False)
    path.write_text(dump_lock(Lock(pivot=entry, sources={})))


def selection_of(d, fusion_fn="mince", teacher="model"):
    _, stats = build_examples(d / "extract", [d / "align" / "b"], d / "train.parquet", fusion_fn, 1.0, VOCAB,
                              teacher)
    return stats


def test_the_share_is_counted_over_every_domain(quiet):
    stats = selection_of(quiet)
    assert stats["source_share"] == {"capital": 0.0, "currency": pytest.approx(1 / 75)}  # sequence 7 is odd
    (t,) = taught(stats, ["b"])
    assert (t.source, t.sequences, t.total) == ("b", pytest.approx(1.0), N)
    assert silent(stats, ["b"]) == [t]
    (line,) = warnings("fuse@b", stats, ["b"])
    assert line.startswith("fuse@b: source b taught 1 of 150 sequences (0.7%, under 1%)")
    assert "the source never won MinCE: fused = SFT" in line
    assert "align/b/coverage.json" in line and "fuse.fusion_fn: avgce" in line


def test_no_warning_for_a_teaching_source_the_control_or_an_uncountable_file(quiet):
    stats = selection_of(quiet)
    taught_enough = {**stats["teacher_share"], "b": {"capital": 0.02, "currency": 0.0}}  # 1.5 of 150 sequences
    assert warnings("fuse@b", {**stats, "teacher_share": taught_enough}, ["b"]) == []
    older = {k: v for k, v in stats.items() if k != "teacher_share"}  # a pair run's file before teacher_share
    assert len(warnings("fuse@b", older, ["b"])) == 1
    assert warnings("fuse@b", selection_of(quiet, teacher="reference"), ["b"]) == []
    assert warnings("fuse@b", selection_of(quiet, teacher="pivot"), ["b"]) == []
    assert warnings("fuse@b", {**stats, "sequences": None}, ["b"]) == []  # nothing to count with
    assert warnings("fuse@b", selection_of(quiet, "avgce"), ["b"]) == []  # AvgCE: about half the weight


def test_fuse_all_names_each_silent_source_and_the_gate():
    selection = {"fusion_fn": "mince", "teacher": "model", "gate": 2.0, "sequences": {"capital": 100},
                 "teacher_share": {"pivot": {"capital": 0.6}, "a": {"capital": 0.4}, "b": {"capital": 0.0}}}
    (line,) = warnings("fuse_all", selection, ["a", "b"])
    assert line.startswith("fuse_all: source b taught 0 of 100 sequences (0.0%, under 1%)")
    assert "fuselm learned nothing from it" in line and "raise fuse.gate" in line


def test_the_log_and_the_report_warn_about_a_source_that_never_won(quiet, tmp_path, monkeypatch, capsys):
    """The planted source: the fuse stage (its training replaced by the selection it writes) prints the
    warning on stderr, and the report made from its selection.json shows it at the top."""
    (tmp_path / "ws").mkdir()
    ws = report_workspace(tmp_path / "ws")  # sources a and b; b's pair run is the planted one
    monkeypatch.chdir(tmp_path)

    def fake_train(pivot_model, pivot_extract, aligns, data, out, logs, params, trust_remote_code):
        _, stats = build_examples(pivot_extract, aligns, data, params.fusion_fn, params.temperature, VOCAB)
        (tmp_path / logs / "selection.json").write_text(json.dumps({"train_loss": 1.0, **stats}))
        return {"train_loss": 1.0, **stats}

    monkeypatch.setattr(stage, "verify_pinned", lambda *a, **k: None)
    monkeypatch.setattr(stage, "train", fake_train)
    write_pivot_lock(tmp_path / "models.lock")
    (tmp_path / "params.yaml").write_text("fuse:\n  fusion_fn: mince\n")
    argv = ["fuse.py", "--params", "params.yaml", "--lock", "models.lock", "--data", str(quiet / "train.parquet"),
            "--pivot-extract", str(quiet / "extract"), "--align", str(quiet / "align" / "b"), "--out", "fused",
            "--live-dir", "ws/logs/fuse/b"]
    monkeypatch.setattr(sys, "argv", argv)
    stage.main()
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if line.startswith("warning: ")]
    assert warned == [f"warning: {w}" for w in warnings("fuse@b", selection_of(quiet), ["b"])]
    assert "fuse@b: source b taught 1 of 150 sequences (0.7%, under 1%)" in warned[0]

    text = report(report_inputs(ws), ws / "reports").read_text()
    top = text.split("## ")[0]  # before the first section
    assert "**Warnings**" in top and warned[0].removeprefix("warning: ") in top
    assert "source a taught" not in text  # the other pair run's source taught a third of its sequences


@pytest.mark.parametrize("teacher", ["reference", "pivot"])
def test_the_log_says_a_control_run_and_warns_about_no_source(quiet, tmp_path, monkeypatch, capsys, teacher):
    """Under a control the planted source's tiny share is not a warning (no source teaches by design): the fuse
    stage prints one `note:` line naming the control instead, and selection.json records it."""
    monkeypatch.chdir(tmp_path)
    written = {}

    def fake_train(pivot_model, pivot_extract, aligns, data, out, logs, params, trust_remote_code):
        _, stats = build_examples(pivot_extract, aligns, data, params.fusion_fn, params.temperature, VOCAB,
                                  params.teacher)
        written.update(stats)
        return {"train_loss": 1.0, **stats}

    monkeypatch.setattr(stage, "verify_pinned", lambda *a, **k: None)
    monkeypatch.setattr(stage, "train", fake_train)
    write_pivot_lock(tmp_path / "models.lock")
    (tmp_path / "params.yaml").write_text(f"fuse:\n  teacher: {teacher}\n")
    argv = ["fuse.py", "--params", "params.yaml", "--lock", "models.lock", "--data", str(quiet / "train.parquet"),
            "--pivot-extract", str(quiet / "extract"), "--align", str(quiet / "align" / "b"), "--out", "fused",
            "--live-dir", "logs"]
    monkeypatch.setattr(sys, "argv", argv)
    stage.main()
    err = capsys.readouterr().err.splitlines()
    assert written["teacher"] == teacher
    assert err == [f"note: {control_line('fuse@b', written)}"]
    assert err[0].startswith(f"note: fuse@b: control run (fuse.teacher: {teacher}): ")
    assert ("pivot's own distribution" in err[0]) == (teacher == "pivot")
    assert control_line("fuse@b", selection_of(quiet)) is None

"""The report: Markdown + PNGs from the stages' files, and what it does with incomplete inputs."""

import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from fusecli.cli import app
from fusecli.errors import FusecliError
from fusecli.evaluate.names import model_names as expected_models
from fusecli.report.data import layer_of, load_coefficients
from fusecli.report.stage import run

from .workspace import DOMAINS, METHODS, SLUGS, TENSORS, build, inputs, scores, write_json


@pytest.fixture
def ws(tmp_path):
    return build(tmp_path)


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 5_000, f"{path} is missing or trivially small"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 150


def test_report_from_complete_inputs(ws):
    index = run(inputs(ws), ws / "reports")
    text = index.read_text()
    for section in ("## Scores per domain", "## Who taught what", "## Training curves", "## Merge coefficients"):
        assert section in text
    assert "Incomplete inputs" not in text
    for name in expected_models(SLUGS, METHODS)[:-1]:  # `merged` is merged:sce, shown once
        assert f"| {name} |" in text
    assert "| merged |" not in text
    assert "| fuse@a | a | mince | 0.900 | 1.000 | 0.000 | 0.000 |" in text
    assert "| fuse_all | b | mince | 0.800 | 0.200 | 0.200 | 0.200 |" in text
    assert "| fuse_all | 1 | 0.200 | 0.200 | 0.200 |" in text  # the gate's share of teacherless sequences
    assert "| fuselm |" in text
    assert "| pivot | 0.000 | 0.100 | - | 0.050 |" in text  # region has no checkable answers: `-`, not 0
    pngs = ["scores_em", "scores_ce", "curves", "coefficients_sce", "coefficients_varm"]
    assert sorted(p.stem for p in (ws / "reports/plots").iterdir()) == sorted(pngs)  # ties has no coefficients
    for name in pngs:
        assert f"(plots/{name}.png)" in text
        assert_png(ws / "reports/plots" / f"{name}.png")
    teachers = json.loads((ws / "reports/teachers.json").read_text())
    assert teachers["b"] == {"coverage": pytest.approx(0.8), "consistent": pytest.approx(0.9),
                             "share": {"capital": 0.0, "currency": 1.0, "region": 0.0}}
    assert teachers["fuselm"] == {"share": {"a": {d: 0.5 for d in DOMAINS}, "b": {d: 0.2 for d in DOMAINS}},
                                  "gated": {d: 0.2 for d in DOMAINS}}
    curves = sorted(p.relative_to(ws / "reports/curves").as_posix() for p in (ws / "reports/curves").rglob("*.*"))
    assert curves == sorted(f"{run}/{n}.tsv" for run in ("fuse/a", "fuse/b", "fuse_all", "sft_baseline")
                            for n in ("fusion_loss", "loss", "sft_loss"))


def test_older_metrics_and_missing_logs_are_reported_not_fatal(ws):
    metrics = json.loads((ws / "eval/metrics.json").read_text())
    for name in ("fused:b", "merged:varm", "merged:ties", "merged:sce"):
        del metrics["models"][name]
    metrics["models"]["fused:old"] = scores(3)  # a source since removed
    write_json(ws / "eval/metrics.json", metrics)
    shutil.rmtree(ws / "logs/fuse/b")
    shutil.rmtree(ws / "merged/varm")
    text = run(inputs(ws), ws / "reports").read_text()
    assert "Incomplete inputs" in text
    for name in ("fused:b", "merged:varm", "merged:ties", "merged:sce"):
        assert f"missing: model `{name}`" in text
    assert "| merged |" in text  # the default method's scores, kept under their old name
    assert "not in the current models.lock / merge.methods: `fused:old`" in text
    assert "logs/fuse/b/selection.json (run `dvc repro fuse@b`)" in text
    assert "merged/varm/merge_report.json (run `dvc repro merge@varm`)" in text
    assert "| fuse@b | b | - | 0.800 | - | - | - |" in text
    for name in ("scores_em", "scores_ce", "curves", "coefficients_sce"):
        assert_png(ws / "reports/plots" / f"{name}.png")


def test_a_missing_or_broken_metrics_file_is_a_clear_error(ws):
    (ws / "eval/metrics.json").unlink()
    with pytest.raises(FusecliError, match="run `dvc repro evaluate` first"):
        run(inputs(ws), ws / "reports")
    (ws / "eval/metrics.json").write_text('{"scores": {}}')
    with pytest.raises(FusecliError, match="no 'models' mapping"):
        run(inputs(ws), ws / "reports")


def test_coefficients_are_averaged_per_layer(ws):
    assert [layer_of(t) for t in TENSORS] == ["embeddings", "layer 0", "layer 0", "layer 1", "head", "head"]
    c = load_coefficients(ws / "merged", METHODS).data["sce"]
    assert c.rows == ["embeddings", "layer 0", "layer 1", "head"] and c.sources == ["a", "b"]
    assert c.values[1] == pytest.approx([0.325, 0.675])  # mean of tensors 1 and 2
    assert c.values[3] == pytest.approx([0.475, 0.525])  # norm and lm_head


def test_cli_report(ws):
    result = CliRunner().invoke(app, ["--workspace", str(ws), "report"])
    assert result.exit_code == 0, result.output
    assert (ws / "reports/index.md").is_file() and "wrote" in result.output
    (ws / "eval/metrics.json").unlink()
    result = CliRunner().invoke(app, ["--workspace", str(ws), "report"])
    assert result.exit_code == 1 and "error:" in result.output


@pytest.mark.parametrize("teacher", ["reference", "pivot"])
def test_the_control_is_flagged_and_an_ungated_run_says_so(ws, teacher):
    for name in ("fuse/a", "fuse/b", "fuse_all"):
        path = ws / "logs" / name / "selection.json"
        selection = json.loads(path.read_text())
        write_json(path, {**selection, "teacher": teacher, "gate": None})
    text = run(inputs(ws), ws / "reports").read_text()
    assert f"**Control run** (`fuse.teacher: {teacher}`)" in text
    assert ("self-distillation" in text) == (teacher == "pivot")
    assert "Competence gate off (`fuse.gate: null`)" in text and "| gate (nats) |" not in text


def test_judged_scores_reach_the_report(ws):
    """evaluate.backend: judge adds `judge` (and `judge_pairwise`) to eval/metrics.json; the report shows them
    with the missing judgments counted, and a report without them has no judge section."""
    assert "LLM judge" not in run(inputs(ws), ws / "plain").read_text()
    metrics = json.loads((ws / "eval/metrics.json").read_text())
    metrics["judge"] = {"pivot": {"math": {"score": 6.5, "graded": 2, "missing": 1},
                                  "overall": {"score": 6.5, "graded": 2, "missing": 1}}}
    metrics["judge_pairwise"] = {"pivot": {"math": {"win_rate": 0.25, "wins": 0, "ties": 1, "losses": 1, "missing": 0},
                                           "overall": {"win_rate": 0.25, "wins": 0, "ties": 1, "losses": 1,
                                                       "missing": 0}}}
    write_json(ws / "eval/metrics.json", metrics)
    text = run(inputs(ws), ws / "reports").read_text()
    assert "| pivot | 6.500 | 6.500 | 1 of 3 |" in text
    assert "| pivot | 0.250 | 0.250 | 0 of 2 |" in text


def test_evaluate_notes_and_row_counts_reach_the_report(ws):
    """Why a score is `-` (eval/metrics.json `notes`) is at the top of the report; the rows behind each score
    are in a table of their own."""
    metrics = json.loads((ws / "eval/metrics.json").read_text())
    note = "EM not computed for region: its 4 rows have no `answer` and a last reply longer than ... (every model)"
    metrics["notes"] = [note]
    metrics["models"]["pivot"]["capital"] |= {"rows": 4, "em_rows": 4, "em_reply": 1, "ce_rows": 3}
    write_json(ws / "eval/metrics.json", metrics)
    text = run(inputs(ws), ws / "reports").read_text()
    assert f"> - {note}" in text and text.index(note) < text.index("## Scores per domain")
    assert "| pivot | EM 4 (1 from replies), CE 3 of 4 | - | - |" in text


def test_replies_cut_at_max_length_reach_the_report(ws):
    """The extract stores' counts (manifest summary): a warning at the top for each model that lost response
    tokens, and a table of every model; a store without the counts is listed as an incomplete input."""
    from dataclasses import replace

    summary = {"cut_rows": [3, 7], "response_tokens": 480, "response_tokens_cut": 120}
    write_json(ws / "extract/pivot/manifest.json", {"meta": {"rows": 52, "max_length": 256}, "summary": summary})
    write_json(ws / "extract/sources/a/manifest.json",
               {"meta": {"rows": 52, "max_length": 256},
                "summary": {"cut_rows": [], "response_tokens": 500, "response_tokens_cut": 0}})
    text = run(replace(inputs(ws), extract=ws / "extract"), ws / "reports").read_text()
    assert ("> - warning: extract pivot: 2 of 52 rows cut at extract.max_length = 256: 120 of 480 response tokens "
            "(25.0%) lost with their end-of-turn: raise extract.max_length") in text
    assert "extract source:a:" not in text
    assert "| pivot | 256 | 2 of 52 | 120 of 480 | 0.250 |" in text
    assert "| source:a | 256 | 0 of 52 | 0 of 500 | 0.000 |" in text
    assert "> - missing: the truncation counts in " in text and "(run `dvc repro extract@b`)" in text

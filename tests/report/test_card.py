"""reports/cards/<method>/README.md: the merge's card, as the Hub parses it, with the evaluation's own numbers."""

import json
import shutil

import pytest
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from fusecli.cli import app
from fusecli.markdown import cell
from fusecli.report.stage import run

from .workspace import METHODS, build, inputs


@pytest.fixture
def ws(tmp_path):
    return build(tmp_path)


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Every Markdown table under a `###` heading (and the untitled first one, key ""), as rows of {column: cell}."""
    out: dict[str, list[dict[str, str]]] = {}
    heading, header = "", None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("# ").strip(), None
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
                out.setdefault(heading, [])
            else:
                out[heading].append(dict(zip(header, cells, strict=True)))
    return out


def plain_mean(values):
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def test_each_card_is_the_merge_card_plus_the_metrics_numbers(ws):
    index = run(inputs(ws), ws / "reports").read_text()
    scores = json.loads((ws / "eval/metrics.json").read_text())["models"]
    for method in METHODS:
        merged = ModelCard.load(ws / "merged" / method / "README.md")
        card = ModelCard.load(ws / "reports/cards" / method / "README.md")
        data = card.data.to_dict()
        assert data == merged.data.to_dict()
        assert data["library_name"] == "transformers" and {"merge", "fusechat", method} <= set(data["tags"])
        assert card.text.startswith(merged.text.rstrip("\n")) and "## Evaluation" in card.text
        found = tables(card.text)
        model = f"merged:{method}"
        for heading, metric in (("Greedy exact match", "em"), ("Response-token CE", "ce")):
            rows = {row["model"]: row for row in found[heading]}
            assert list(rows) == [model, "pivot", "source:a", "source:b", "sft_baseline", "fused:a", "fused:b"]
            for name, row in rows.items():
                values = [scores[name][d][metric] for d in scores[name]]
                assert [row[d] for d in scores[name]] == [cell(v) for v in values]
                assert row["mean"] == cell(plain_mean(values))
        gains = {row["vs"]: row for row in found["Evaluation"]}
        for baseline in ("sft_baseline", "pivot"):
            for metric in ("em", "ce"):
                ours = plain_mean([s[metric] for s in scores[model].values()])
                theirs = plain_mean([s[metric] for s in scores[baseline].values()])
                better = "higher" if metric == "em" else "lower"
                assert gains[baseline][f"{metric.upper()} gain ({better} is better)"] == cell(ours - theirs)
        assert f"[{method}](cards/{method}/README.md)" in index


def test_a_missing_or_older_card_is_reported_and_the_others_written(ws):
    (ws / "merged/varm/README.md").unlink()
    (ws / "merged/ties/README.md").write_text("---\nlibrary_name: transformers\n---\n# ties\n")  # before fusecli key
    metrics = json.loads((ws / "eval/metrics.json").read_text())
    del metrics["models"]["merged:sce"]
    (ws / "eval/metrics.json").write_text(json.dumps(metrics))
    index = run(inputs(ws), ws / "reports").read_text()
    assert "merged/varm/README.md, a card with fusecli front matter (run `dvc repro merge@varm`)" in index
    assert "merged/ties/README.md, a card with fusecli front matter (run `dvc repro merge@ties`)" in index
    assert "scores of `merged:sce` for its card (run `dvc repro evaluate`)" in index
    assert not (ws / "reports/cards").exists() or not any((ws / "reports/cards").iterdir())
    assert "Model cards with these scores" not in index


def test_cli_card_lays_out_the_merged_model_with_its_evaluated_card(ws):
    run(inputs(ws), ws / "reports")
    (ws / "merged/sce/model.safetensors").write_bytes(b"weights")
    merge_card = (ws / "merged/sce/README.md").read_text()
    result = CliRunner().invoke(app, ["--workspace", str(ws), "card", "upload/sce"])
    assert result.exit_code == 0, result.output
    out = ws / "upload/sce"
    assert (out / "README.md").read_text() == (ws / "reports/cards/sce/README.md").read_text()
    assert (out / "model.safetensors").read_bytes() == b"weights" and (out / "merge_report.json").is_file()
    assert (ws / "merged/sce/README.md").read_text() == merge_card  # the DVC output is untouched
    result = CliRunner().invoke(app, ["--workspace", str(ws), "card", "up/ties", "--method", "ties"])
    assert result.exit_code == 0 and ModelCard.load(ws / "up/ties/README.md").data.fusecli["merge"]["method"] == "ties"


@pytest.mark.parametrize(("args", "match"), [
    (["merged/sce/upload"], "inside"),
    (["up", "--method", "dare_ties"], "merged/dare_ties not found"),
    (["up", "--method", "varm"], "cards/varm/README.md not found: run `dvc repro report`"),
])
def test_cli_card_refuses_clearly(ws, args, match):
    run(inputs(ws), ws / "reports")
    shutil.rmtree(ws / "reports/cards/varm")
    result = CliRunner().invoke(app, ["--workspace", str(ws), "card", *args])
    assert result.exit_code == 1 and result.output.startswith("error: ") and match in result.output, result.output
    assert not (ws / "up").exists() and not (ws / "merged/sce/upload").exists()


@pytest.mark.parametrize(
    "broken", ["---\n: : not yaml [\n---\n# x\n", "---\n- a list\n---\n# x\n", "# no front matter\n"]
)
def test_a_card_the_hub_cannot_read_is_reported_not_fatal(ws, broken):
    (ws / "merged/ties/README.md").write_text(broken)
    index = run(inputs(ws), ws / "reports").read_text()
    assert "merged/ties/README.md, a card with fusecli front matter (run `dvc repro merge@ties`)" in index
    assert (ws / "reports/cards/sce/README.md").is_file()

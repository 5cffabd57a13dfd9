"""The report's alignment fidelity section: each source's coverage.json numbers, where a reader sees them."""

import json

import pytest

from fusecli.report.fidelity import fidelity_lines
from fusecli.report.stage import run

from .workspace import alignment, build, inputs, write_json


@pytest.fixture
def ws(tmp_path):
    return build(tmp_path)


def section(text):
    return text.split("## Alignment fidelity")[1].split("\n## ")[0]


def test_every_figure_of_each_source_is_shown(ws):
    text = section(run(inputs(ws), ws / "reports").read_text())
    header = "| source | mapped | consistent | dropped | end-of-turn rows | P(end of turn) | top = end of turn |"
    assert header in text
    assert "| a | 0.900 | 1.000 | 0.000 | 30 | 0.750 | 0.500 |" in text
    assert "| b | 0.800 | 0.900 | 0.010 | 20 | 0.500 | 0.500 |" in text
    # consistent of total, per row rule then per piece rule, in the align stage's order
    assert ("| source | row: content | row: end_of_turn | piece: exact | piece: first_piece | piece: longest_prefix "
            "| piece: special | piece: none |") in text
    assert ("| b | 0.500 of 0.600 | 0.400 of 0.400 | 0.500 of 0.600 | 0.300 of 0.300 | 0.000 of 0.000 "
            "| 0.100 of 0.100 | 0.000 of 0.000 |") in text
    rules = "| source | positions | content | end_of_turn | no_boundary | markup | no_match | no_row | no_source |"
    assert rules in text
    assert "| b | 100 | 0.600 | 0.200 | 0.050 | 0.150 | 0.000 | 0.000 | 0.000 |" in text


def test_the_files_sorted_keys_and_a_new_rule_keep_the_align_stages_order(ws):
    """The align stage writes coverage.json with sorted keys; a rule a newer align stage adds comes last."""
    found = alignment(0)
    found["rules"]["shifted"] = 0
    path = ws / "align/a/coverage.json"
    path.write_text(json.dumps(found, sort_keys=True))
    text = section(run(inputs(ws), ws / "reports").read_text())
    assert "| source | positions | content | end_of_turn | no_boundary | markup | no_match | no_row | no_source " \
           "| shifted |" in text
    assert "| b | 100 | 0.600 | 0.200 | 0.050 | 0.150 | 0.000 | 0.000 | 0.000 | 0.000 |" in text


def test_an_older_coverage_file_is_reported_not_fatal(ws):
    write_json(ws / "align/b/coverage.json", {"coverage": 0.8})  # before the fidelity was measured
    text = run(inputs(ws), ws / "reports").read_text()
    assert "missing: the fidelity in" in text and "align/b/coverage.json (an older align stage" in text
    assert "| b | 0.800 | - | - | - | - | - |" in section(text)
    assert "| b | - | - | - | - | - | - | - |" in section(text)
    assert fidelity_lines({"b": {"coverage": 0.8}, "c": None}) == [
        "No alignment fidelity found (align/<slug>/coverage.json from the current align stage).", ""]

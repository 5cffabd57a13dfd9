"""The `merge` section: shared keys, one options mapping per method, and clear errors."""

import pytest
import yaml

from fusecli.closure import ROOT
from fusecli.errors import FusecliError
from fusecli.merge.methods.sce import SceOptions
from fusecli.merge.methods.ties import TiesOptions
from fusecli.merge.params import merge_params, stage_params


def write(tmp_path, merge):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"merge": merge}))
    return path


SECTION = {"method": "sce", "methods": ["sce", "ties"], "device": "cpu", "max_shard_size": "5GB",
           "sce": {"variant": "release", "select_topk": 0.1},
           "ties": {"weight": [0.5, 0.5], "density": 1, "normalize": True}}


def test_each_method_reads_its_own_mapping(tmp_path):
    path = write(tmp_path, SECTION)
    assert stage_params(path).options == SceOptions("release", 0.1)
    ties = stage_params(path, "ties")
    assert ties.method == "ties" and ties.options == TiesOptions((0.5, 0.5), 1.0, True)


def test_the_repository_params_load_for_every_method():
    merge = yaml.safe_load((ROOT / "params.yaml").read_text())["merge"]
    for method in merge["methods"]:
        assert stage_params(ROOT / "params.yaml", method).method == method


def test_the_old_flat_form_is_one_line_naming_the_new_keys(tmp_path):
    path = write(tmp_path, {"method": "sce", "methods": ["sce"], "select_topk": 0.1, "density": 0.6,
                            "device": "cpu", "max_shard_size": "5GB"})
    with pytest.raises(FusecliError) as exc:
        stage_params(path)
    message = str(exc.value)
    assert "\n" not in message
    assert "merge.{select_topk, density} is the old flat form" in message and "sce: {variant, select_topk}" in message


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"method": "ties", "methods": ["sce"]}, "merge.method = 'ties' is not in merge.methods"),
        ({"methods": ["sce", "nope"]}, "merge method 'nope' is unknown: use one of"),
        ({"methods": ["sce", "sce"]}, "names a method twice"),
        ({"methods": []}, "must be a non-empty list"),
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"sce": {"variant": "release"}}, r"merge.sce.select_topk is missing"),
        ({"sce": {"variant": "release", "select_topk": 0.1, "density": 0.5}}, "merge.sce: unknown key 'density'"),
        ({"device": "tpu"}, "device"),
        ({"max_shard_size": "huge"}, "max_shard_size"),
    ],
)
def test_bad_sections_fail_with_one_line(tmp_path, change, match):
    with pytest.raises(FusecliError, match=match) as exc:
        stage_params(write(tmp_path, {**SECTION, **change}))
    assert "\n" not in str(exc.value)


def test_a_method_outside_merge_methods_is_refused(tmp_path):
    with pytest.raises(FusecliError, match="method 'varm' is not in merge.methods"):
        stage_params(write(tmp_path, SECTION), "varm")


@pytest.mark.parametrize(
    ("method", "values", "match"),
    [
        ("ties", {"density": 0}, r"merge.ties.density = 0.* \(0, 1\]"),
        ("ties", {"density": 1.5}, r"merge.ties.density = 1.5 must be in \(0, 1\]"),
        ("sce", {"select_topk": 0}, r"merge.sce.select_topk = 0.* \(0, 1\]"),
        ("sce", {"variant": "dense"}, "variant"),
        ("slerp", {}, "unknown merge method"),
        ("ties", {"weight": []}, "empty"),
        ("linear", {"weight": float("nan")}, "finite"),
        ("ties", {"densty": 0.5}, "unknown key 'densty'"),
    ],
)
def test_invalid_options_are_one_line_errors(method, values, match):
    with pytest.raises(FusecliError, match=match) as exc:
        merge_params(method, **values)
    assert "\n" not in str(exc.value)


def test_cli_defaults_are_the_methods_published_values():
    assert merge_params("ties").options == TiesOptions(0.2, 0.6, True)
    assert merge_params("sce").options == SceOptions("release", 0.1)

import dataclasses
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from fusecli.cli import app
from fusecli.merge.cli import method_help, registered_methods
from fusecli.merge.registry import get_method, method_names

runner = CliRunner()


def invoke(tiny, tmp_path, *args, models=None):
    models = models or [tiny.m1, tiny.m2]
    argv = ["merge", "--base", str(tiny.base), "--out", str(tmp_path / "merged")]
    for m in models:
        argv += ["--model", str(m)]
    return runner.invoke(app, argv + list(args))


def test_merge_with_sets_and_mergekit_export(tiny, tmp_path):
    export = tmp_path / "mergekit.yaml"
    result = invoke(
        tiny,
        tmp_path,
        "--method",
        "ties",
        "--set",
        "density=0.5",
        "--set",
        "weight=[0.7, 0.3]",
        "--export-mergekit",
        str(export),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "merged 2 models" in result.stdout
    assert (tmp_path / "merged" / "model.safetensors.index.json").exists()
    config = yaml.safe_load(export.read_text())
    assert config["merge_method"] == "ties"
    assert [m["parameters"] for m in config["models"]] == [
        {"weight": 0.7, "density": 0.5},
        {"weight": 0.3, "density": 0.5},
    ]


@pytest.mark.parametrize(
    "args,match",
    [
        (["--method", "ties", "--set", "density=0"], "merge.ties.density = 0"),
        (["--method", "ties", "--set", "density=1.5"], "merge.ties.density = 1.5"),
        (["--method", "ties", "--set", "select_topk=0.5"], "--method ties --set: unknown key 'select_topk'"),
        (["--method", "varm", "--export-mergekit", "x.yaml"], "mergekit has no 'varm' method"),
        (["--method", "slerp"], "unknown merge method 'slerp'"),
        (["--method", "sce", "--set", "tau"], "not KEY=VALUE"),
        (["--method", "sce", "--set", "method=ties"], "use --method"),
        (["--method", "sce", "--device", "tpu"], "merge.device = 'tpu'"),
    ],
)
def test_bad_options_fail_with_one_line(tiny, tmp_path, args, match):
    _assert_fails(invoke(tiny, tmp_path, *args), tmp_path, match)


def test_duplicate_models(tiny, tmp_path):
    _assert_fails(invoke(tiny, tmp_path, "--method", "sce", models=[tiny.m1, tiny.m1]), tmp_path, "given twice")


def test_missing_base(tiny, tmp_path):
    result = runner.invoke(
        app,
        [
            "merge",
            "--method",
            "sce",
            "--base",
            str(tmp_path / "none"),
            "--model",
            str(tiny.m1),
            "--out",
            str(tmp_path / "merged"),
        ],
    )
    _assert_fails(result, tmp_path, "not found")


def test_pickle_only_model(tiny, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny.m1 / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    _assert_fails(invoke(tiny, tmp_path, "--method", "sce", models=[tiny.m1, pickled]), tmp_path, "only pickle weights")


def test_different_architectures(tiny, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny.m2, other)
    cfg = (other / "config.json").read_text().replace("Qwen2ForCausalLM", "MistralForCausalLM")
    (other / "config.json").write_text(cfg)
    _assert_fails(invoke(tiny, tmp_path, "--method", "linear", models=[tiny.m1, other]), tmp_path, "MistralForCausalLM")


def _assert_fails(result, tmp_path, match):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], result.stderr
    assert not (tmp_path / "merged").exists()


def test_method_help_lists_the_registry_and_each_methods_options():
    fields = {n: [f.name for f in dataclasses.fields(get_method(n).options)] for n in method_names()}
    assert registered_methods() == fields
    assert "sce (variant, select_topk)" in method_help() and "ties (weight, density, normalize)" in method_help()

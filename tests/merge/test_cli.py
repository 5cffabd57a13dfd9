import dataclasses
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from fusecli.cli import app
from fusecli.merge.cli import method_help, registered_methods
from fusecli.merge.registry import get_method, method_names

from . import reference

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


@pytest.mark.parametrize(
    "method,sets",
    [
        ("linear", ["weight=[0.7, 0.3]"]),
        ("task_arithmetic", ["weight=[0.5, 0.2]"]),
        ("ties", ["density=0.5", "weight=[0.7, 0.3]"]),
        ("sce", ["variant=sparse", "select_topk=0.5"]),
        ("dare_ties", ["density=0.5"]),  # fusecli's masks, seed 0 both times (mergekit's own differ)
        ("dare_linear", ["normalize=false"]),
    ],
)
@pytest.mark.slow
def test_exported_yaml_merges_to_the_same_bytes_with_config(tiny, tmp_path, method, sets):
    export = tmp_path / "configs" / f"{method}.yml"
    export.parent.mkdir()
    argv = ["--workspace", str(tmp_path), "merge", "--method", method, "--base", str(tiny.base)]
    argv += ["--model", str(tiny.m1), "--model", str(tiny.m2), "--out", str(tmp_path / "direct")]
    argv += [a for s in sets for a in ("--set", s)] + ["--export-mergekit", str(export)]
    direct = runner.invoke(app, argv)
    assert direct.exit_code == 0, direct.output
    config = yaml.safe_load(export.read_text())
    assert not any(str(m["model"]).startswith("/") for m in config["models"])  # relative to the workspace
    again = runner.invoke(
        app, ["--workspace", str(tmp_path), "merge", "--config", str(export), "--out", str(tmp_path / "again")]
    )
    assert again.exit_code == 0, again.output
    assert f"with {method} ->" in again.stdout
    assert reference.files(tmp_path / "direct") == reference.files(tmp_path / "again")


def test_config_paths_are_relative_to_the_current_directory_by_default(tiny, tmp_path, monkeypatch):
    shutil.copytree(tiny.base, tmp_path / "base")
    shutil.copytree(tiny.m1, tmp_path / "a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.yml").write_text(
        "merge_method: ties\nbase_model: base\nmodels: [{model: a, parameters: {weight: 1.0, density: 0.5}}]\n"
    )
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["merge", "--config", "sub/m.yml", "--out", "merged"])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "merged").glob("*.safetensors"))


@pytest.mark.parametrize(
    "args,match",
    [
        (["--method", "ties"], "--config takes the method, base, models and options from"),
        (["--set", "density=0.5"], "drop --set (or drop --config)"),
    ],
)
def test_config_excludes_the_merge_options(tiny, tmp_path, args, match):
    config = tmp_path / "m.yml"
    config.write_text(f"merge_method: ties\nbase_model: {tiny.base}\nmodels: [{{model: {tiny.m1}}}]\n")
    result = runner.invoke(app, ["merge", "--config", str(config), "--out", str(tmp_path / "merged"), *args])
    _assert_fails(result, tmp_path, match)


def test_method_base_and_models_are_needed_without_config(tiny, tmp_path):
    result = runner.invoke(app, ["merge", "--base", str(tiny.base), "--out", str(tmp_path / "merged")])
    _assert_fails(result, tmp_path, "missing --method/--model: give --method, --base and --model, or --config FILE")


def test_config_asking_for_another_dtype_is_refused(tiny, tmp_path):
    config = tmp_path / "m.yml"
    config.write_text(
        f"merge_method: linear\ndtype: bfloat16\nmodels: [{{model: {tiny.m1}, parameters: {{weight: 1}}}}]\n"
    )
    result = runner.invoke(app, ["merge", "--config", str(config), "--out", str(tmp_path / "merged")])
    _assert_fails(result, tmp_path, "dtype bfloat16 but fusecli writes the base's dtype (float32)")


def test_merge_shows_progress_on_stderr(tiny, tmp_path):
    result = invoke(tiny, tmp_path, "--method", "ties")
    assert result.exit_code == 0, result.output
    assert "merge ties" in result.stderr and "100%" not in result.stdout and "merge ties" not in result.stdout


def _assert_fails(result, tmp_path, match):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], result.stderr
    assert not (tmp_path / "merged").exists()


def test_method_help_lists_the_registry_and_each_methods_options():
    fields = {n: [f.name for f in dataclasses.fields(get_method(n).options)] for n in method_names()}
    assert registered_methods() == fields
    assert "sce (variant, select_topk)" in method_help() and "ties (weight, density, normalize)" in method_help()

"""The code and package data an entry point runs (fusecli/closure.py), from which dvc.yaml's code deps are
written (fusecli/dvc_yaml.py; tests/test_stage_table.py): a file missed means editing it leaves the stage
"up to date", and `dvc repro` would keep a stale result, the one thing the pipeline promises never to do."""

from __future__ import annotations

from fusecli.closure import closure, imported_names, runs_code


def test_package_data_and_late_imports_are_in_the_closure():
    files = {str(p) for p in closure("stages/build_demo.py")}
    assert "fusecli/demo/data/countries.jsonl" in files  # read through importlib.resources
    assert "fusecli/merge/methods/sce.py" in {str(p) for p in closure("fusecli.merge.registry")}  # import_module


def test_type_checking_imports_are_not_followed(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fusecli.merge.run\n"
        "def f():\n    from fusecli import io\n"
    )
    names = imported_names(source)
    assert "fusecli.io" in names and "fusecli.merge.run" not in names


def test_the_preflight_is_not_followed():
    """fusecli/check.py imports every stage's parameters: followed, it would make each stage depend on all."""
    files = {str(p) for p in closure("stages/extract.py")}
    assert "fusecli/runtime.py" in files and "fusecli/check.py" not in files and "fusecli/fuse/train.py" not in files


def test_a_file_that_runs_nothing_is_not_in_the_closure(tmp_path):
    """fusecli/__init__.py is its docstring alone: a stage must not rerun when it changes."""
    doc, code = tmp_path / "doc.py", tmp_path / "code.py"
    doc.write_text('"""Only words."""\n')
    code.write_text('"""Words."""\nVERSION = "1"\n')
    assert not runs_code(doc) and runs_code(code)
    assert "fusecli/__init__.py" not in {str(p) for p in closure("stages/align.py")}

"""Every dvc.yaml stage depends on the code and package data its entry point runs (fusecli/closure.py).

A file missing from a stage's `deps` means editing it leaves the stage "up to date": `dvc repro` would
keep a stale result, the one thing the pipeline promises never to do.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fusecli.closure import ROOT, closure, imported_names

ENTRY = re.compile(r"\bstages/\w+\.py\b")


def covered(path: Path, deps: list[str]) -> bool:
    """A dep names the file itself or a folder above it."""
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


def missing_deps(dvc: dict) -> dict[str, list[str]]:
    """Per stage, the files its entry point runs that its `deps` do not cover."""
    out: dict[str, list[str]] = {}
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        entries = ENTRY.findall(body["cmd"])
        assert entries, f"stage {name} runs no stages/*.py entry point"
        deps = [d for d in body.get("deps", []) if "${" not in d]
        missing = [str(p) for p in closure(*entries) if not covered(p, deps)]
        if missing:
            out[name] = missing
    return out


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_lists_the_code_it_runs():
    assert missing_deps(dvc_yaml()) == {}


def test_a_planted_missing_dependency_is_found():
    dvc = dvc_yaml()
    deps = dvc["stages"]["evaluate"]["deps"]
    deps.remove("fusecli/data/render.py")
    assert missing_deps(dvc) == {"evaluate": ["fusecli/data/render.py"]}
    dvc["stages"]["align"]["do"]["deps"].remove("fusecli/align")  # a folder dep covers the files inside it
    assert {"fusecli/align/stage.py", "fusecli/align/vocab.py"} <= set(missing_deps(dvc)["align"])


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

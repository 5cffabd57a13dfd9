"""The user's dataset files as DVC dependencies of `build_dataset`, kept in step with params.yaml.

DVC cannot expand a list parameter into `deps` (`Cannot interpolate data of type 'list'`), so the local
files named in `dataset.sources` are written into dvc.yaml's `build_dataset` deps by
`fusecli dataset-deps`, and the stage refuses to run while one is missing there: an edited dataset file
always reruns the dataset and everything downstream, never goes stale silently.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import yaml

from fusecli.config import read_yaml
from fusecli.data.build import DEMO_DIALOGUES, DatasetParams, eval_file
from fusecli.errors import FusecliError
from fusecli.io import atomic_write_text

STAGE = "build_dataset"
CODE = ("stages/", "fusecli/")  # deps under these are the stage's code; every other dep is a dataset file


def dataset_files(params: DatasetParams) -> list[str]:
    """The local files `dataset.sources` and a `dataset.eval` file read, as written in params.yaml (`demo`: the
    demo world's dialogues, which the build_demo stage writes)."""
    files = [DEMO_DIALOGUES if s.path == "demo" else s.path for s in params.sources]
    return files + [f for f in [eval_file(params)] if f is not None and f not in files]


def declared_files(dvc_yaml: Path) -> list[str]:
    """The dataset files dvc.yaml's build_dataset lists as deps."""
    stage = (read_yaml(dvc_yaml).get("stages") or {}).get(STAGE)
    if not isinstance(stage, dict):
        raise FusecliError(f"{dvc_yaml} has no {STAGE} stage: restore it from the repository")
    return [str(d) for d in stage.get("deps") or [] if not str(d).startswith(CODE)]


def _deps_block(lines: list[str], dvc_yaml: Path) -> tuple[int, int]:
    """[first, end) line numbers of the `- item` lines of build_dataset's deps (edited as text: a YAML
    round trip would reflow dvc.yaml's folded commands)."""
    try:
        stage = lines.index(f"  {STAGE}:")
        deps = lines.index("    deps:", stage)
    except ValueError:
        raise FusecliError(f"{dvc_yaml}: {STAGE} has no deps list: restore the stage from the repository") from None
    end = deps + 1
    while end < len(lines) and lines[end].startswith("      - "):
        end += 1
    return deps + 1, end


def _same(a: str, b: str) -> bool:
    return PurePosixPath(a) == PurePosixPath(b)


def check_declared(params: DatasetParams, dvc_yaml: Path) -> None:
    """Raise unless every local dataset file is a dep of build_dataset (so DVC hashes it)."""
    declared = declared_files(dvc_yaml)
    for path in dataset_files(params):
        if not any(_same(path, d) for d in declared):
            raise FusecliError(
                f"dataset source {path!r} is not a dependency of {STAGE} in {dvc_yaml.name}, so DVC would not "
                "notice when it changes: run `fusecli dataset-deps`"
            )


def sync_declared(params: DatasetParams, dvc_yaml: Path) -> tuple[list[str], list[str]]:
    """Make build_dataset's file deps exactly `dataset_files(params)` (the rest of dvc.yaml byte for byte
    as it was); return (added, removed)."""
    declared, wanted = declared_files(dvc_yaml), dataset_files(params)
    removed = [d for d in declared if not any(_same(d, w) for w in wanted)]
    added = [w for w in wanted if not any(_same(w, d) for d in declared)]
    if not added and not removed:
        return [], []
    lines = dvc_yaml.read_text().split("\n")
    first, end = _deps_block(lines, dvc_yaml)
    kept = [line for line in lines[first:end] if yaml.safe_load(line.strip()[2:]) not in removed]
    kept += [f"      - {json.dumps(path)}" for path in added]  # a JSON string is a YAML string: spaces, colons
    atomic_write_text(dvc_yaml, "\n".join(lines[:first] + kept + lines[end:]))
    return added, removed

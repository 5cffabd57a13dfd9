"""What the pipeline runs, read from params.yaml and dvc.yaml rather than kept by hand.

`merge_methods`: which `merge@<method>` stages run and which one is the default; `evaluate` and
`report` read it without importing the merge engine (so their DVC deps stay off fusecli/merge).
`merged_weights`: where a `merged/<method>` output's weights are (with one source, the fused model's folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fusecli.config import read_yaml
from fusecli.errors import FusecliError

MERGE_REPORT = "merge_report.json"  # in every merged/<method>/
IDENTITY = "identity"  # its key naming the folder a one-source merge is (fusecli/merge/run.py, write_identity)


def merged_weights(folder: str | Path, root: str | Path = ".") -> Path:
    """The folder holding the weights of the merge written to `folder`: itself, or with one source the
    pair-fused model its report names (a merge of one model is that model; its folder holds no copy)."""
    folder = Path(folder)
    try:
        report = json.loads((folder / MERGE_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return folder
    identity = report.get(IDENTITY) if isinstance(report, dict) else None
    return Path(root) / identity if isinstance(identity, str) else folder


@dataclass(frozen=True)
class MergeMethods:
    default: str  # merge.method: its scores are also `merged`
    methods: tuple[str, ...]  # merge.methods: every method the pipeline runs, in params.yaml order


def merge_methods(params: str | Path) -> MergeMethods:
    """`merge.method` and `merge.methods`, checked: a non-empty list, no repeats, the default among them.
    Whether each name is a registered method is the merge stage's check (fusecli/merge/params.py)."""
    section = read_yaml(params).get("merge")
    if not isinstance(section, dict):
        raise FusecliError(f"{params} has no 'merge' mapping: add one (see the README)")
    default, methods = section.get("method"), section.get("methods")
    if not isinstance(default, str):
        raise FusecliError(f"merge.method = {default!r} must name a merge method: e.g. method: sce")
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise FusecliError(f"merge.methods = {methods!r} must be a non-empty list of method names: e.g. [sce, ties]")
    if len(set(methods)) != len(methods):
        raise FusecliError(f"merge.methods = {methods} names a method twice: list each once")
    if default not in methods:
        raise FusecliError(f"merge.method = {default!r} is not in merge.methods {methods}: add it there")
    return MergeMethods(default, tuple(methods))

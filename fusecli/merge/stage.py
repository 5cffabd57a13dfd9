"""The DVC `merge@<method>` stages: merge `fused/<slug>` for exactly the sources listed in models.lock.

params.yaml's `merge` section holds the method options shared by every method, `methods` (one
`merge@<method>` stage and `merged/<method>/` folder each, compared side by side by `evaluate`) and
`method`, the default: what `merged` means in eval/metrics.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fusecli.config import from_dict, read_yaml
from fusecli.errors import FusecliError
from fusecli.lock import read_lock
from fusecli.merge.params import MergeParams
from fusecli.merge.registry import method_names
from fusecli.merge.run import MergeResult, merge_models


@dataclass(frozen=True)
class MergeMethods:
    default: str  # merge.method: its scores are also `merged`
    methods: tuple[str, ...]  # merge.methods: every method the pipeline runs, in params.yaml order


def _section(params: str | Path) -> dict:
    section = read_yaml(params).get("merge")
    if not isinstance(section, dict):
        raise FusecliError(f"{params} has no 'merge' mapping: add one (see the README)")
    return dict(section)


def merge_methods(params: str | Path) -> MergeMethods:
    """`merge.method` and `merge.methods`, checked: known names, no repeats, the default among them."""
    section = _section(params)
    default = section.get("method", MergeParams.method)
    methods = section.get("methods", [default])
    known = method_names()
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise FusecliError(f"merge.methods = {methods!r} must be a non-empty list of method names: {', '.join(known)}")
    for m in (default, *methods):
        if m not in known:
            raise FusecliError(f"merge method {m!r} is unknown: use one of {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise FusecliError(f"merge.methods = {methods} names a method twice: list each once")
    if default not in methods:
        raise FusecliError(f"merge.method = {default!r} is not in merge.methods {methods}: add it there")
    return MergeMethods(default, tuple(methods))


def stage_params(params: str | Path, method: str | None = None) -> MergeParams:
    """MergeParams for one method: the shared options of the `merge` section with `method` set."""
    section = _section(params)
    chosen = merge_methods(params)
    method = method or chosen.default
    if method not in chosen.methods:
        raise FusecliError(f"method {method!r} is not in merge.methods {list(chosen.methods)}: add it there")
    section.pop("methods", None)
    return from_dict(MergeParams, {**section, "method": method}, "merge")


def locked_slugs(lock: str | Path) -> list[str]:
    """Source slugs in models.lock, sorted so that the order of the lock file never changes the merge."""
    slugs = sorted(read_lock(lock).sources)
    if not slugs:
        raise FusecliError(f"{lock} lists no sources: add one with fusecli add-source")
    return slugs


def merge_fused(
    params: MergeParams, lock: str | Path, fused_dir: str | Path, base: str | Path, out: str | Path
) -> MergeResult:
    """Merge the pair-fused target of every locked source onto the pivot `base`."""
    models = []
    for slug in locked_slugs(lock):
        folder = Path(fused_dir) / slug
        if not folder.is_dir():
            raise FusecliError(
                f"{folder} not found: source {slug!r} is in {lock} but has no fused model; run `dvc repro fuse@{slug}`"
            )
        models.append((slug, folder))
    return merge_models(base, models, params, out)

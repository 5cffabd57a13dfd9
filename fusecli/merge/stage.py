"""The DVC `merge@<method>` stages: merge `fused/<slug>` for exactly the sources listed in models.lock.

params.yaml's `merge` section holds the method options shared by every method, `methods` (one
`merge@<method>` stage and `merged/<method>/` folder each, compared side by side by `evaluate`) and
`method`, the default: what `merged` means in eval/metrics.json.
"""

from __future__ import annotations

from pathlib import Path

from fusecli.config import from_dict, read_yaml
from fusecli.errors import FusecliError
from fusecli.lock import read_lock
from fusecli.merge.params import MergeParams
from fusecli.merge.registry import get_method
from fusecli.merge.run import MergeResult, merge_models
from fusecli.plan import merge_methods


def stage_params(params: str | Path, method: str | None = None) -> MergeParams:
    """MergeParams for one method: the shared options of the `merge` section with `method` set."""
    section = dict(read_yaml(params)["merge"])
    chosen = merge_methods(params)
    for name in chosen.methods:
        get_method(name)  # every merge@<method> stage names a registered method
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

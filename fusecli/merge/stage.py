"""The DVC `merge@<method>` stages: merge `fused/<slug>` for exactly the sources listed in models.lock.

params.yaml's `merge` section (fusecli/merge/params.py) holds `methods` (one `merge@<method>` stage and
`merged/<method>/` folder each, compared side by side by `evaluate`), `method`, the default (what
`merged` means in eval/metrics.json), the device and shard size, and one mapping of options per method.
"""

from __future__ import annotations

from pathlib import Path

from fusecli.card import lineage
from fusecli.errors import FusecliError
from fusecli.lock import read_lock
from fusecli.merge.params import MergeParams
from fusecli.merge.run import MergeResult, merge_models, write_identity


def locked_slugs(lock: str | Path) -> list[str]:
    """Source slugs in models.lock, sorted so that the order of the lock file never changes the merge."""
    slugs = sorted(read_lock(lock).sources)
    if not slugs:
        raise FusecliError(f"{lock} lists no sources: add one with fusecli add-source")
    return slugs


def run(
    params: MergeParams,
    lock: str | Path,
    fused_dir: str | Path,
    base: str | Path,
    out: str | Path,
    importance_dir: str | Path | None = None,
) -> MergeResult:
    """Merge the pair-fused target of every locked source onto the pivot `base` (one source: that target);
    `importance_dir/<slug>` holds each pair model's importance for the methods that weigh by it."""
    models = []
    for slug in locked_slugs(lock):
        folder = Path(fused_dir) / slug
        if not folder.is_dir():
            raise FusecliError(
                f"{folder} not found: source {slug!r} is in {lock} but has no fused model; run `dvc repro fuse@{slug}`"
            )
        models.append((slug, folder))
    pinned = lineage(read_lock(lock))
    one = write_identity(base, *models[0], params, out, pinned) if len(models) == 1 else None
    importance = {slug: Path(importance_dir) / slug for slug, _ in models} if importance_dir is not None else None
    return one or merge_models(base, models, params, out, lineage=pinned, importance=importance)

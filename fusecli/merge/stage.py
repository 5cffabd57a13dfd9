"""The DVC `merge` stage: merge `fused/<slug>` for exactly the sources listed in models.lock."""

from __future__ import annotations

from pathlib import Path

import yaml

from fusecli.errors import FusecliError
from fusecli.merge.params import MergeParams
from fusecli.merge.run import MergeResult, merge_models


def locked_slugs(lock: str | Path) -> list[str]:
    """Source slugs in models.lock (top-level `sources`: slug -> entry), sorted so that the order
    of the lock file never changes the merge."""
    lock = Path(lock)
    if not lock.is_file():
        raise FusecliError(f"{lock} not found: run `fusecli lock` first")
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError:
        raise FusecliError(f"{lock} is not valid YAML: regenerate it with `fusecli lock`") from None
    sources = data.get("sources") if isinstance(data, dict) else None
    if not isinstance(sources, dict) or not sources:
        raise FusecliError(f"{lock} lists no sources under `sources`: add a source and re-lock")
    return sorted(str(slug) for slug in sources)


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

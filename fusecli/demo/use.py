"""Whether a workspace uses the demo world, so `dvc repro` trains the demo's models only where they are read.

build_demo spends ten minutes training four tiny models; a workspace of the user's own models and data
reads none of them. The demo_use stage writes `demo/use.json` from models.lock and `dataset.sources` and
build_demo depends on that file: its bytes change only when the answer does, so pinning another model
reruns the second-long demo_use and leaves build_demo's models cached, while dropping the last demo model
or data makes build_demo write a one-file placeholder instead of training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from fusecli.errors import FusecliError
from fusecli.io import atomic_dir, atomic_write_json, atomic_write_text

if TYPE_CHECKING:  # not imported: build_demo reads this module, and must not rerun when they change
    from fusecli.data.build import DatasetParams
    from fusecli.lock import Lock

USE_FILE = "demo/use.json"  # {"used": bool}: build_demo's switch, written by the demo_use stage
PLACEHOLDER = "NOT_BUILT.md"  # build_demo's only output file under demo/models when nothing uses the demo


def demo_users(lock: Lock, dataset: DatasetParams) -> list[str]:
    """What reads the demo world: pinned models of origin demo and a `path: demo` dataset source."""
    users = [f"pivot {lock.pivot.name}"] if lock.pivot.origin == "demo" else []
    users += [f"sources.{slug}" for slug, entry in lock.sources.items() if entry.origin == "demo"]
    users += ["dataset.sources (path: demo)"] if any(s.path == "demo" for s in dataset.sources) else []
    return users


def write_use(lock: Lock, dataset: DatasetParams, out: str | Path) -> list[str]:
    """Write `out` (only the yes/no, so its hash changes only with the answer); return the users."""
    users = demo_users(lock, dataset)
    atomic_write_json(out, {"used": bool(users)})
    return users


def read_use(path: str | Path) -> bool:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise FusecliError(f"{path} is missing or torn: run `dvc repro demo_use`") from None
    if not isinstance(data, dict) or not isinstance(data.get("used"), bool):
        raise FusecliError(f"{path} has no boolean 'used': run `dvc repro -f demo_use`")
    return data["used"]


def write_placeholder(out: str | Path, dialogues: str | Path) -> None:
    """build_demo's outputs when nothing uses the demo: a note where the models would be, no dialogues."""
    with atomic_dir(out) as tmp:
        (tmp / PLACEHOLDER).write_text(
            "The demo world is not built: neither models.lock nor params.yaml's dataset.sources uses it.\n"
            "To build it, add `path: demo` to dataset.sources (then `fusecli dataset-deps`) or restore the demo's\n"
            "models.lock (`git checkout models.lock`), and run `dvc repro`.\n", encoding="utf-8")
    atomic_write_text(dialogues, "")

"""DVC interop: where a source's outputs live, cleaning up after a removed source, and what is stale.

Removing a source from models.lock is not enough: DVC keeps its outputs, their .gitignore lines and its
`*@slug` entries in dvc.lock, and the stages over every source (merge@<method> depends on the whole `fused/`
folder, fuse_all on `align/`) would silently keep using the stale outputs. `dvc remove` refuses parametrized
stages, so we clean up.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from fusecli import pipeline
from fusecli.errors import FusecliError
from fusecli.io import atomic_write_text


def source_outputs(slug: str) -> list[str]:
    """What the stage table's per-source stages write for `slug`."""
    return [p.replace("${key}", slug) for s in pipeline.source_stages() for p in s.out_paths()]


def source_stages(slug: str) -> list[str]:
    return [f"{s.name}@{slug}" for s in pipeline.source_stages()]


@contextmanager
def dvc_repo_lock(root: Path) -> Iterator[None]:
    """Hold DVC's own workspace lock, so we never clean up under a running `dvc repro`."""
    if not (root / ".dvc").is_dir():
        yield
        return
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except DvcException as exc:
        raise FusecliError(f"cannot open the DVC workspace {root}: {exc}: fix .dvc/config") from None
    try:
        repo.lock.lock()
    except LockError:
        repo.close()
        raise FusecliError(f"DVC is running in {root} (.dvc/tmp/lock is held): wait for it, then retry") from None
    try:
        yield
    finally:
        repo.lock.unlock()
        repo.close()


def _safe_relative(path: str) -> PurePosixPath | None:
    """A workspace-relative path that cannot escape the workspace, or None."""
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return p


def _drop_gitignore_line(root: Path, out: PurePosixPath) -> bool:
    """DVC ignores an out `a/b/c` with the line `/c` in `a/b/.gitignore`; it deletes the file once empty."""
    gitignore = root / out.parent / ".gitignore"
    if not gitignore.is_file():
        return False
    lines = gitignore.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() != f"/{out.name}"]
    if len(kept) == len(lines):
        return False
    if any(line.strip() for line in kept):
        atomic_write_text(gitignore, "\n".join(kept) + "\n")
    else:
        gitignore.unlink()
    return True


def _lock_outs(stage: Any) -> list[str]:
    outs = stage.get("outs", []) if isinstance(stage, dict) else []
    return [o["path"] for o in outs if isinstance(o, dict) and isinstance(o.get("path"), str)]


def clean_source(root: str | Path, slug: str) -> list[str]:
    """Delete a source's outputs, their .gitignore lines and its dvc.lock entries; returns what went.

    Idempotent, so a clean-up interrupted half-way is finished by running it again. The outputs are
    the standard ones plus whatever dvc.lock records for the source's stages (if dvc.yaml adds more).
    """
    from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update

    root = Path(root).resolve()
    removed: list[str] = []
    with dvc_repo_lock(root):
        dvc_lock = root / "dvc.lock"
        data: Any = None
        stages = source_stages(slug)
        outs = source_outputs(slug)
        if dvc_lock.is_file():
            try:
                # Round-trip parsing keeps DVC's own formatting of the entries we do not touch.
                data = parse_yaml_for_update(dvc_lock.read_text(encoding="utf-8"), str(dvc_lock))
            except Exception:
                raise FusecliError("dvc.lock is not valid YAML: restore it from git (git checkout dvc.lock)") from None
            entries = data.get("stages") if isinstance(data, dict) else None
            if isinstance(entries, dict):
                for name in stages:
                    outs += _lock_outs(entries.get(name))
        for out in dict.fromkeys(outs):
            rel = _safe_relative(out)
            if rel is None:
                continue
            path = root / rel
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                removed.append(rel.as_posix())
            elif path.exists() or path.is_symlink():
                path.unlink()
                removed.append(rel.as_posix())
            if _drop_gitignore_line(root, rel) and rel.as_posix() not in removed:
                removed.append(rel.as_posix())
        if data is not None and isinstance(data.get("stages"), dict):
            pruned = [name for name in stages if name in data["stages"]]
            for name in pruned:
                del data["stages"][name]
            if pruned:
                atomic_write_text(dvc_lock, dumps_yaml(data))
                removed += [f"dvc.lock:{name}" for name in pruned]
    return removed


def _dvc(root: Path, *args: str) -> str:
    """Run the DVC of this interpreter's environment in the workspace; its failure is one line."""
    try:
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    except OSError as exc:
        raise FusecliError(f"cannot run dvc: {exc}: install dvc in this environment") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        why = lines[0] if lines else f"exit status {proc.returncode}"
        raise FusecliError(f"dvc {' '.join(args)} failed in {root}: {why}: run it there for details")
    return proc.stdout


def _downstream(dot: str) -> dict[str, list[str]]:
    """Edges of `dvc dag --dot` as stage -> the stages that depend on it."""
    children: dict[str, list[str]] = {}
    for a, b in re.findall(r'"([^"]+)"\s*->\s*"([^"]+)"', dot):
        children.setdefault(a, []).append(b)
    return children


def stale_stages(root: str | Path) -> dict[str, str]:
    """Stages that `dvc repro` would run, each with why: changed per `dvc status`, or downstream of one.

    `dvc status` lists only stages whose own dependencies changed, so the stages after them (which
    will see new inputs) are added from the DAG, except after a switch stage (the stage table's `switch`,
    e.g. demo_use): it reruns, but its answer, and so what follows it, changes only when the answer does.
    `dvc repro --dry` is not used: it fails on a newly added source whose first input does not exist yet.
    """
    root = Path(root).resolve()
    if not (root / ".dvc").is_dir():
        raise FusecliError(f"{root} is not a DVC workspace: run `git init && dvc init` there")
    try:
        status = json.loads(_dvc(root, "status", "--json") or "{}")
    except ValueError:
        raise FusecliError("dvc status --json printed no JSON: run `dvc status` to see why") from None
    stale: dict[str, str] = {}
    for name, changes in status.items():
        stage = name.removeprefix("dvc.yaml:")
        parts = []
        for change in changes:
            parts += list(change) if isinstance(change, dict) else [str(change)]
        stale[stage] = ", ".join(parts) or "changed"
    if not stale:
        return stale
    children = _downstream(_dvc(root, "dag", "--dot"))
    switches = {s.name for s in pipeline.STAGES if s.switch}
    todo = list(stale)
    while todo:
        parent = todo.pop()
        for child in children.get(parent, []) if parent not in switches else []:
            if child not in stale:
                stale[child] = f"after {parent}"
                todo.append(child)
    return dict(sorted(stale.items()))


def unignored_outputs(root: str | Path) -> list[str]:
    """DVC-cached outputs on disk that git does not ignore, so `git add -A` would commit them.

    DVC adds an output's .gitignore line when its stage finishes, but takes the additions of the whole
    run back when a later stage fails, while the finished stages stay in dvc.lock and on disk."""
    root = Path(root).resolve()
    if not (root / ".git").exists() or not (root / ".dvc").is_dir():
        return []
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            outs = [PurePosixPath(Path(out.fs_path).relative_to(root).as_posix())
                    for stage in repo.index.stages for out in stage.outs if out.use_cache and out.is_in_repo]
    except DvcException as exc:
        raise FusecliError(f"cannot read the pipeline in {root}: {exc}: run `dvc status` for details") from None
    present = sorted({o.as_posix() for o in outs if (root / o).exists()})
    if not present:
        return []
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=root, input="\n".join(present),
                          capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 1: none of them is ignored
        raise FusecliError(f"git check-ignore failed in {root}: {proc.stderr.strip()}: check the git repository")
    ignored = set(proc.stdout.splitlines())
    return [p for p in present if p not in ignored]


def ignore_outputs(root: str | Path, outputs: list[str]) -> None:
    """Add DVC's own line for each output (`/c` in `a/b/.gitignore` for `a/b/c`)."""
    root = Path(root)
    for out in map(PurePosixPath, outputs):
        gitignore = root / out.parent / ".gitignore"
        text = gitignore.read_text(encoding="utf-8") if gitignore.is_file() else ""
        if f"/{out.name}" not in text.splitlines():
            atomic_write_text(gitignore, text + ("" if not text or text.endswith("\n") else "\n") + f"/{out.name}\n")


def ignore_model_folder(root: str | Path, path: str) -> str | None:
    """Git-ignore a pinned model folder inside the workspace, as DVC ignores an output (`/c` in
    `a/b/.gitignore`), so `git add -A` never commits gigabytes of weights; return the ignored path.

    Nothing for a folder outside the workspace, one git already ignores (models/, DVC's demo/models) or
    one whose files git tracks (committed on purpose). Without a git repository the line is written anyway:
    it costs nothing and holds once the user runs `git init`."""
    root = Path(root).resolve()
    rel = _safe_relative(path)
    if rel is None or not (root / rel).is_dir() or not rel.parts:
        return None
    ignored = subprocess.run(["git", "check-ignore", "-q", rel.as_posix()], cwd=root, capture_output=True)
    if ignored.returncode == 0:
        return None
    if ignored.returncode == 1:  # 128: not a git repository
        tracked = subprocess.run(["git", "ls-files", "--", rel.as_posix()], cwd=root, capture_output=True, text=True)
        if tracked.stdout.strip():
            return None
    ignore_outputs(root, [rel.as_posix()])
    return rel.as_posix()


# What a killed `dvc repro` can leave torn. DVC rewrites these files in place (truncate, then write), so a
# SIGKILL in between leaves them cut and every later DVC command stops: "Unable to read RWLock-file
# '.dvc/tmp/rwlock'. JSON structure is corrupted" (treeverse/dvc#7615) or "'./dvc.lock' validation failed".
RWLOCK = PurePosixPath(".dvc/tmp/rwlock")
EMPTY_LOCK = "schema: '2.0'\nstages: {}\n"


def recover(root: str | Path) -> list[str]:
    """Repair DVC's files that a kill left torn and the .gitignore lines a failed run took back, under
    DVC's workspace lock; return what was repaired.

    Outputs need nothing: fusecli writes them atomically and DVC reruns a stage it has not recorded.
    """
    root = Path(root).resolve()
    repaired: list[str] = []
    with dvc_repo_lock(root):
        unignored = unignored_outputs(root)
        if unignored:
            ignore_outputs(root, unignored)
            repaired.append(f".gitignore: {len(unignored)} output(s) git would have committed, ignored again "
                            f"({', '.join(unignored)})")
        if _torn_rwlock(root / RWLOCK):
            (root / RWLOCK).unlink()
            repaired.append(f"{RWLOCK}: torn, deleted (it only lists running DVC processes)")
        dropped = _repair_dvc_lock(root / "dvc.lock")
        if dropped is not None:
            repaired.append(f"dvc.lock: torn, cut back to its whole entries; to rerun: {', '.join(dropped) or '-'}")
    return repaired


def _torn_rwlock(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except ValueError:
        return True
    return False


def _lock_valid(text: str) -> bool:
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils.serialize import parse_yaml

    try:
        COMPILED_LOCKFILE_SCHEMA(parse_yaml(text, "dvc.lock") or {})
    except Exception:  # noqa: BLE001 (a YAML, parse or schema error all mean a torn file)
        return False
    return True


def _repair_dvc_lock(path: Path) -> list[str] | None:
    """None if dvc.lock is whole; else rewrite it as its longest valid prefix and return the dropped stages.

    DVC dumps dvc.lock front to back, so a torn one is a prefix: whole stage entries, then a cut one. It
    is cut back before a stage entry (a line `  <stage>:` under `stages:`), the last such cut that
    validates; the dropped stages rerun on the next `dvc repro`.
    """
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    if _lock_valid(text):
        return None
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"  \S.*:\s*", line)]
    named = [lines[i].strip().rstrip(":").strip("'\"") for i in starts]
    for n in reversed(range(1, len(starts))):
        if _lock_valid(head := "".join(lines[: starts[n]])):
            atomic_write_text(path, head)
            return named[n:]
    atomic_write_text(path, EMPTY_LOCK)
    return named or ["every stage"]

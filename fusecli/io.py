"""Atomic file and directory writes: a reader never sees a half-written output.

A write goes to a hidden temp file or folder beside its target, named after the target and the writer's
pid, and is renamed over the target when complete. A killed writer (SIGKILL runs no cleanup) leaves its
temp behind; the next write of the same target removes the temps of writers no longer alive, so killed
runs leave no debris in folders that are other stages' dependencies (fused/, merged/, align/).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (on this host): our stale-lock and DVC-rwlock checks ask it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def sweep_stale(path: str | os.PathLike[str]) -> None:
    """Remove the temps that killed writers of `path` left beside it (and atomic_dir's `.old` copy).

    Only temps of pids that no longer run: a live writer of the same target keeps its own.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[a-z0-9_]{{8}}\.tmp")
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and not pid_alive(int(m[1])):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete a folder so that a kill midway leaves no half-deleted folder under its name.

    It is first renamed (atomic) into a temp folder beside it, which `sweep_stale(path)` removes if the
    delete is cut short: a half-deleted checkpoint whose trainer state survived would read as complete.
    """
    path = Path(path)
    if not path.is_dir():
        return
    trash = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path` (with the umask's usual mode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it the mode open() would
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() names no file: name it for the error message
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_modes(folder: Path) -> None:
    """Give everything under `folder` the mode a plain open() or mkdir() would (the umask's).

    Some writers create private files: safetensors' `save_file` (and so `save_pretrained` and the
    Trainer's `save_model`) writes model.safetensors 0600, which teammates on a shared disk cannot read.
    Execute bits are kept; only the permissions the umask allows are granted."""
    mask = _umask()
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            entry = os.path.join(dirpath, name)
            st = os.lstat(entry)  # a symlink keeps its target's mode
            if stat.S_ISDIR(st.st_mode):
                os.chmod(entry, 0o777 & ~mask)
            elif stat.S_ISREG(st.st_mode):
                os.chmod(entry, (0o666 | (st.st_mode & 0o111)) & ~mask)


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` (every file in it with the umask's
    usual mode), on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    shutil.rmtree(path.with_name(f".{path.name}.old"), ignore_errors=True)  # a kill between the two renames
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the output folder gets the usual mode
    try:
        yield tmp
        _usual_modes(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""The workspace lock that keeps `fusecli` from changing a workspace under a running `dvc repro`.

DVC releases its own repo lock while a stage's command runs, so it cannot tell a `fusecli remove-source`
that a stage is reading the source it deletes. Every stage that spends minutes therefore holds a shared
lock on `.fusecli/busy.lock` from its first line until its process exits (the kernel drops it even on
SIGKILL), and every `fusecli` command that changes the workspace takes it exclusively, without waiting:
while any stage runs, the command stops with one line and changes nothing.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fusecli.errors import FusecliError

LOCK = Path(".fusecli") / "busy.lock"  # stages: shared; a changing command: exclusive, without waiting
QUEUE = Path(".fusecli") / "change.lock"  # changing commands: exclusive, one after another
_held: dict[Path, int] = {}  # this process's shared locks, by workspace: kept open until the process exits


def _open(root: Path, name: Path = LOCK) -> int:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def hold_for_stage(root: str | Path = ".") -> None:
    """Take the shared lock for the rest of this process (a stage's whole run); idempotent."""
    root = Path(root).resolve()
    if root in _held:
        return
    fd = _open(root)
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a fusecli command is changing the workspace
    _held[root] = fd


@contextmanager
def workspace_change(root: str | Path) -> Iterator[None]:
    """Hold the exclusive lock while a command changes the workspace; refuse at once if a stage runs.

    Two commands run one after the other (the queue lock), so concurrent `add-source`s both land."""
    root = Path(root)
    queue = _open(root, QUEUE)
    fd = _open(root)
    try:
        fcntl.flock(queue, fcntl.LOCK_EX)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FusecliError(
                f"a `dvc repro` stage is running in {root} (it holds {LOCK}): wait for it to finish, then retry"
            ) from None
        yield
    finally:
        os.close(fd)  # closing a descriptor releases its lock
        os.close(queue)

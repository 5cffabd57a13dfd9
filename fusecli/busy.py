"""The workspace lock that keeps `fusecli` from changing a workspace under a running `dvc repro`.

DVC releases its own repo lock while a stage's command runs, so it cannot tell a `fusecli remove-source`
that a stage is reading the source it deletes. Every stage that spends minutes therefore holds a shared
lock on `.fusecli/busy.lock` from its first line until its process exits (the kernel drops it even on
SIGKILL), and every `fusecli` command that changes the workspace takes it exclusively, without waiting:
while any stage runs, the command stops with one line and changes nothing.

A stage takes that lock only once Python and torch are imported, seconds after DVC launched it, so the
command also asks DVC: it refuses while DVC holds its repo lock (between stages) or while DVC's rwlock
(`.dvc/tmp/rwlock`, written before DVC releases its repo lock to run a stage's command) lists a live process.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fusecli.errors import FusecliError
from fusecli.io import pid_alive

LOCK = Path(".fusecli") / "busy.lock"  # stages: shared; a changing command: exclusive, without waiting
QUEUE = Path(".fusecli") / "change.lock"  # changing commands: exclusive, one after another
RWLOCK = Path(".dvc") / "tmp" / "rwlock"  # DVC's: {"read": {path: [info]}, "write": {path: info}}, info {pid, cmd}
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
        _refuse_while_dvc_runs(root)
        yield
    finally:
        os.close(fd)  # closing a descriptor releases its lock
        os.close(queue)


def _alive(pid: object) -> bool:
    return isinstance(pid, int) and pid > 0 and pid_alive(pid)


def dvc_running_commands(root: str | Path) -> list[str]:
    """The commands of the live processes DVC's rwlock lists (a killed DVC leaves entries behind: dead pids
    are skipped, as DVC itself does). An unreadable rwlock lists none: `fusecli recover` repairs it."""
    try:
        data = json.loads((Path(root) / RWLOCK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict):
        return []
    writes = data.get("write") if isinstance(data.get("write"), dict) else {}
    reads = data.get("read") if isinstance(data.get("read"), dict) else {}
    infos = list(writes.values()) + [i for v in reads.values() if isinstance(v, list) for i in v]
    live = [info for info in infos if isinstance(info, dict) and _alive(info.get("pid"))]
    return list(dict.fromkeys(f"{info.get('cmd', '?')} (pid {info['pid']})" for info in live))


def _refuse_while_dvc_runs(root: Path) -> None:
    """Raise if DVC is between stages (holds its repo lock) or running one (its rwlock lists a live process).

    The repo lock is checked first: once it is free, a stage DVC is running is already in its rwlock."""
    from fusecli.workspace import dvc_repo_lock  # imported here: DVC is slow to load for the stages

    with dvc_repo_lock(root):
        pass
    running = dvc_running_commands(root)
    if running:
        raise FusecliError(
            f"a `dvc repro` stage is running in {root} (DVC's {RWLOCK} lists {running[0]}): "
            "wait for it to finish, then retry"
        )

"""One exception type for every user-facing failure: a one-line message naming the problem and the fix."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

T = TypeVar("T")


class FusecliError(Exception):
    """Bad input or state. The message is one line: what is wrong, then how to fix it."""


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: a full disk is the usual cause on long runs, so it gets its own fix."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device{where}: free disk space, then rerun (finished shards and files are kept)"
    what = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    return f"{what}{where}: check the path, its permissions and free disk space"


def fail_cleanly(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn a FusecliError or OSError into `error: <message>` on stderr and exit status 1 (used by stage mains)."""

    @wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> T:
        try:
            return fn(*args, **kwargs)
        except FusecliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except OSError as exc:
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper

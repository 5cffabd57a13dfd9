"""One exception type for every user-facing failure: a one-line message naming the problem and the fix."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

T = TypeVar("T")


class FusecliError(Exception):
    """Bad input or state. The message is one line: what is wrong, then how to fix it."""


def fail_cleanly(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn a FusecliError into `error: <message>` on stderr and exit status 1 (used by stage mains)."""

    @wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> T:
        try:
            return fn(*args, **kwargs)
        except FusecliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper

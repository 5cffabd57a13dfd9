"""The repository's params.yaml sections as the stages load them, with test-sized changes on top.

The dataclasses carry no defaults for the keys params.yaml holds (one source of values), so tests
start from params.yaml too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from fusecli.closure import ROOT
from fusecli.config import load_section

T = TypeVar("T")


def section(cls: type[T], name: str, **changes: Any) -> T:
    """`name` of the repository's params.yaml as `cls`, with `changes` replaced (validated again)."""
    loaded = load_section(cls, name, ROOT / "params.yaml")
    changed = dataclasses.replace(loaded, **changes)  # type: ignore[type-var]
    validate = getattr(changed, "validate", None)
    if callable(validate):
        validate()
    return changed

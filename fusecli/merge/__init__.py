"""Stage 5: merge the pair-fused targets onto the pivot (SCE, VaRM and the baselines of docs/method.md).

Names are loaded on first use (PEP 562): `fusecli list` and the other light commands import the
`merge` command's module without paying for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "MergeParams": "fusecli.merge.params",
    "merge_params": "fusecli.merge.params",
    "get_method": "fusecli.merge.registry",
    "method_names": "fusecli.merge.registry",
    "register": "fusecli.merge.registry",
    "MergeResult": "fusecli.merge.run",
    "merge_models": "fusecli.merge.run",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)

"""Where and in what precision a stage computes: `device` and `dtype` settings -> torch, one way for all."""

from __future__ import annotations

import torch

from fusecli.dtypes import LOADABLE
from fusecli.errors import FusecliError

DTYPES = {name: getattr(torch, name) for name in LOADABLE}


def resolve_device(device: str, key: str = "device") -> torch.device:
    """`auto` picks cuda when present; an explicit cuda request without a GPU is an error naming `key`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FusecliError(f"{key} = {device!r} but no CUDA device is visible: set it to cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on GPU (the release's precision) and fp32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise FusecliError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]

"""Fused training kernels for the pivot's decoder layers, chosen by `fuse.kernels` (CUDA only).

"liger": liger-kernel's Triton RMSNorm, SwiGLU MLP and rotary embedding, patched into the model
instance (and, for rotary, into its transformers module). Its cross-entropy kernels are not used: the
fusion loss computes its own sparse CE on the head (fusecli/fuse/loss.py). tests/fuse/test_kernels.py
checks the patched model's loss and gradients against the plain one on a GPU.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from fusecli.errors import FusecliError


def _none(model: torch.nn.Module) -> None:
    return None


def _liger(model: torch.nn.Module) -> None:
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        raise FusecliError("fuse.kernels = 'liger' needs liger-kernel: pip install liger-kernel, or set none") from None
    kind = model.config.model_type
    if kind not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise FusecliError(f"fuse.kernels = 'liger' has no kernels for {kind!r} models: set fuse.kernels: none")
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN[kind]
    wanted = dict(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    accepted = inspect.signature(apply).parameters  # the patch functions differ per architecture
    apply(model=model, **{k: v for k, v in wanted.items() if k in accepted})


KERNELS: dict[str, Callable[[torch.nn.Module], None]] = {"none": _none, "liger": _liger}


def apply_kernels(model: torch.nn.Module, name: str, device: torch.device) -> None:
    """Patch `model` with the named kernels; a no-op on CPU (the kernels are Triton, GPU only)."""
    if name not in KERNELS:
        raise FusecliError(f"fuse.kernels = {name!r} is unknown: use one of {sorted(KERNELS)}")
    if device.type == "cuda":
        KERNELS[name](model)

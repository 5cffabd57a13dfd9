"""Merge methods by name: one small module per method, registered with `@register` (as in mergekit).

A method merges ONE parameter tensor: `fn(base, models, params, *, name) -> (merged, coefficients)`.
`MergeMethod.__call__` does what every method needs, once: it fills in the method's defaults
(per-model weights, normalise), hands the method float32 tensors and casts the result back to the
base dtype. So a method module is only its formula. Adding a method touches nothing else.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fusecli.errors import FusecliError

if TYPE_CHECKING:
    from fusecli.merge.params import MergeParams

Coefficients = dict[str, list[float]]
MethodFn = Callable[..., tuple[torch.Tensor, Coefficients | None]]

UNIFORM = "uniform"  # default weight: 1/N for each of N models


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MethodFn
    options: tuple[str, ...]  # the MergeParams fields this method reads (model card, mergekit export)
    weight: float | str | None  # default per-model weight: a number, UNIFORM, or None (unused)
    normalize: bool | None  # default for `normalize`, None when the method has no such option
    mergekit: str | None  # the same method's name in mergekit, None when mergekit lacks it
    doc: str

    def resolve(self, params: MergeParams, n_models: int) -> MergeParams:
        """Fill the method's defaults in: `weight` becomes one float per model, `normalize` a bool."""
        changes: dict[str, Any] = {}
        if self.weight is not None:
            w = params.weight if params.weight is not None else self.weight
            if w == UNIFORM:
                w = 1.0 / n_models
            if isinstance(w, int | float):
                w = (float(w),) * n_models
            if len(w) != n_models:
                raise FusecliError(
                    f"merge.weight has {len(w)} values for {n_models} models: "
                    "give one number, or one per model in merge order"
                )
            changes["weight"] = tuple(float(x) for x in w)
        if self.normalize is not None:
            changes["normalize"] = self.normalize if params.normalize is None else params.normalize
        return dataclasses.replace(params, **changes)

    def describe(self, params: MergeParams) -> dict[str, Any]:
        """The options this method reads, as resolved (for the model card and the report)."""
        out: dict[str, Any] = {"method": self.name}
        for key in self.options:
            value = getattr(params, key)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def __call__(
        self, base: torch.Tensor, models: list[torch.Tensor], params: MergeParams, *, name: str = ""
    ) -> tuple[torch.Tensor, Coefficients | None]:
        resolved = self.resolve(params, len(models))
        merged, coefficients = self.fn(base.float(), [m.float() for m in models], resolved, name=name)
        if not torch.isfinite(merged).all():
            raise FusecliError(f"{self.name} produced non-finite values in {name}: check the input models")
        return merged.to(base.dtype), coefficients


_METHODS: dict[str, MergeMethod] = {}


def register(
    name: str,
    *,
    options: tuple[str, ...] = (),
    weight: float | str | None = None,
    normalize: bool | None = None,
    mergekit: str | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Register `fn` as merge method `name`; `weight`/`normalize` are the method's defaults."""
    if isinstance(weight, float) and not math.isfinite(weight):
        raise ValueError(f"default weight of {name} must be finite")

    def decorate(fn: MethodFn) -> MethodFn:
        if name in _METHODS:
            raise ValueError(f"merge method {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        _METHODS[name] = MergeMethod(name, fn, options, weight, normalize, mergekit, doc[0] if doc else "")
        return fn

    return decorate


def _load() -> None:
    importlib.import_module("fusecli.merge.methods")


def method_names() -> list[str]:
    _load()
    return sorted(_METHODS)


def get_method(name: str) -> MergeMethod:
    _load()
    if name not in _METHODS:
        raise FusecliError(f"unknown merge method {name!r}: choose one of {', '.join(sorted(_METHODS))}")
    return _METHODS[name]

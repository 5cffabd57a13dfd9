"""Merge methods by name: one small module per method, registered with `@register` (as in mergekit).

A method merges ONE parameter tensor: `fn(base, models, params, *, name) -> (merged, coefficients)`.
A method whose formula needs statistics of the whole tensor (a top-k threshold, per-model energies)
also registers `stats(blocks, params, name)`, and its `fn` then takes them as `stats=`: the runner
can then merge a tensor too large for memory block by block (`Blocks`: rows of the base and of each
model, read again on each pass), computing the statistics in passes over the blocks first. Small
tensors are one block, read once.

`MergeMethod` does what every method needs, once: it fills in the method's defaults (per-model
weights, normalise), hands the method float32 tensors and casts the result back to the base dtype.
So a method module is only its formula. Adding a method touches nothing else.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fusecli.errors import FusecliError

if TYPE_CHECKING:
    from fusecli.merge.params import MergeParams

Coefficients = dict[str, list[float]]
MethodFn = Callable[..., tuple[torch.Tensor, Coefficients | None]]
StatsFn = Callable[["Blocks", "MergeParams", str], Any]


class Block:
    """Float32 rows of the base (None when the method does not read it) and the same rows of each
    model, with what methods derive from them (task vectors, variances) kept as long as the block."""

    def __init__(self, base: torch.Tensor | None, models: list[torch.Tensor]):
        self.base, self.models = base, models
        self._derived: dict[str, torch.Tensor] = {}

    def derive(self, key: str, fn: Callable[[Block], torch.Tensor]) -> torch.Tensor:
        """fn(self), computed once per block: a tensor of one block is read once and every pass over
        it reuses what the earlier passes derived."""
        if key not in self._derived:
            self._derived[key] = fn(self)
        return self._derived[key]


class Blocks:
    """One tensor of the base and of each model as row blocks. Iterating reads the blocks again, so
    a method's statistics can take several passes; a tensor of one block is read once and kept."""

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        n_models: int,
        bounds: list[slice],
        read: Callable[[slice], Block],
    ):
        self.shape, self.dtype, self.n_models, self.bounds, self._read = tuple(shape), dtype, n_models, bounds, read
        self._kept: Block | None = None

    @classmethod
    def whole(cls, base: torch.Tensor, models: list[torch.Tensor]) -> Blocks:
        """In-memory tensors as one block."""
        block = Block(base.float(), [m.float() for m in models])
        return cls(tuple(base.shape), base.dtype, len(models), [slice(None)], lambda rows: block)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def __iter__(self) -> Iterator[Block]:
        if len(self.bounds) == 1:
            if self._kept is None:
                self._kept = self._read(self.bounds[0])
            yield self._kept
            return
        for rows in self.bounds:
            yield self._read(rows)


UNIFORM = "uniform"  # default weight: 1/N for each of N models


def all_finite(x: torch.Tensor) -> bool:
    """No inf or NaN in x: min and max propagate NaN, so one pass, no temporary (isfinite's is 8x slower)."""
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return math.isfinite(lo) and math.isfinite(hi)


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MethodFn
    options: tuple[str, ...]  # the MergeParams fields this method reads (model card, mergekit export)
    weight: float | str | None  # default per-model weight: a number, UNIFORM, or None (unused)
    normalize: bool | None  # default for `normalize`, None when the method has no such option
    mergekit: str | None  # the same method's name in mergekit, None when mergekit lacks it
    doc: str
    stats: StatsFn | None = None  # whole-tensor statistics, passed to `fn` as `stats=`
    reads_base: bool = True  # False: `fn` ignores the base tensor, so the runner does not read it

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

    def merge(
        self, blocks: Blocks, params: MergeParams, *, name: str = ""
    ) -> Iterator[tuple[torch.Tensor, Coefficients | None]]:
        """Merge `blocks` one block at a time, in order; each merged block is in the base dtype.
        The statistics, if any, are computed first, over every block."""
        resolved = self.resolve(params, blocks.n_models)
        extra = {"stats": self.stats(blocks, resolved, name)} if self.stats is not None else {}
        for block in blocks:
            merged, coefficients = self.fn(block.base, block.models, resolved, name=name, **extra)
            if not all_finite(merged):
                raise FusecliError(f"{self.name} produced non-finite values in {name}: check the input models")
            yield merged.to(blocks.dtype), coefficients

    def __call__(
        self, base: torch.Tensor, models: list[torch.Tensor], params: MergeParams, *, name: str = ""
    ) -> tuple[torch.Tensor, Coefficients | None]:
        """Merge whole in-memory tensors (one block)."""
        ((merged, coefficients),) = self.merge(Blocks.whole(base, models), params, name=name)
        return merged, coefficients


_METHODS: dict[str, MergeMethod] = {}


def register(
    name: str,
    *,
    options: tuple[str, ...] = (),
    weight: float | str | None = None,
    normalize: bool | None = None,
    mergekit: str | None = None,
    stats: StatsFn | None = None,
    reads_base: bool = True,
) -> Callable[[MethodFn], MethodFn]:
    """Register `fn` as merge method `name`; `weight`/`normalize` are the method's defaults; `stats`
    computes what `fn` needs from the whole tensor (see the module docstring); `reads_base=False`
    when `fn` ignores the base tensor."""
    if isinstance(weight, float) and not math.isfinite(weight):
        raise ValueError(f"default weight of {name} must be finite")

    def decorate(fn: MethodFn) -> MethodFn:
        if name in _METHODS:
            raise ValueError(f"merge method {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        first = doc[0] if doc else ""
        _METHODS[name] = MergeMethod(name, fn, options, weight, normalize, mergekit, first, stats, reads_base)
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

"""Merge methods by name: one small module per method, registered with `@register` (as in mergekit).

A method merges ONE parameter tensor: `fn(base, models, options, *, name) -> (merged, coefficients)`,
where `options` is the method's own frozen dataclass (registered with it; params.yaml `merge.<name>`).
A method whose formula needs statistics of the whole tensor (a top-k threshold, per-model energies)
also registers `stats(blocks, params, name)`, and its `fn` then takes them as `stats=`: the runner
can then merge a tensor too large for memory block by block (`Blocks`: rows of the base and of each
model, read again on each pass), computing the statistics in passes over the blocks first. Small
tensors are one block, read once. A method that weighs the models by what they were trained on
registers `reads_importance=True`: the runner then also reads each model's per-parameter importance
(a diagonal Fisher on its own training data, fusecli/fuse/fisher.py) row block by row block, and `fn`
takes it as `importance=`.

`MergeMethod` does what every method needs, once: it turns a `weight` option into one float per model
(None: 1/N each), hands the method float32 tensors and casts the result back to the base dtype. So a
method module is only its options and its formula; adding one also adds its `merge.<name>` mapping
to params.yaml (docs/architecture.md, "Adding a merge method").
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from fusecli.errors import FusecliError

Coefficients = dict[str, list[float]]
MethodFn = Callable[..., tuple[torch.Tensor, Coefficients | None]]
StatsFn = Callable[["Blocks", Any, str], Any]


class Block:
    """Float32 rows of the base (None when the method does not read it), the same rows of each model and,
    for a method that reads them, of each model's statistics, with what methods derive from them (task
    vectors, variances) kept as long as the block."""

    def __init__(
        self, base: torch.Tensor | None, models: list[torch.Tensor], importance: list[torch.Tensor] | None = None
    ):
        self.base, self.models, self.importance = base, models, importance
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
    def whole(
        cls, base: torch.Tensor, models: list[torch.Tensor], importance: list[torch.Tensor] | None = None
    ) -> Blocks:
        """In-memory tensors as one block."""
        floats = None if importance is None else [x.float() for x in importance]
        block = Block(base.float(), [m.float() for m in models], floats)
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
    options: type  # the method's options dataclass: params.yaml `merge.<name>`, `fusecli merge --set`
    mergekit: str | None  # the same method's name in mergekit, None when mergekit lacks it
    doc: str
    stats: StatsFn | None = None  # whole-tensor statistics, passed to `fn` as `stats=`
    reads_base: bool = True  # False: `fn` ignores the base tensor, so the runner does not read it
    reads_importance: bool = False  # True: `fn` takes `importance=`, each model's importance of the same rows

    def resolve(self, options: Any, n_models: int) -> Any:
        """A `weight` option as one float per model (None: 1/N each)."""
        if not hasattr(options, "weight"):
            return options
        w = options.weight if options.weight is not None else 1.0 / n_models
        if isinstance(w, int | float):
            w = (float(w),) * n_models
        if len(w) != n_models:
            raise FusecliError(
                f"merge.{self.name}.weight has {len(w)} values for {n_models} models: "
                "give one number, or one per model in merge order"
            )
        return dataclasses.replace(options, weight=tuple(float(x) for x in w))

    def describe(self, options: Any) -> dict[str, Any]:
        """The method and its options as resolved (for the model card and the report)."""
        out: dict[str, Any] = {"method": self.name}
        for key, value in dataclasses.asdict(options).items():
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def merge(
        self, blocks: Blocks, options: Any, *, name: str = ""
    ) -> Iterator[tuple[torch.Tensor, Coefficients | None]]:
        """Merge `blocks` one block at a time, in order; each merged block is in the base dtype.
        The statistics, if any, are computed first, over every block."""
        resolved = self.resolve(options, blocks.n_models)
        extra = {"stats": self.stats(blocks, resolved, name)} if self.stats is not None else {}
        for block in blocks:
            if self.reads_importance:
                if block.importance is None:
                    raise FusecliError(
                        f"merge method {self.name} weighs each model by its importance on its own training data, "
                        "and none was given: run it in the pipeline (stage fisher@<slug>) or pass --importance DIR"
                    )
                extra["importance"] = block.importance
            merged, coefficients = self.fn(block.base, block.models, resolved, name=name, **extra)
            if not all_finite(merged):
                raise FusecliError(f"{self.name} produced non-finite values in {name}: check the input models")
            yield merged.to(blocks.dtype), coefficients

    def __call__(
        self,
        base: torch.Tensor,
        models: list[torch.Tensor],
        options: Any,
        *,
        name: str = "",
        importance: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, Coefficients | None]:
        """Merge whole in-memory tensors (one block); `importance`: each model's per-parameter importance."""
        ((merged, coefficients),) = self.merge(Blocks.whole(base, models, importance), options, name=name)
        return merged, coefficients


_METHODS: dict[str, MergeMethod] = {}


def register(
    name: str,
    *,
    options: type,
    mergekit: str | None = None,
    stats: StatsFn | None = None,
    reads_base: bool = True,
    reads_importance: bool = False,
) -> Callable[[MethodFn], MethodFn]:
    """Register `fn` as merge method `name` with its `options` dataclass; `stats` computes what `fn`
    needs from the whole tensor (see the module docstring); `reads_base=False` when `fn` ignores the
    base tensor; `reads_importance=True` when it weighs the models by their per-parameter importance."""
    if not dataclasses.is_dataclass(options):
        raise ValueError(f"the options of merge method {name!r} must be a dataclass")

    def decorate(fn: MethodFn) -> MethodFn:
        if name in _METHODS:
            raise ValueError(f"merge method {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        first = doc[0] if doc else ""
        _METHODS[name] = MergeMethod(name, fn, options, mergekit, first, stats, reads_base, reads_importance)
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

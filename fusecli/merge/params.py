"""The `merge` section of params.yaml: what every method shares, and one mapping per method.

    merge: {method, methods, device, max_shard_size, sce: {...}, ties: {...}, ...}

Each method module declares its options dataclass (fusecli/merge/methods/*.py), so `merge@<method>`
depends on `merge.device`, `merge.max_shard_size` and `merge.<method>` only: changing one method's
option reruns that merge alone. The option defaults are the methods' published ones, used by
`fusecli merge` outside a workspace; in the pipeline params.yaml must carry every key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fusecli.config import from_dict, read_yaml
from fusecli.errors import FusecliError

Weight = float | tuple[float, ...] | None  # one for all models, or one per model in merge order
SHARED = ("method", "methods", "device", "max_shard_size")  # the keys of `merge` that are not a method's
FLAT = ("sce_variant", "select_topk", "weight", "density", "normalize", "seed")  # before per-method options


@dataclass(frozen=True)
class MergeParams:
    method: str
    options: Any  # the method's options dataclass (registry: MergeMethod.options)
    device: Literal["cpu", "cuda"] = "cpu"  # where the arithmetic runs; output is identical up to rounding
    max_shard_size: str | int = "5GB"  # output shard size: bytes, or "500MB", "5GB", "2GiB"

    def validate(self) -> None:
        from fusecli.merge.io import parse_size

        parse_size(self.max_shard_size)


def check_weight(where: str, weight: Weight) -> None:
    weights = weight if isinstance(weight, tuple) else (weight,)
    if any(w is not None and not math.isfinite(w) for w in weights):
        raise FusecliError(f"{where}.weight = {weight} must be finite numbers")
    if isinstance(weight, tuple) and not weight:
        raise FusecliError(f"{where}.weight is an empty list: give one number, or one per model")


def check_fraction(where: str, key: str, value: float, what: str) -> None:
    if not 0 < value <= 1:
        raise FusecliError(f"{where}.{key} = {value} must be in (0, 1]: {what}")


def merge_params(method: str, *, complete: bool = False, where: str | None = None, **values: Any) -> MergeParams:
    """MergeParams of `method` from flat values: `device`, `max_shard_size` and the method's options
    (as `fusecli merge --set` gives them). `complete`: every option must be given (params.yaml)."""
    from fusecli.merge.registry import get_method

    where = where or f"merge.{method}"
    shared = {k: values.pop(k) for k in ("device", "max_shard_size") if k in values}
    options = from_dict(get_method(method).options, values, where, complete=complete)
    return from_dict(MergeParams, {"method": method, "options": options, **shared}, "merge")


def stage_params(params: str | Path, method: str | None = None) -> MergeParams:
    """MergeParams of one `merge@<method>` stage (default: merge.method) from params.yaml."""
    from fusecli.merge.registry import method_names
    from fusecli.plan import merge_methods

    section = read_yaml(params).get("merge")
    if isinstance(section, dict) and any(k in section for k in FLAT):
        old = ", ".join(k for k in FLAT if k in section)
        raise FusecliError(
            f"{params}: merge.{{{old}}} is the old flat form: move each method's options under merge.<method> "
            "(merge: {method, methods, device, max_shard_size, sce: {variant, select_topk}, ties: {weight, density, "
            "normalize}, ...}; see params.yaml in the repository)"
        )
    chosen = merge_methods(params)
    known = method_names()
    for name in chosen.methods:
        if name not in known:
            raise FusecliError(f"merge method {name!r} is unknown: use one of {', '.join(known)}")
    unknown = sorted(set(section) - set(SHARED) - set(known))
    if unknown:
        valid = ", ".join([*SHARED, *known])
        raise FusecliError(f"merge: unknown key {unknown[0]!r}; valid keys: {valid} (one mapping per method)")
    method = method or chosen.default
    if method not in chosen.methods:
        raise FusecliError(f"method {method!r} is not in merge.methods {list(chosen.methods)}: add it there")
    if method not in section:
        raise FusecliError(f"merge.{method} is missing: add the method's options to params.yaml (e.g. {method}: {{}})")
    for key in ("device", "max_shard_size"):
        if key not in section:
            raise FusecliError(f"merge.{key} is missing: add it to params.yaml")
    options = section[method] if section[method] is not None else {}
    if not isinstance(options, dict):
        raise FusecliError(f"merge.{method} must be a mapping of the method's options")
    return merge_params(
        method, complete=True, device=section["device"], max_shard_size=section["max_shard_size"], **options
    )

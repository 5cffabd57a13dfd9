"""params.yaml -> frozen, typed dataclasses, once, at each entry point.

Every stage reads only its own section; unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fusecli.errors import FusecliError

T = TypeVar("T")


def parse_yaml(text: str, name: str | Path, fix: str = "fix the syntax") -> Any:
    """YAML text -> data; a syntax error is one line naming the file, the line and the fix."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise FusecliError(f"{name} is not valid YAML{where}: {fix}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FusecliError(f"{path} not found: run from the workspace root or pass --params")
    data = parse_yaml(path.read_text(), path) or {}
    if not isinstance(data, dict):
        raise FusecliError(f"{path} must hold a mapping at the top level")
    return data


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check(value, arg, where)
            except FusecliError:
                continue
        raise FusecliError(f"{where} = {value!r} has the wrong type: expected {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise FusecliError(f"{where} must be null")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise FusecliError(f"{where} must be a list")
        (arg, *_) = typing.get_args(tp) or (Any,)
        return tuple(_check(v, arg, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise FusecliError(f"{where} must be a mapping")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_check(k, kt, where): _check(v, vt, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise FusecliError(f"{where} = {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise FusecliError(f"{where} = {value!r} must be a number, not a boolean")
    if tp is bool and not isinstance(value, bool):
        raise FusecliError(f"{where} must be true or false, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise FusecliError(f"{where} = {value!r} must be of type {tp.__name__}")
    return value


def from_dict(cls: type[T], data: Any, where: str, *, complete: bool = False) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types (naming them).
    `complete`: a field with a default must be given too (params.yaml is then the one source of values)."""
    if not isinstance(data, dict):
        raise FusecliError(f"{where} must be a mapping of parameters")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise FusecliError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check(data[name], hints[name], f"{where}.{name}")
        elif complete or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            raise FusecliError(f"{where}.{name} is missing: add it to params.yaml")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def stage_parser(doc: str | None, *, lock: bool = True) -> argparse.ArgumentParser:
    """The parser of a `stages/<stage>.py` entry point, with the arguments every stage shares:
    `--params` (params.yaml) and, for stages that read the pinned models, `--lock` (models.lock)."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    parser.add_argument("--params", default="params.yaml", help="the parameters file")
    if lock:
        parser.add_argument("--lock", default="models.lock", help="the pinned models")
    return parser


def load_section(cls: type[T], section: str, params: str | Path = "params.yaml") -> T:
    """Load `section` of params.yaml into `cls`."""
    data = read_yaml(params)
    if section not in data:
        raise FusecliError(f"{params} has no '{section}' section: add it (see the README)")
    return from_dict(cls, data[section], section)

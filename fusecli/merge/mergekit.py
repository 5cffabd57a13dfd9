"""Export a merge as the equivalent mergekit YAML, so a result can be reproduced with mergekit.

Only methods that mergekit also has are exported. fusecli's default SCE (`release`, the authors'
code) is not mergekit's `sce` (the `sparse` variant) unless tau = 1, so it is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fusecli.dtypes import LOADABLE, SAFETENSORS
from fusecli.errors import FusecliError
from fusecli.merge.params import MergeParams
from fusecli.merge.registry import get_method

PER_MODEL = ("weight", "density")  # mergekit takes these under each model's `parameters`


def mergekit_yaml(params: MergeParams, base: Path, models: Sequence[Path], dtype: str | None = None) -> str:
    """mergekit config for merging `models` onto `base` with `params` (model order as given)."""
    method = get_method(params.method)
    if method.mergekit is None:
        raise FusecliError(
            f"mergekit has no {method.name!r} method, so --export-mergekit cannot describe this merge: "
            "drop --export-mergekit or pick linear, task_arithmetic, ties, dare_linear, dare_ties or sce"
        )
    options = params.options
    if method.name == "sce" and options.variant == "release" and options.select_topk < 1:
        raise FusecliError(
            "mergekit's sce is fusecli's sce variant sparse: --set variant=sparse to export "
            "(or select_topk=1, where both variants agree)"
        )
    resolved = method.resolve(options, len(models))
    fields = [f.name for f in dataclasses.fields(resolved)]
    per_model = [key for key in fields if key in PER_MODEL]
    config: dict[str, Any] = {"merge_method": method.mergekit}
    if method.name != "linear":
        config["base_model"] = str(Path(base).resolve())
    entries = []
    for i, model in enumerate(models):
        entry: dict[str, Any] = {"model": str(Path(model).resolve())}
        options = {key: _value(getattr(resolved, key), i) for key in per_model}
        if options:
            entry["parameters"] = options
        entries.append(entry)
    config["models"] = entries
    shared = {key: getattr(resolved, key) for key in fields if key in ("normalize", "select_topk")}
    if shared:
        config["parameters"] = shared
    if dtype in SAFETENSORS and SAFETENSORS[dtype] in LOADABLE:  # the dtypes mergekit writes
        config["dtype"] = SAFETENSORS[dtype]
    header = f"# mergekit config written by `fusecli merge --method {method.name}`\n"
    if method.name.startswith("dare"):
        header += "# mergekit draws its own random DARE masks: results match fusecli in distribution only\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def _value(value: Any, i: int) -> Any:
    return value[i] if isinstance(value, tuple) else value

"""mergekit YAML both ways, for the methods both tools have: `fusecli merge --export-mergekit FILE` writes
the mergekit config of a merge, `fusecli merge --config FILE` runs fusecli's method for a mergekit config.

A method's mergekit name is its registry entry's `.mergekit`. fusecli's default SCE (`release`, the
authors' code) is not mergekit's `sce` (the `sparse` variant) unless tau = 1, so it is not exported, and
a mergekit `sce` runs fusecli's sce with variant sparse. What mergekit has and fusecli does not (slices,
gradients over layers, per-tensor filters, tokenizer merging, LoRAs, hub ids) is refused, naming the key.

Paths: model paths in the YAML are relative to the workspace (`fusecli --workspace`, default the current
directory). mergekit reads relative paths from the current directory, so the exported file runs with
`mergekit-yaml` from the workspace, and `--config` reads a path the way mergekit run there would.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fusecli.config import read_yaml
from fusecli.dtypes import LOADABLE, SAFETENSORS
from fusecli.errors import FusecliError
from fusecli.merge.params import MergeParams, merge_params
from fusecli.merge.registry import get_method, method_names

PER_MODEL = ("weight", "density")  # mergekit takes these under each model's `parameters`
GLOBAL = ("normalize", "select_topk")  # and these under the top-level `parameters`
# mergekit's defaults, which differ from fusecli's, per mergekit method (mergekit/merge_methods/registry.py,
# generalized_task_arithmetic.py, sce.py, docs/merge_methods.md). `rescale` (DARE's 1/density) and
# `lambda` (a factor on the merged task vector) are options fusecli does not have: their value here is
# what fusecli does, the only one accepted. `weight` has no default: mergekit requires one per model.
MERGEKIT_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"normalize": True},
    "task_arithmetic": {"normalize": False, "rescale": False, "lambda": 1.0},
    "ties": {"normalize": True, "density": 1.0, "rescale": False, "lambda": 1.0},
    "dare_linear": {"normalize": False, "density": 1.0, "rescale": True, "lambda": 1.0},
    "dare_ties": {"normalize": False, "density": 1.0, "rescale": True, "lambda": 1.0},
    "sce": {"select_topk": 1.0},
}
IGNORED = ("int8_mask",)  # mergekit's memory option: the same result either way
TOP_LEVEL = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype")
UNSHARED = {  # mergekit keys fusecli does not have, and what to do instead
    "slices": "fusecli merges whole models with one method (no layer ranges or frankenmerges): use models",
    "modules": "fusecli merges whole models with one method: use models",
    "tokenizer_source": "fusecli keeps the base's tokenizer and crops grown vocabularies to it: remove it",
    "tokenizer": "fusecli keeps the base's tokenizer and crops grown vocabularies to it: remove it",
    "chat_template": "fusecli copies the base's chat template: remove it (or edit the output's template)",
}
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def mergekit_yaml(
    params: MergeParams,
    base: Path,
    models: Sequence[Path],
    dtype: str | None = None,
    *,
    root: Path | None = None,
) -> str:
    """mergekit config for merging `models` onto `base` with `params` (model order as given); paths
    relative to `root`, the workspace (default: the current directory)."""
    method = get_method(params.method)
    if method.mergekit is None:
        raise FusecliError(
            f"mergekit has no {method.name!r} method, so --export-mergekit cannot describe this merge: "
            f"drop --export-mergekit or pick one of {', '.join(shared_methods())}"
        )
    options = params.options
    if method.name == "sce" and options.variant == "release" and options.select_topk < 1:
        raise FusecliError(
            "mergekit's sce is fusecli's sce variant sparse: --set variant=sparse to export "
            "(or select_topk=1, where both variants agree)"
        )
    root = Path(root or Path.cwd()).resolve()
    resolved = method.resolve(options, len(models))
    fields = [f.name for f in dataclasses.fields(resolved)]
    config: dict[str, Any] = {"merge_method": method.mergekit}
    if method.name != "linear":
        config["base_model"] = _relative(base, root)
    entries = []
    for i, model in enumerate(models):
        entry: dict[str, Any] = {"model": _relative(model, root)}
        values = {key: _value(getattr(resolved, key), i) for key in fields if key in PER_MODEL}
        if values:
            entry["parameters"] = values
        entries.append(entry)
    config["models"] = entries
    shared = {key: getattr(resolved, key) for key in fields if key in GLOBAL}
    if shared:
        config["parameters"] = shared
    if dtype in SAFETENSORS and SAFETENSORS[dtype] in LOADABLE:  # the dtypes mergekit writes
        config["dtype"] = SAFETENSORS[dtype]
    header = [
        f"mergekit config written by `fusecli merge --method {method.name}`",
        "model paths are relative to the fusecli workspace it was written in: run mergekit-yaml there",
    ]
    if method.name.startswith("dare"):
        header.append("mergekit draws its own random DARE masks: results match fusecli in distribution only;")
        header.append(f"`fusecli merge --config` draws fusecli's masks with seed 0 (this merge: seed {options.seed})")
    return "".join(f"# {line}\n" for line in header) + yaml.safe_dump(config, sort_keys=False)


def _relative(path: Path, root: Path) -> str:
    """`path` relative to `root` (with `..` where it lies outside), as mergekit will read it. `./` in
    front, so that neither a reader nor mergekit takes `models/pivot` for a hub id (mergekit's model
    card asks the hub about a path with one `/`, and fails offline)."""
    text = os.path.relpath(Path(path).resolve(), root)
    if text not in (".", "..") and not text.startswith("../"):
        text = f"./{text}"
    if "+" in text or "@" in text:
        raise FusecliError(
            f"{path}: mergekit reads '+' in a model path as a LoRA and '@' as a hub revision: "
            "rename the folder (or link it under a name without them) before exporting"
        )
    return text


def _value(value: Any, i: int) -> Any:
    return value[i] if isinstance(value, tuple) else value


def by_mergekit_name() -> dict[str, str]:
    """mergekit's name -> fusecli's, for the methods both tools have."""
    return {get_method(n).mergekit: n for n in method_names() if get_method(n).mergekit}


def shared_methods() -> list[str]:
    """mergekit's names of the methods both tools have."""
    return sorted(by_mergekit_name())


@dataclass(frozen=True)
class MergekitConfig:
    """A mergekit config as a fusecli merge: the method, its options, the base and the models."""

    path: Path  # the YAML file, for error messages
    method: str  # fusecli's method
    options: dict[str, Any]  # the method's options, every one given (mergekit's defaults filled in)
    base: Path
    models: list[Path]
    dtype: str | None  # mergekit's output dtype (`out_dtype`, else `dtype`), e.g. "bfloat16"

    def params(self, **shared: Any) -> MergeParams:
        """MergeParams with `shared` (device, max_shard_size) added."""
        return merge_params(self.method, where=str(self.path), **self.options, **shared)

    def check_dtype(self, base_dtype: str | None) -> None:
        """fusecli writes the base's dtype (`base_dtype`, a safetensors tag): a config asking for another
        output dtype is refused rather than quietly written in the base's."""
        base = SAFETENSORS.get(base_dtype or "")
        if self.dtype is not None and base is not None and self.dtype != base:
            raise FusecliError(
                f"{self.path}: dtype {self.dtype} but fusecli writes the base's dtype ({base}), computing in "
                f"float32: set dtype: {base} or remove it"
            )


def read_mergekit(path: Path, root: Path | None = None) -> MergekitConfig:
    """The fusecli merge a mergekit YAML describes; relative model paths are read from `root`, the
    workspace (default: the current directory), as mergekit reads them from where it runs."""
    path, root = Path(path), Path(root or Path.cwd())
    data = read_yaml(path)
    for key, fix in UNSHARED.items():
        if data.get(key) is not None:
            raise FusecliError(f"{path}: {key} is not supported: {fix}")
    unknown = sorted(set(data) - set(TOP_LEVEL) - set(UNSHARED))
    if unknown:
        raise FusecliError(
            f"{path}: unknown key {unknown[0]!r} (mergekit ignores it): remove it; keys fusecli reads: "
            + ", ".join(TOP_LEVEL)
        )
    name = data.get("merge_method")
    by_mergekit = by_mergekit_name()
    if name not in by_mergekit:
        raise FusecliError(
            f"{path}: merge_method {name!r} is not one fusecli shares with mergekit: use one of "
            + ", ".join(shared_methods())
        )
    reader = _Reader(path, root, name, by_mergekit[name])
    top = reader.top_parameters(data.get("parameters"))
    base, models = reader.models(data.get("base_model"), data.get("models"))
    dtype = data.get("out_dtype") or data.get("dtype")  # mergekit writes out_dtype, else dtype
    if dtype is not None and str(dtype).removeprefix("torch.") not in LOADABLE:
        raise FusecliError(f"{path}: dtype {dtype!r} is not one of {', '.join(LOADABLE)}: fix it")
    return MergekitConfig(
        path,
        reader.method,
        reader.options(top, models),
        base,
        [folder for _, folder, _ in models],
        None if dtype is None else str(dtype).removeprefix("torch."),
    )


@dataclass(frozen=True)
class _Reader:
    """Reads the parts of one mergekit config for mergekit method `name` (fusecli's `method`)."""

    path: Path
    root: Path
    name: str
    method: str

    @property
    def fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(get_method(self.method).options)]

    @property
    def defaults(self) -> dict[str, Any]:
        return MERGEKIT_DEFAULTS[self.name]

    def top_parameters(self, data: Any) -> dict[str, Any]:
        """The top-level `parameters`: the method's global options, per-model ones for every model, and
        mergekit options fusecli does not have, at the one value that is what fusecli does."""
        top = _parameters(data, f"{self.path}: parameters")
        fields, defaults = self.fields, self.defaults
        accepted = [k for k in fields if k in PER_MODEL + GLOBAL] + [k for k in defaults if k not in fields]
        accepted += IGNORED
        for key, value in top.items():
            if key not in accepted:
                raise FusecliError(
                    f"{self.path}: parameters.{key} is not an option fusecli shares for {self.name} "
                    f"(it reads {', '.join(accepted)}): remove it"
                )
            if key in defaults and key not in fields and value != defaults[key]:
                raise FusecliError(
                    f"{self.path}: parameters.{key}: {_show(value)} is not supported for {self.name}: fusecli's "
                    f"{self.method} always works as {key}: {_show(defaults[key])}; remove it"
                )
        return top

    def models(self, base_model: Any, entries: Any) -> tuple[Path, list[tuple[int, Path, dict[str, Any]]]]:
        """The base folder and the merged models as (index in `models`, folder, per-model parameters).
        As in mergekit, the base listed among the models is the base (its parameters unused), but
        linear averages every listed model and has no base of its own."""
        if not isinstance(entries, list) or not entries:
            raise FusecliError(
                f"{self.path}: models must be a list of {{model: FOLDER, parameters: {{...}}}}: add the models"
            )
        base = None if base_model is None else _folder(base_model, f"{self.path}: base_model", self.root)
        models = []
        for i, entry in enumerate(entries):
            where = f"{self.path}: models[{i}]"
            if not isinstance(entry, dict) or "model" not in entry:
                raise FusecliError(f"{where} must be a mapping with a model (a folder) and optional parameters")
            extra = sorted(set(entry) - {"model", "parameters"})
            if extra:
                raise FusecliError(f"{where}: unknown key {extra[0]!r}: give only model and parameters")
            folder = _folder(entry["model"], f"{where}.model", self.root)
            if base is not None and self.method != "linear" and folder.resolve() == base.resolve():
                continue
            models.append((i, folder, self.model_parameters(entry.get("parameters"), f"{where}.parameters")))
        if not models:
            raise FusecliError(f"{self.path}: models lists only the base_model: add the models to merge onto it")
        if self.method != "linear":
            if base is None:
                raise FusecliError(
                    f"{self.path}: {self.name} merges task vectors relative to a base: add base_model: FOLDER"
                )
            return base, models
        if base is not None and base.resolve() not in [folder.resolve() for _, folder, _ in models]:
            raise FusecliError(
                f"{self.path}: base_model of a linear merge is averaged too and needs a weight: list it under "
                "models with a weight, or remove base_model"
            )
        return base or models[0][1], models  # fusecli reads the layout and side files from a base folder

    def model_parameters(self, data: Any, where: str) -> dict[str, Any]:
        values = _parameters(data, where)
        for key in values:
            if key in GLOBAL or key in self.defaults and key not in PER_MODEL:
                raise FusecliError(
                    f"{where}.{key}: mergekit reads {key} from the top-level parameters only: move it there"
                )
            if key not in self.fields or key not in PER_MODEL:
                raise FusecliError(f"{where}.{key} is not a per-model option fusecli shares for {self.name}: remove it")
        return values

    def options(self, top: dict[str, Any], models: list[tuple[int, Path, dict[str, Any]]]) -> dict[str, Any]:
        """Every option of fusecli's method: the config's values, else mergekit's defaults. A weight per
        model (mergekit requires one); one density for all models (fusecli has one)."""
        fields, defaults = self.fields, self.defaults
        options = {k: v for k, v in defaults.items() if k in fields}
        options.update({k: v for k, v in top.items() if k in fields and k in GLOBAL})
        if self.method == "sce":
            options["variant"] = "sparse"  # mergekit's sce
        for key in (k for k in PER_MODEL if k in fields):
            got = [values.get(key, top.get(key, defaults.get(key))) for _, _, values in models]
            if key == "weight":
                if None in got:
                    i = models[got.index(None)][0]
                    raise FusecliError(
                        f"{self.path}: models[{i}] has no weight: mergekit's {self.name} needs one per model "
                        "(or parameters.weight for all): add it"
                    )
                options[key] = tuple(got)
            elif len(set(got)) > 1:
                raise FusecliError(
                    f"{self.path}: {key} differs between models ({', '.join(map(str, got))}; a model without one "
                    f"gets mergekit's default {defaults[key]}): fusecli takes one {key} for all models, give each "
                    "the same"
                )
            else:
                options[key] = got[0]
        return options


def _show(value: Any) -> str:
    """A value as YAML writes it (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _parameters(data: Any, where: str) -> dict[str, Any]:
    """A `parameters` mapping of plain values (a null value: not given, as in mergekit); mergekit's
    gradients and filters are refused."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FusecliError(f"{where} must be a mapping of option: value")
    for key, value in data.items():
        if isinstance(value, dict) or isinstance(value, list) and any(isinstance(v, dict) for v in value):
            raise FusecliError(
                f"{where}.{key} has per-tensor filters (filter/value): fusecli applies one value to every tensor: "
                "give one number"
            )
        if isinstance(value, list):
            raise FusecliError(
                f"{where}.{key} = {value}: a list is mergekit's gradient over layers, which fusecli does not "
                "have: give one number"
            )
        if isinstance(value, str):
            raise FusecliError(f"{where}.{key} = {value!r} is not a number: give one number")
    return {key: value for key, value in data.items() if value is not None}


def _folder(value: Any, where: str, root: Path) -> Path:
    """A model reference as a local folder; mergekit's LoRA (`+`), revision (`@`) and hub ids are refused."""
    if not isinstance(value, str) or not value:
        raise FusecliError(f"{where} must be a model folder path: give it as a string")
    if "+" in value:
        raise FusecliError(
            f"{where} {value!r} names a LoRA (mergekit's MODEL+LORA): merge the adapter into its model first "
            "(peft merge_and_unload, save_pretrained) and give that folder"
        )
    if "@" in value:
        raise FusecliError(
            f"{where} {value!r} names a hub revision (mergekit's MODEL@REVISION): fusecli merge takes local "
            "folders: download that revision and give the folder"
        )
    folder = root / value
    if folder.is_dir():
        return folder
    if HUB_ID.fullmatch(value) and not value.startswith("."):
        raise FusecliError(
            f"{where} {value!r} is not a folder in {root}: fusecli merge takes local folders, not hub ids: "
            f"download it (huggingface-cli download {value} --local-dir models/{value.split('/')[1]}) "
            "and give the folder"
        )
    raise FusecliError(
        f"{where} {value!r} is not a folder in {root} (relative paths are read from the workspace): fix the path"
    )

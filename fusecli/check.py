"""Preflight: everything a `dvc repro` needs, checked in seconds before any stage spends minutes.

`fusecli check` runs all of it; every torch stage runs `preflight` first, so a pipeline with a bad key
in params.yaml, a masked LM, a short context, a truncated shard or a source without a chat template
stops at its first stage with one line, not after the fusion and merges have run. The checks read
configs and file headers only (no weights are loaded), so they cost a few milliseconds per model.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusecli.config import from_dict, read_yaml
from fusecli.errors import FusecliError
from fusecli.hashing import repin_command
from fusecli.lock import ModelEntry, read_lock

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# Characters per token of English prose for today's BPE vocabularies (OpenAI's rule of thumb; 32K-152K
# vocabularies measure 3.5-4.5). Code, numbers and other scripts take more tokens per character, so a row of
# dataset.max_chars characters needs at least about max_chars / 4 tokens for most text: a stated bound, not a
# tokenizer's count, because `fusecli check` runs before the models are pulled or built and loads none. The
# extract stage counts what was really cut, with each model's own tokenizer (fusecli/extract/truncation.py).
CHARS_PER_TOKEN = 4


def _sections() -> dict[str, type]:
    """params.yaml section -> the dataclass its stage loads it into (the stage table's, and runtime's)."""
    from fusecli.pipeline import sections
    from fusecli.runtime import RuntimeParams

    return {"runtime": RuntimeParams, **sections()}


def _check_launch(value: Any) -> None:
    if not isinstance(value, dict) or set(value) != {"extract", "fuse"}:
        raise FusecliError("params.yaml launch must map exactly `extract` and `fuse` to a launcher command")
    for key, cmd in value.items():
        if not isinstance(cmd, str) or not cmd.strip():
            raise FusecliError(f"launch.{key} = {cmd!r} must be a command such as `python` or `torchrun ...`")


def _check_merge(params: Path) -> None:
    from fusecli.merge.params import stage_params
    from fusecli.plan import merge_methods

    for method in merge_methods(params).methods:
        stage_params(params, method)


def _check_imf(params: Path) -> None:
    from fusecli.imf.params import SampleParams, TrainParams, load_imf
    from fusecli.imf.rewards import ScoreParams

    for key, cls in (("sample", SampleParams), ("score", ScoreParams), ("train", TrainParams)):
        load_imf(cls, key, params)


def check_params(params: str | Path, require_all: bool = True) -> list[str]:
    """Load every section of params.yaml as its stage would; return the sections checked.

    `require_all` (fusecli check): every section must be there and no other. A stage checks only the
    sections present (its own section is required by its own loader)."""
    params = Path(params)
    data = read_yaml(params)
    known: dict[str, Callable[[], None]] = {
        "launch": lambda: _check_launch(data["launch"]),
        "merge": lambda: _check_merge(params),
        "imf": lambda: _check_imf(params),
    }
    sections = _sections()
    for name, cls in sections.items():
        known[name] = lambda name=name, cls=cls: from_dict(cls, data[name], name)
    unknown = sorted(set(data) - set(known))
    if unknown and require_all:
        raise FusecliError(f"{params.name}: unknown section {unknown[0]!r}: valid sections are {', '.join(known)}")
    checked = []
    for name, check in known.items():
        if name not in data:
            if require_all:
                raise FusecliError(f"{params.name} has no '{name}' section: add it (see the repository's params.yaml)")
            continue
        check()
        checked.append(name)
    return checked


def length_warning(params: str | Path) -> str | None:
    """A warning when a row of dataset.max_chars characters cannot fit extract.max_length tokens (at
    CHARS_PER_TOKEN): its replies would be cut, losing their end and end-of-turn. None when it fits."""
    data, sections = read_yaml(params), _sections()
    if "dataset" not in data or "extract" not in data:
        return None
    max_chars = from_dict(sections["dataset"], data["dataset"], "dataset").max_chars
    max_length = from_dict(sections["extract"], data["extract"], "extract").max_length
    if max_chars <= CHARS_PER_TOKEN * max_length:
        return None
    return (f"dataset.max_chars = {max_chars} cannot fit extract.max_length = {max_length}: a row that long is about "
            f"{max_chars // CHARS_PER_TOKEN:,} tokens at ~{CHARS_PER_TOKEN} characters per token (English; code and "
            "other scripts take more), so its replies would be cut without their end (extract counts them): lower "
            f"dataset.max_chars to {CHARS_PER_TOKEN * max_length} or raise extract.max_length")


def _safetensors_whole(path: Path) -> None:
    """The header parses and the file is exactly as long as the header says: a cut download is caught."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise FusecliError(f"{path} is truncated or not safetensors: download or copy it again")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise FusecliError(f"{path} has a corrupt safetensors header: download or copy it again") from None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if 8 + n + max(ends, default=0) != size:
        raise FusecliError(
            f"{path} is {size:,} bytes but its header needs {8 + n + max(ends, default=0):,}: "
            "the file is truncated; download or copy it again"
        )


def check_weights(folder: Path) -> None:
    """Every safetensors file whole, and every shard an index names present."""
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FusecliError(f"{index} is not a valid safetensors index: download or copy it again") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise FusecliError(f"{index.name} in {folder} lists missing shard {missing[0]}: finish the download")
    for shard in sorted(folder.glob("*.safetensors")):
        _safetensors_whole(shard)


def check_model(entry: ModelEntry, root: Path, role: str, extract: Limits, missing_ok: bool = False) -> bool:
    """A pinned model is a causal LM with whole weights, a chat template, enough context and vocabulary.

    `missing_ok` (the stages): a missing folder is left to the stage's pin check, which names the fix.
    Returns False for a folder not there to check (a demo model before build_demo has run)."""
    folder = entry.folder(root)
    if not folder.is_dir():
        if missing_ok or entry.origin == "demo":  # demo models are the build_demo stage's output
            return False
        fix = "run `fusecli pull-models`" if entry.origin == "hub" else "copy it back, or re-pin"
        if entry.gguf is not None:
            fix = f"convert it again with {repin_command(entry, role == 'pivot')}"
        raise FusecliError(f"{role}: model folder {entry.path} is missing: {fix}")
    if not (folder / "config.json").is_file():
        raise FusecliError(f"{role} {entry.path}: no config.json: download or copy the model again")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise FusecliError(f"{role} {entry.path}: config.json is not valid JSON: download or copy it again") from None
    archs = config.get("architectures") or [entry.architecture]
    if not any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise FusecliError(
            f"{role} {entry.path} is a {archs[0]}, not a causal LM (e.g. a masked LM cannot generate): "
            "pin a chat model (…ForCausalLM)"
        )
    require_chat_template(entry.chat_template_hash is not None, role, entry.path, gguf=entry.gguf is not None)
    context = next((config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int)), None)
    if extract.max_length is not None and context is not None and context < extract.max_length:
        raise FusecliError(
            f"{role} {entry.path} has a context of {context} tokens, below extract.max_length = "
            f"{extract.max_length}: lower extract.max_length or pin another model"
        )
    if extract.k is not None and extract.k > entry.vocab_size:
        raise FusecliError(
            f"extract.k = {extract.k} is larger than the vocabulary of {role} {entry.path} ({entry.vocab_size} "
            "tokens): lower extract.k (the release uses 10)"
        )
    check_weights(folder)
    return True


def require_chat_template(has_template: bool, role: str, where: str, gguf: bool = False) -> None:
    """Every model reads the dialogues in its own chat template (docs/architecture.md, "Rendering"), so
    `check`, `add-source` and `set-pivot` refuse a model without one, with this one line."""
    if has_template:
        return
    if gguf:
        fix = "pass --chat-template FILE (a Jinja chat template) to add-source or set-pivot with the GGUF file"
    else:
        fix = "set tokenizer.chat_template in its tokenizer_config.json (or add chat_template.jinja), then re-pin it"
    raise FusecliError(f"{role} {where} has no chat template: {fix}")


def check_models(lock: str | Path, root: str | Path, extract: Limits, missing_ok: bool = False) -> list[str]:
    """Check the pivot and every source of models.lock; return the names of those on disk (all checked)."""
    pinned = read_lock(lock)
    root = Path(root)
    roles = [("pivot", pinned.pivot), *((f"source {slug}", e) for slug, e in pinned.sources.items())]
    return [entry.name for role, entry in roles if check_model(entry, root, role, extract, missing_ok)]


@dataclass(frozen=True)
class Limits:
    """What the models must accommodate: extract.max_length (context) and extract.k (vocabulary)."""

    max_length: int | None = None
    k: int | None = None

    @classmethod
    def of(cls, params: Path) -> Limits:
        section = read_yaml(params).get("extract")
        section = section if isinstance(section, dict) else {}
        ints = {k: v for k in ("max_length", "k") if isinstance(v := section.get(k), int) and not isinstance(v, bool)}
        return cls(**ints)


def check_hardware(params: str | Path) -> None:
    """Settings that need CUDA (a GPU profile), on a machine without it: one line, not torchrun's traceback."""
    import torch

    if torch.cuda.is_available():
        return
    data = read_yaml(params)
    fix = "run on a GPU machine, or restore the CPU settings (git checkout params.yaml)"
    for name, section in data.items():
        device = section.get("device") if isinstance(section, dict) else None
        if isinstance(device, str) and device.startswith("cuda"):
            raise FusecliError(f"{name}.device = {device!r} but this machine has no CUDA GPU: {fix}")
    fuse = data.get("fuse") if isinstance(data.get("fuse"), dict) else {}
    if fuse.get("zero_stage", 0):
        raise FusecliError(f"fuse.zero_stage = {fuse['zero_stage']} (DeepSpeed ZeRO) needs CUDA GPUs: {fix}")
    launch = data.get("launch") if isinstance(data.get("launch"), dict) else {}
    for key, cmd in launch.items():
        if isinstance(cmd, str) and ("nproc_per_node gpu" in cmd or "nproc-per-node gpu" in cmd):
            raise FusecliError(f"launch.{key} = {cmd!r} starts one process per GPU, and there is none: {fix}")


def check_dataset_files(params: Path, root: Path) -> list[str]:
    """Every local dataset file exists and is UTF-8 text or parquet; return them."""
    from fusecli.data.build import DEMO_DIALOGUES, DatasetParams, read_text
    from fusecli.data.deps import dataset_files

    section = read_yaml(params).get("dataset")
    if section is None:
        return []
    files = dataset_files(from_dict(DatasetParams, section, "dataset"))
    for name in files:
        path = root / name
        if name == DEMO_DIALOGUES and not path.is_file():  # the build_demo stage's output, not built yet
            continue
        if not path.is_file():
            raise FusecliError(f"dataset source {name} not found: fix `path` in params.yaml (workspace-relative)")
        if path.suffix != ".parquet":
            read_text(path)
    return files


def preflight(params: str | Path, lock: str | Path, models: bool = True) -> None:
    """What a stage runs first: the params.yaml sections present, then (`models`) every pinned model."""
    params = Path(params)
    check_params(params, require_all=False)
    check_hardware(params)
    if models and Path(lock).is_file():
        check_models(lock, Path.cwd(), Limits.of(params), missing_ok=True)

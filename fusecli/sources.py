"""Resolve a model reference (local folder, GGUF file, hub repo id or paper alias) into a pinned ModelEntry.

Two steps, so the CLI can refuse a duplicate slug before downloading 140 GB: `locate` is cheap and
only classifies the reference; `pin` downloads (hub) or converts (GGUF), checks the folder and hashes it.
Hub tokens come from the environment / `hf auth login` through huggingface_hub and are never stored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from fusecli import gguf, hashing
from fusecli.check import check_weights
from fusecli.dtypes import FLOATING
from fusecli.errors import FusecliError
from fusecli.io import atomic_dir
from fusecli.lock import DVC_PINNED, SLUG_RE, GgufPin, ModelEntry, validate_slug

DEMO_DIR = "demo/models"  # folders under it are the demo world's, built by the build_demo stage
HUB_DIR = "models"  # hub snapshots are downloaded, GGUF files converted, to <workspace>/models/<slug>


@dataclass(frozen=True)
class Alias:
    repo: str
    needs_remote_code: bool = False  # the repo ships model code: pinning it needs the user's --trust-remote-code


# The six chat models fused in the FuseChat paper (arXiv 2408.07990, Table 1).
ALIASES = {
    "OpenChat-3.5-7B": Alias("openchat/openchat_3.5"),
    "Starling-LM-7B-alpha": Alias("berkeley-nest/Starling-LM-7B-alpha"),
    "NH2-SOLAR-10.7B": Alias("NousResearch/Nous-Hermes-2-SOLAR-10.7B"),
    "InternLM2-Chat-20B": Alias("internlm/internlm2-chat-20b", needs_remote_code=True),
    "Mixtral-8x7B-Instruct": Alias("mistralai/Mixtral-8x7B-Instruct-v0.1"),
    "Qwen1.5-72B": Alias("Qwen/Qwen1.5-72B-Chat"),
    "Qwen1.5-Chat-72B": Alias("Qwen/Qwen1.5-72B-Chat"),
}
TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}")  # what Hugging Face user access tokens look like
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
TOKENIZER_MODELS = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class Located:
    """A classified reference: a local folder (`folder`), a GGUF file (`gguf`) or a hub repo (`repo`), and its slug."""

    ref: str
    slug: str
    folder: Path | None = None
    repo: str | None = None
    gguf: Path | None = None


@dataclass(frozen=True)
class Conversion:
    """What `add-source`/`set-pivot` give a GGUF's conversion: the dtype and a chat template file (or None)."""

    dtype: str | None = None
    chat_template: Path | None = None


def derive_slug(name: str) -> str:
    """Folder or repo name -> slug: lowercased, invalid characters -> '-' (Qwen1.5-72B-Chat -> qwen1-5-72b-chat)."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")
    if not SLUG_RE.fullmatch(slug):
        raise FusecliError(f"cannot derive a slug from {name!r}: pass --name SLUG")
    return slug


def _alias(ref: str) -> Alias | None:
    return {k.lower(): v for k, v in ALIASES.items()}.get(ref.lower())


def locate(ref: str, root: str | Path, name: str | None = None, revision: str | None = None,
           trust_remote_code: bool = False) -> Located:
    """Classify REF: an existing folder (relative to cwd, then to the workspace), then alias, then repo id.

    A folder wins over an alias of the same name: what is on disk is what the user pointed at.
    """
    root = Path(root)
    slug = validate_slug(name) if name is not None else None
    path = Path(ref).expanduser()
    for candidate in dict.fromkeys([path.absolute(), (root / path).absolute()]):
        if candidate.is_dir():
            if revision is not None:
                raise FusecliError(f"--revision applies to hub repos, but {ref} is a local folder: drop --revision")
            return Located(ref, slug or derive_slug(candidate.resolve().name), folder=candidate.resolve())
        if candidate.is_file() and gguf.is_gguf(candidate):
            if revision is not None:
                raise FusecliError(f"--revision applies to hub repos, but {ref} is a GGUF file: drop --revision")
            return Located(ref, slug or derive_slug(candidate.resolve().stem), gguf=candidate.resolve())
        if candidate.exists():
            raise FusecliError(
                f"{ref} is a file, not a model folder or a GGUF file: pass the folder that holds config.json"
            )
    alias = _alias(ref)
    if alias is not None:
        if alias.needs_remote_code and not trust_remote_code:
            raise FusecliError(
                f"{ref} ({alias.repo}) runs custom model code from the hub: pass --trust-remote-code if you trust it"
            )
        return Located(ref, slug or derive_slug(alias.repo.split("/")[1]), repo=alias.repo)
    if HUB_ID_RE.fullmatch(ref) and not ref.startswith("."):
        return Located(ref, slug or derive_slug(ref.split("/")[1]), repo=ref)
    if "/" in ref or ref.startswith((".", "~")):
        raise FusecliError(f"model folder {ref} does not exist: check the path (relative to the current directory)")
    raise FusecliError(
        f"{ref!r} is not a local folder, a hub repo id (owner/name) or a known alias: "
        f"valid aliases are {', '.join(ALIASES)}"
    )


def pin(located: Located, root: str | Path, revision: str | None = None, trust_remote_code: bool = False,
        allow_pickle: bool = False, conversion: Conversion = Conversion()) -> ModelEntry:
    """Download (hub) or convert (GGUF), check and hash the model; returns the entry to write into models.lock."""
    root = Path(root).resolve()
    if located.gguf is not None:
        return _pin_gguf(located.gguf, located.slug, root, conversion)
    if conversion != Conversion():
        option = "--dtype" if conversion.dtype is not None else "--chat-template"
        raise FusecliError(f"{option} applies to GGUF files, but {located.ref} is not one: drop {option}")
    if located.repo is not None:
        return _pin_hub(located.repo, located.slug, root, revision, trust_remote_code, allow_pickle)
    assert located.folder is not None
    return describe_folder(located.folder, located.slug, root, trust_remote_code=trust_remote_code,
                           allow_pickle=allow_pickle)


def _stored_path(folder: Path, root: Path) -> str:
    """Workspace-relative posix path inside the workspace (resolved, so never '..'), else absolute."""
    folder = folder.resolve()
    try:
        return folder.relative_to(root).as_posix()
    except ValueError:
        return folder.as_posix()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FusecliError(f"cannot read {path}: {_one_line(exc)}: fix or re-download the file") from None
    if not isinstance(data, dict):
        raise FusecliError(f"{path} does not hold a JSON object: fix or re-download the file")
    return data


def _one_line(exc: BaseException) -> str:
    """A library's error as one line, with hub tokens hidden (some errors echo request headers)."""
    text = _redact(" ".join(str(exc).split()))
    return text[:300] or type(exc).__name__


def _redact(text: str) -> str:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        token = os.environ.get(name, "")
        if len(token) >= 8:
            text = text.replace(token, "***")
    return TOKEN_RE.sub("hf_***", text)


def _check_weights(folder: Path, allow_pickle: bool) -> None:
    if hashing.safetensors_files(folder):
        check_weights(folder)  # every shard present and whole: a cut download is refused before pinning
        return
    if hashing.pickle_files(folder):
        if allow_pickle:
            return
        raise FusecliError(
            f"{folder} has only pickle weights ({hashing.pickle_files(folder)[0].name}), which can run code on load: "
            "convert them to safetensors or pass --allow-pickle"
        )
    raise FusecliError(f"{folder} has no safetensors weights: save it with save_pretrained(safe_serialization=True)")


def _needs_remote_code(folder: Path, config: dict[str, Any]) -> str | None:
    """Why the folder's config or tokenizer needs code from the folder itself, or None."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if "auto_map" in config and model_type not in CONFIG_MAPPING:
        return f"its config.json (model_type {model_type!r}) needs custom code"
    tok_path = folder / "tokenizer_config.json"
    tok = _read_json(tok_path) if tok_path.is_file() else {}
    tok_class = tok.get("tokenizer_class")
    if "auto_map" in tok and not (isinstance(tok_class, str) and hasattr(transformers, tok_class)):
        return f"its tokenizer ({tok_class}) needs custom code"
    return None


def _dtype(folder: Path, config: dict[str, Any]) -> str:
    """Config's dtype (transformers 5 `dtype`, 4.x `torch_dtype`), else the weights' most common float dtype."""
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for key in ("dtype", "torch_dtype"):
        for cfg in (config, text_config):
            if isinstance(cfg.get(key), str):
                return cfg[key].removeprefix("torch.")
    counts: Counter[str] = Counter()
    for path in hashing.safetensors_files(folder):
        if path.name.endswith(".safetensors"):
            with open(path, "rb") as f:  # safetensors header: u64 length, then JSON
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            counts.update(v["dtype"] for k, v in header.items() if k != "__metadata__" and v["dtype"] in FLOATING)
            break
    if not counts:
        raise FusecliError(f"{folder}/config.json has no dtype and the weights do not tell: add \"dtype\" to it")
    return FLOATING[counts.most_common(1)[0][0]]


def describe_folder(folder: Path, slug: str, root: Path, origin: str | None = None, repo: str | None = None,
                    revision: str | None = None, trust_remote_code: bool = False,
                    allow_pickle: bool = False) -> ModelEntry:
    """Check a Hugging Face model folder and read what models.lock pins about it."""
    root = Path(root).resolve()
    folder = Path(folder).resolve()
    if not (folder / "config.json").is_file():
        raise FusecliError(f"{folder} has no config.json: pass a Hugging Face model folder (save_pretrained output)")
    _check_weights(folder, allow_pickle)
    if not any((folder / f).is_file() for f in TOKENIZER_MODELS):
        raise FusecliError(f"{folder} has no tokenizer ({', '.join(TOKENIZER_MODELS)}): save it beside the model")
    raw = _read_json(folder / "config.json")
    why = _needs_remote_code(folder, raw)
    if why and not trust_remote_code:
        raise FusecliError(f"{folder}: {why}: pass --trust-remote-code if you trust the code in that folder")

    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types; all mean "this folder does not load"
        raise FusecliError(f"{folder} does not load with transformers: {_one_line(exc)}: fix the folder") from None
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        raise FusecliError(f"{folder}/config.json has no architectures: add \"architectures\": [\"LlamaForCausalLM\"]")
    vocab_size = getattr(config, "vocab_size", None) or getattr(config.get_text_config(), "vocab_size", None)
    if not isinstance(vocab_size, int):
        raise FusecliError(f"{folder}/config.json has no vocab_size: add it")
    path = _stored_path(folder, root)
    if origin is None:
        origin = "demo" if path.startswith(DEMO_DIR + "/") else "local"
    content = DVC_PINNED if origin == "demo" else hashing.content_hash(folder, root / hashing.CACHE_FILE)
    return ModelEntry(
        name=slug, origin=origin, path=path, repo=repo, revision=revision, content_hash=content,
        architecture=architectures[0], vocab_size=vocab_size, dtype=_dtype(folder, raw),
        chat_template_hash=hashing.chat_template_hash(folder), trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )


def hub_error(repo: str, revision: str | None, exc: Exception) -> FusecliError:
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return FusecliError(f"{repo} is gated: accept its licence on the hub, then `hf auth login` or set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        return FusecliError(
            f"{repo} is neither a local folder nor a hub repo you can access: check the path or repo id "
            "(private repos need `hf auth login` or HF_TOKEN)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return FusecliError(f"{repo} has no revision {revision!r}: pass an existing branch, tag or commit")
    if isinstance(exc, OfflineModeIsEnabled):
        return FusecliError(f"cannot reach the hub for {repo}: HF_HUB_OFFLINE is set: unset it to download")
    return FusecliError(f"hub request for {repo} failed: {_one_line(exc)}: check the network and retry")


def hub_patterns(files: list[str], trust_remote_code: bool, allow_pickle: bool) -> list[str]:
    patterns = ["*.safetensors", "*.json", *hashing.TOKENIZER_FILES]
    if not any(f.endswith(".safetensors") for f in files):
        patterns += ["*.bin", "*.bin.index.json"] if allow_pickle else []
    if trust_remote_code:
        patterns.append("*.py")
    return patterns


def _pin_hub(repo: str, slug: str, root: Path, revision: str | None, trust_remote_code: bool,
             allow_pickle: bool) -> ModelEntry:
    """Resolve the revision to a commit sha, download that snapshot to models/<slug>, pin it as local files."""
    from fnmatch import fnmatch

    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo, revision=revision)
    except Exception as exc:  # network, auth, missing repo: each becomes one actionable line
        raise hub_error(repo, revision, exc) from None
    files = [s.rfilename for s in (info.siblings or [])]
    top = [f for f in files if "/" not in f]
    if not any(f.endswith(".safetensors") for f in top):
        if not (allow_pickle and any(f.endswith(hashing.PICKLE_SUFFIXES) for f in top)):
            raise FusecliError(
                f"{repo}@{info.sha} has no safetensors weights: pick a revision with safetensors, "
                "or pass --allow-pickle for pickle weights (they can run code on load)"
            )
    patterns = hub_patterns(top, trust_remote_code, allow_pickle)
    local_dir = root / HUB_DIR / slug
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    # One download per folder at a time; a second add of the same slug waits, then fails on the duplicate.
    with FileLock(str(local_dir.parent / f".{slug}.download.lock")):
        try:
            snapshot_download(repo, revision=info.sha, local_dir=local_dir, allow_patterns=patterns)
        except Exception as exc:
            raise hub_error(repo, revision, exc) from None
        # Files left from an earlier snapshot in this folder would change what is hashed and loaded.
        wanted = {f for f in top if any(fnmatch(f, p) for p in patterns)}
        for stale in hashing.hashed_files(local_dir):
            if stale.name not in wanted:
                stale.unlink()
        return describe_folder(local_dir, slug, root, origin="hub", repo=repo, revision=info.sha,
                               trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


def read_template(path: Path) -> str:
    """The text of a --chat-template file."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FusecliError(f"cannot read the chat template {path}: {_one_line(exc)}: pass a UTF-8 Jinja file") from None


def _pin_gguf(path: Path, slug: str, root: Path, conversion: Conversion) -> ModelEntry:
    """Convert the GGUF into models/<slug> (replacing a folder there only once the new one is whole) and pin both."""
    dtype = gguf.check_dtype(conversion.dtype or gguf.DEFAULT_DTYPE)
    template = read_template(conversion.chat_template) if conversion.chat_template is not None else None
    digest = hashing.file_hash(path, root / hashing.CACHE_FILE)
    out = root / HUB_DIR / slug
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{slug}.download.lock")), atomic_dir(out) as tmp:
        gguf.convert(path, tmp, dtype, template)
    entry = describe_folder(out, slug, root, origin="gguf")
    given = conversion.chat_template
    pinned = GgufPin(file=_stored_path(path, root), sha256=digest,
                     chat_template=_stored_path(given, root) if given is not None else None)
    return dataclasses.replace(entry, gguf=pinned)

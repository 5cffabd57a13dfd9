"""Bad inputs, one case each: every entry point (the `fusecli` CLI, the `stages/*.py` mains) must answer with
one `error: <problem>: <fix>` line and exit status 1, leaving models.lock byte-identical and the workspace as it
was (no partial output folder, no temp file). A few inputs are not errors but are reported (NaN logits, pickle
weights with --allow-pickle): those cases check the warning and what was kept.

Two concurrent `fusecli add-source` runs are tested in tests/test_cli.py
(test_concurrent_add_source_processes_both_land); bad fields of models.lock one by one in tests/test_lock.py.

The workspace (two tiny models pinned by the CLI, a 12-row dataset, both extract stores and the align store,
made by the stage mains themselves) is built once per module; each test works on a copy.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import runpy
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import fusecli.io
from fusecli import hashing, store
from fusecli.cli import app
from fusecli.errors import FusecliError
from fusecli.extract import run as extract_run
from fusecli.lock import dump_lock, read_lock
from fusecli.store import iter_records, read_manifest
from tests.tiny import write_dataset, write_model

STAGES = Path(__file__).resolve().parents[1] / "stages"
REPO_PARAMS = yaml.safe_load((STAGES.parent / "params.yaml").read_text())
PARAMS = {
    "dataset": {"sources": [{"path": "demo"}], "eval": 0.1},
    "extract": {"k": 4, "max_length": 128, "batch_tokens": 512, "shard_size": 4, "device": "cpu", "dtype": "float32",
                "compile": False},
    "align": {"dist_map": "prefix", "within_token": "condition", "method": "mined", "vocab_map": "ms", "k": 4,
              "workers": 1},
    "fuse": {"lam": 0.7, "epochs": 1.0, "global_batch_size": 4, "micro_batch_size": 4, "device": "cpu",
             "dtype": "float32", "gradient_checkpointing": False},
    "merge": {"method": "linear", "methods": ["linear", "ties"], "device": "cpu", "max_shard_size": "5GB",
              "linear": {"weight": None, "normalize": True},
              "ties": {"weight": 0.2, "density": 0.6, "normalize": True}},
    "evaluate": {"batch_size": 4, "max_new_tokens": 4, "max_length": 128, "device": "cpu", "dtype": "float32",
                 "backend": "native", "lm_eval": REPO_PARAMS["evaluate"]["lm_eval"],
                 "judge": REPO_PARAMS["evaluate"]["judge"]},
}
EXTRACT = ["extract", "--model", "llama", "--data", "data/train.parquet", "--out", "new/extract"]
ALIGN = ["align", "--source", "llama", "--pivot-extract", "extract/pivot", "--source-extract", "extract/sources/llama",
         "--out", "new/align"]
FUSE = ["fuse", "--data", "data/train.parquet", "--pivot-extract", "extract/pivot", "--align", "align/llama",
        "--out", "new/fused", "--live-dir", "new/logs"]
MERGE = ["merge", "--fused-dir", "fused", "--base", "local/qwen", "--method", "linear", "--out", "new/merged"]
MERGE_TIES = [a if a != "linear" else "ties" for a in MERGE]
EVALUATE = ["evaluate", "--data", "data/train.parquet", "--fused-dir", "fused", "--baseline", "baseline/sft",
            "--merged-dir", "merged", "--out", "new/eval", "--cache-dir", ""]
NOT_STATE = (".fusecli", "__pycache__")  # the hash cache and bytecode: not workspace state


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def run_stage(args: list[str]) -> int:
    """`python stages/<name>.py --params params.yaml --lock models.lock ARGS` in this process (cwd = workspace);
    returns the exit status."""
    name, *rest = args
    common = ["--params", "params.yaml"] + ([] if name == "build_dataset" else ["--lock", "models.lock"])
    saved, sys.argv = sys.argv, [f"stages/{name}.py", *common, *rest]
    try:
        runpy.run_path(str(STAGES / f"{name}.py"), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def run_cli(args: list[str]) -> Run:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    return Run(result.exit_code, result.stdout, result.stderr)


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file of the workspace: equal before and after = nothing lost, nothing half-written."""
    files = (p for p in root.rglob("*") if p.is_file() and not set(p.relative_to(root).parts) & set(NOT_STATE))
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
            if not p.name.endswith(".lock.lock")}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned workspace with its extract and align stores, made once by the CLI and the stage mains."""
    root = tmp_path_factory.mktemp("bad-inputs") / "ws"
    write_model(root / "local/qwen", "qwen2", 300)
    write_model(root / "local/llama", "llama", 280, seed=1)
    shutil.copytree(root / "local/qwen", root / "fused/llama")  # stands in for the pair-fused model
    (root / "data").mkdir()
    write_dataset(root / "data/train.parquet", 12)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for args in (["set-pivot", "local/qwen"], ["add-source", "local/llama"]):
            assert run_cli(args).code == 0
        for args in (["extract", "--model", "pivot", "--data", "data/train.parquet", "--out", "extract/pivot"],
                     [*EXTRACT[:-1], "extract/sources/llama"], [*ALIGN[:-1], "align/llama"]):
            assert run_stage(args) == 0, args
    return root


@pytest.fixture
def site(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the built workspace, as the cwd."""
    root = tmp_path / "ws"
    shutil.copytree(built, root)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def stage(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], Run]:
    def run(args: list[str]) -> Run:
        capsys.readouterr()
        code = run_stage(args)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def assert_refused(result: Run, words: tuple[str, ...], root: Path, before: dict[str, str]) -> None:
    """Exit 1, exactly one `error:` line holding every key word (problem and fix), no traceback, nothing changed."""
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert result.code == 1, result.err
    assert len(errors) == 1 and "Traceback" not in result.err, result.err
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert snapshot(root) == before


def edit_yaml(path: str, edit: Callable[[dict], object]) -> None:
    data = yaml.safe_load(Path(path).read_text())
    edit(data)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def write_text(path: str, text: str) -> Callable[[Path], None]:
    return lambda root: Path(path).write_text(text)


# --- models.lock: malformed, partial, missing pieces; read by the CLI and by each stage entry point ----------

def _truncate(root: Path) -> None:
    text = (root / "models.lock").read_bytes()
    (root / "models.lock").write_bytes(text[: len(text) // 2])


LOCK_CASES = {
    "truncated-by-half": (_truncate, ["list"], ("models.lock", "fix the file or re-pin with fusecli set-pivot")),
    "empty-file": (write_text("models.lock", ""), ["status"],
                   ("models.lock: must hold a mapping with version, pivot and sources", "re-pin")),
    "no-pivot": (lambda r: edit_yaml("models.lock", lambda d: d.pop("pivot")), EXTRACT,
                 ("models.lock: pivot is missing", "re-pin with fusecli set-pivot")),
    "no-sources-section": (lambda r: edit_yaml("models.lock", lambda d: d.pop("sources")), ALIGN,
                           ("has no source 'llama' (pinned: none)", "run fusecli add-source")),
    "wrong-type-allow-pickle": (lambda r: edit_yaml("models.lock", lambda d: d["pivot"].update(allow_pickle="no")),
                                FUSE, ("pivot.allow_pickle must be true or false, got 'no'", "re-pin")),
    "unknown-top-level-key": (lambda r: edit_yaml("models.lock", lambda d: d.update(notes="x")), EVALUATE,
                              ("unknown top-level key 'notes'", "valid keys: version, pivot, sources")),
    "no-version": (lambda r: edit_yaml("models.lock", lambda d: d.pop("version")), ["add-source", "local/qwen",
                   "--name", "q2"], ("version must be 1, got None", "re-pin")),
    "file-missing": (lambda r: (r / "models.lock").unlink(), MERGE,
                     ("models.lock not found", "create it with fusecli set-pivot")),
}


@pytest.mark.parametrize("case", LOCK_CASES)
def test_bad_lock(site: Path, stage: Callable, case: str) -> None:
    breaks, args, words = LOCK_CASES[case]
    breaks(site)
    before = snapshot(site)
    result = run_cli(args) if args[0] in ("list", "status", "add-source") else stage(args)
    assert_refused(result, words, site, before)


# --- params.yaml: wrong types, unknown keys, missing sections, ranges, unknown methods ------------------------

def _params(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    return lambda root: edit_yaml("params.yaml", edit)


PARAMS_CASES = {
    "wrong-type": (_params(lambda d: d["extract"].update(k="ten")), EXTRACT,
                   ("extract.k = 'ten' must be of type int",)),
    "unknown-key": (_params(lambda d: d["fuse"].update(lamda=0.5)), FUSE,
                    ("fuse: unknown key 'lamda'", "valid keys:", "lam,")),
    "missing-section": (_params(lambda d: d.pop("align")), ALIGN, ("has no 'align' section", "add it")),
    "file-missing": (lambda r: (r / "params.yaml").unlink(), MERGE, ("params.yaml not found", "pass --params")),
    "invalid-yaml": (write_text("params.yaml", "extract:\n  k: [4\n"), EVALUATE,
                     ("params.yaml is not valid YAML (line", "fix the syntax")),
    "top-level-list": (write_text("params.yaml", "- extract\n"), EXTRACT, ("must hold a mapping at the top level",)),
    "section-not-mapping": (_params(lambda d: d.update(fuse=5)), FUSE, ("fuse must be a mapping of parameters",)),
    "nested-wrong-type": (_params(lambda d: d["evaluate"].update(lm_eval={"tasks": "gsm8k"})), EVALUATE,
                          ("evaluate.lm_eval.tasks must be a list",)),
    "k-out-of-range": (_params(lambda d: d["extract"].update(k=0)), EXTRACT, ("extract.k = 0", "must be >= 1")),
    "lambda-negative": (_params(lambda d: d["fuse"].update(lam=-0.1)), FUSE, ("fuse.lam = -0.1", "within [0, 1]")),
    "lambda-nan": (_params(lambda d: d["fuse"].update(lam=float("nan"))), FUSE, ("fuse.lam = nan", "within [0, 1]")),
    "lambda-not-a-number": (_params(lambda d: d["fuse"].update(lam="high")), FUSE,
                            ("fuse.lam = 'high'", "must be of type float")),
    "density-negative": (_params(lambda d: d["merge"]["ties"].update(density=-0.5)), MERGE_TIES,
                         ("merge.ties.density = -0.5", "must be in (0, 1]")),
    "density-not-a-number": (_params(lambda d: d["merge"]["ties"].update(density="60%")), MERGE_TIES,
                             ("merge.ties.density = '60%'", "must be of type float")),
    "unknown-merge-method": (_params(lambda d: d["merge"].update(method="slerp", methods=["slerp"])), MERGE,
                             ("merge method 'slerp' is unknown", "use one of", "linear")),
    "unknown-align-method": (_params(lambda d: d["align"].update(method="sinkhorn")), ALIGN,
                             ("align.method = 'sinkhorn'", "is not one of ['mined', 'offsets']")),
    "unknown-align-dist-map": (_params(lambda d: d["align"].update(dist_map="nearest")), ALIGN,
                               ("align.dist_map = 'nearest'", "is not one of ['prefix', 'vocab_map']")),
    "unknown-fusion-function": (_params(lambda d: d["fuse"].update(fusion_fn="maxce")), FUSE,
                                ("fuse.fusion_fn = 'maxce' is unknown", "use one of ['avgce', 'mince']")),
}


@pytest.mark.parametrize("case", PARAMS_CASES)
def test_bad_params(site: Path, stage: Callable, case: str) -> None:
    breaks, args, words = PARAMS_CASES[case]
    breaks(site)
    before = snapshot(site)
    assert_refused(stage(args), words, site, before)


def test_unknown_merge_method_on_the_command_line(site: Path) -> None:
    before = snapshot(site)
    result = run_cli(["merge", "--method", "frankenmerge", "--base", "local/qwen", "--model", "fused/llama",
                      "--out", "new/merged"])
    assert_refused(result, ("unknown merge method 'frankenmerge'", "choose one of", "sce"), site, before)


# --- model folders: pickle weights, remote code, chat template ----------------------------------------------

def _pickled(root: Path) -> None:
    folder = root / "local/pickled"
    shutil.copytree(root / "local/llama", folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def _config_auto_map(root: Path) -> None:
    shutil.copytree(root / "local/qwen", root / "local/custom")
    config = json.loads((root / "local/custom/config.json").read_text())
    config.update(model_type="tinycustom", auto_map={"AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"})
    (root / "local/custom/config.json").write_text(json.dumps(config))


def _tokenizer_auto_map(root: Path) -> None:
    shutil.copytree(root / "local/llama", root / "local/custom")
    path = root / "local/custom/tokenizer_config.json"
    config = json.loads(path.read_text())
    auto_map = {"AutoTokenizer": ["tokenization_tiny.TinyTokenizer", None]}
    config.update(tokenizer_class="TinyTokenizer", auto_map=auto_map)
    path.write_text(json.dumps(config))


def _no_template(root: Path) -> Path:
    folder = root / "local/plain"
    shutil.copytree(root / "local/qwen", folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "chat_template"}))
    return folder


MODEL_CASES = {
    "pickle-only-without-allow-pickle": (_pickled, ["add-source", "local/pickled"],
                                         ("only pickle weights (pytorch_model.bin)",
                                          "convert them to safetensors or pass --allow-pickle")),
    "config-auto-map-without-trust": (_config_auto_map, ["set-pivot", "local/custom"],
                                      ("model_type 'tinycustom') needs custom code", "pass --trust-remote-code")),
    "tokenizer-auto-map-without-trust": (_tokenizer_auto_map, ["add-source", "local/custom"],
                                         ("its tokenizer (TinyTokenizer) needs custom code", "--trust-remote-code")),
    "pivot-without-chat-template": (_no_template, ["set-pivot", "local/plain"],
                                    ("pivot local/plain has no chat template",
                                     "set tokenizer.chat_template in its tokenizer_config.json")),
    "source-without-chat-template": (_no_template, ["add-source", "local/plain"],
                                     ("source plain local/plain has no chat template",
                                      "set tokenizer.chat_template in its tokenizer_config.json")),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_bad_model_folder(site: Path, case: str) -> None:
    prepare, args, words = MODEL_CASES[case]
    prepare(site)
    before = snapshot(site)
    assert_refused(run_cli(args), words, site, before)


def test_add_source_refuses_a_source_without_template_with_the_line_check_gives(site: Path) -> None:
    """Issue 25, row 9: the refusal comes at add-source, and it is `fusecli check`'s line, word for word."""
    folder = _no_template(site)
    refused = run_cli(["add-source", "local/plain"])
    assert refused.code == 1 and "plain" not in read_lock("models.lock").sources
    lock = read_lock("models.lock")  # the entry add-source would have written, pinned by hand
    entry = dataclasses.replace(lock.sources["llama"], name="plain", path="local/plain", chat_template_hash=None,
                                content_hash=hashing.content_hash(folder))
    Path("models.lock").write_text(dump_lock(lock.with_source(entry)))
    shutil.copy(STAGES.parent / "params.yaml", "params.yaml")  # every section, as `check` wants
    checked = run_cli(["check"])
    assert checked.code == 1
    assert refused.err.strip() == checked.err.strip()
    assert refused.err.startswith("error: source plain local/plain has no chat template: "), refused.err


def test_allow_pickle_is_per_model_and_warns(site: Path) -> None:
    _pickled(site)
    result = run_cli(["add-source", "local/pickled", "--allow-pickle"])
    assert result.code == 0, result.err
    assert "warning: sources.pickled loads pickle weights (pytorch_model.bin), which can run code" in result.err
    assert "convert them to safetensors" in result.err
    lock = read_lock("models.lock")
    assert lock.sources["pickled"].allow_pickle and not lock.sources["llama"].allow_pickle
    assert not lock.pivot.allow_pickle
    assert "warning" not in run_cli(["add-source", "local/llama", "--name", "safe"]).err


def test_pinned_pivot_without_chat_template_stops_extract(site: Path, stage: Callable) -> None:
    """A lock pinned before set-pivot checked templates: extract names the fix before writing anything."""
    folder = _no_template(site)
    lock = read_lock("models.lock")
    pivot = dataclasses.replace(lock.pivot, path="local/plain", chat_template_hash=None,
                                content_hash=hashing.content_hash(folder))
    Path("models.lock").write_text(dump_lock(lock.with_pivot(pivot)))
    before = snapshot(site)
    words = ("has no chat template", "set tokenizer.chat_template in its tokenizer_config.json")
    assert_refused(stage(EXTRACT), words, site, before)


# --- weights changed on disk after pinning: every stage entry point stops before any work ------------------

def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


SOURCE_REPIN = "re-pin with fusecli add-source local/llama --name llama --replace"
PIVOT_REPIN = "re-pin with fusecli set-pivot local/qwen --name qwen"
CHANGED_CASES = {
    "extract": (EXTRACT, "local/llama/model.safetensors", "sources.llama", SOURCE_REPIN),
    "align-tokenizer": (ALIGN, "local/llama/tokenizer.json", "sources.llama", SOURCE_REPIN),
    "fuse": (FUSE, "local/qwen/model.safetensors", "pivot", PIVOT_REPIN),
    "merge": (MERGE, "local/qwen/model.safetensors", "pivot", PIVOT_REPIN),
    "evaluate": (EVALUATE, "local/llama/model.safetensors", "sources.llama", SOURCE_REPIN),
}


@pytest.mark.parametrize("case", CHANGED_CASES)
def test_changed_after_pinning(site: Path, stage: Callable, case: str) -> None:
    args, changed, where, repin = CHANGED_CASES[case]
    _flip_last_byte(site / changed)
    before = snapshot(site)
    words = (f"{where}: weights changed on disk after pinning", repin, "or restore the files")
    assert_refused(stage(args), words, site, before)


def test_pinned_folder_deleted(site: Path, stage: Callable) -> None:
    shutil.rmtree(site / "local/llama")
    before = snapshot(site)
    words = ("sources.llama: model folder local/llama is missing", "restore the files or re-pin")
    assert_refused(stage(EXTRACT), words, site, before)


# --- datasets: empty, wrong shape, rows without an assistant turn -----------------------------------------

def _rows(n: int, messages: dict[int, str] | None = None, drop: str | None = None) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        df = pl.read_parquet(root / "data/train.parquet").head(n)
        for i, text in (messages or {}).items():
            df = df.with_columns(pl.when(pl.int_range(pl.len()) == i).then(pl.lit(text))
                                 .otherwise(pl.col("messages")).alias("messages"))
        (df.drop(drop) if drop else df).write_parquet(root / "data/train.parquet")

    return write


def _empty_source(root: Path) -> None:
    (root / "empty.jsonl").write_text("")
    edit_yaml("params.yaml", lambda d: d.update(dataset={"sources": [{"path": "empty.jsonl"}], "eval": 0.1}))


USER_ONLY = json.dumps([{"role": "user", "content": "What is the capital of Peru?"}])
DATA_CASES = {
    "empty-dataset": (_rows(0), EXTRACT, ("holds no dialogues", "check the dataset section of params.yaml")),
    "no-messages-column": (_rows(12, drop="messages"), EXTRACT,
                           ("has no `messages` column", "build it with stages/build_dataset.py")),
    "messages-not-json": (_rows(12, {2: "{not json"}), EXTRACT,
                          ("row 'r2': messages is not JSON", "rebuild it with build_dataset")),
    "row-without-assistant-turn": (_rows(12, {5: USER_ONLY}), EXTRACT,
                                   ("dataset row 'r5' has no assistant turn", "give it an assistant reply or drop it")),
    "empty-source-file": (_empty_source, ["build_dataset", "--out", "new/data"],
                          ("dataset has no training rows", "check sources, count and train_domains")),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_dataset(site: Path, stage: Callable, case: str) -> None:
    breaks, args, words = DATA_CASES[case]
    breaks(site)
    before = snapshot(site)
    assert_refused(stage(args), words, site, before)


# --- merge: models that do not share the base's architecture or vocabulary -------------------------------

def _fused_llama_architecture(root: Path) -> None:
    shutil.rmtree(root / "fused/llama")
    shutil.copytree(root / "local/llama", root / "fused/llama")


def _fused_smaller_vocabulary(root: Path) -> None:
    shutil.rmtree(root / "fused/llama")
    write_model(root / "fused/llama", "qwen2", 150)


MERGE_CASES = {
    "architecture-mismatch": (_fused_llama_architecture,
                              ("is LlamaForCausalLM (llama) but the base is Qwen2ForCausalLM (qwen2)",
                               "every merged model must share the base's architecture")),
    "vocabulary-mismatch": (_fused_smaller_vocabulary,
                            ("of model llama has shape", "merge only models fine-tuned from this base")),
}


@pytest.mark.parametrize("case", MERGE_CASES)
def test_merge_mismatch(site: Path, stage: Callable, case: str) -> None:
    breaks, words = MERGE_CASES[case]
    breaks(site)
    before = snapshot(site)
    assert_refused(stage(MERGE), words, site, before)


# --- fuse: aligned store missing, incomplete, or missing a shard ------------------------------------------

def _incomplete(root: Path) -> None:
    path = root / "align/llama/manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "complete": False}))


FUSE_CASES = {
    "align-folder-missing": (lambda r: shutil.rmtree(r / "align/llama"),
                             ("align/llama holds no manifest.json", "run the stage that writes it (dvc repro)")),
    "align-shard-missing": (lambda r: (r / "align/llama/shard-00000.safetensors").unlink(),
                            ("shard-00000.safetensors is missing", "rerun the stage that wrote align/llama")),
    "align-store-incomplete": (_incomplete, ("align/llama is incomplete (an interrupted run)", "rerun `dvc repro`")),
}


@pytest.mark.parametrize("case", FUSE_CASES)
def test_fuse_without_aligned_shards(site: Path, stage: Callable, case: str) -> None:
    breaks, words = FUSE_CASES[case]
    breaks(site)
    before = snapshot(site)
    assert_refused(stage(FUSE), words, site, before)


# --- extraction: NaN logits, disk full -------------------------------------------------------------------

def test_nan_logits_are_reported_by_row_id_and_excluded(site: Path, stage: Callable,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    poisoned_rows, batch_rows = {3, 7}, []
    real_forward, real_batch = extract_run.forward_rows, extract_run._run_batch

    def forward(*args: object, **kwargs: object) -> tuple:
        ids, logp, ce, counts = real_forward(*args, **kwargs)
        start = 0
        for b, n in enumerate(counts):
            if b in batch_rows:
                logp[start : start + n] = float("nan")
            start += n
        return ids, logp, ce, counts

    def batch(model: object, items: list, index: list[int], *args: object) -> tuple:
        batch_rows[:] = [b for b, i in enumerate(index) if i in poisoned_rows]
        return real_batch(model, items, index, *args)

    monkeypatch.setattr(extract_run, "forward_rows", forward)
    monkeypatch.setattr(extract_run, "_run_batch", batch)
    result = stage(EXTRACT)
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning: ")]
    assert warnings == ["warning: extract llama: 2 row(s) with NaN/inf logits excluded (ids r3, r7): "
                        "check the model's weights, or set extract.dtype: float32"]
    kept = [int(r["seq_index"]) for r in iter_records("new/extract")]
    assert kept == [i for i in range(12) if i not in poisoned_rows]
    assert read_manifest("new/extract")["summary"]["nonfinite_rows"] == [3, 7]


class _FullDisk:
    """`os` as fusecli.io sees it, except that a file opened for writing takes half the bytes, then ENOSPC."""

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def fdopen(self, fd: int, mode: str = "r") -> object:
        real = os.fdopen(fd, mode)

        class Half:
            def __enter__(self) -> Half:
                return self

            def __exit__(self, *exc: object) -> None:
                real.close()

            def write(self, data: bytes) -> int:
                real.write(data[: len(data) // 2])
                real.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return Half()


def test_disk_full_during_a_shard_write(site: Path, stage: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = store.atomic_write_bytes

    def write(path: str | os.PathLike[str], data: bytes) -> None:
        if Path(path).name != "shard-00001.safetensors":
            return real_write(path, data)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fusecli.io, "os", _FullDisk())
            return real_write(path, data)

    monkeypatch.setattr(store, "atomic_write_bytes", write)
    result = stage(EXTRACT)
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert result.code == 1 and len(errors) == 1 and "Traceback" not in result.err, result.err
    assert errors[0].startswith("error: no space left on device (")
    assert "new/extract/shard-00001.safetensors): free disk space, then rerun" in errors[0]
    assert sorted(p.name for p in Path("new/extract").iterdir()) == ["manifest.json", "shard-00000.safetensors"]
    manifest = json.loads(Path("new/extract/manifest.json").read_text())
    assert not manifest["complete"] and [s["file"] for s in manifest["shards"]] == ["shard-00000.safetensors"]
    with pytest.raises(FusecliError, match="is incomplete"):
        read_manifest("new/extract")  # readers never take the half-written store as complete

    monkeypatch.setattr(store, "atomic_write_bytes", real_write)
    assert stage(EXTRACT).code == 0  # the rerun resumes after the last complete shard
    done = sorted(p.name for p in Path("extract/sources/llama").glob("shard-*"))
    assert done == sorted(p.name for p in Path("new/extract").glob("shard-*"))
    for name in done:
        assert Path("new/extract", name).read_bytes() == Path("extract/sources/llama", name).read_bytes()


# --- preflight: every stage checks all of params.yaml and every pinned model before any work ------------------

def _config(path: str, **changes: object) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        config = json.loads((root / path).read_text())
        config.update(changes)
        (root / path).write_text(json.dumps(config))

    return edit


def _cut(path: str, keep: Callable[[int], int]) -> Callable[[Path], None]:
    def cut(root: Path) -> None:
        data = (root / path).read_bytes()
        (root / path).write_bytes(data[: keep(len(data))])

    return cut


def _bad_header(root: Path) -> None:
    path = root / "local/llama/model.safetensors"
    body = b"{not json}"
    path.write_bytes(len(body).to_bytes(8, "little") + body + path.read_bytes()[8 + len(body):])


def _index_with_missing_shard(root: Path) -> None:
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (root / "local/llama/model.safetensors.index.json").write_text(json.dumps(index))


def _source_without_template(root: Path) -> None:
    lock = read_lock("models.lock")
    source = dataclasses.replace(lock.sources["llama"], chat_template_hash=None)
    Path("models.lock").write_text(dump_lock(lock.with_source(source)))


def _section(name: str, **values: object) -> Callable[[Path], None]:
    return _params(lambda d: d.setdefault(name, {}).update(values))


def _needs_no_gpu(case: str) -> None:
    if torch.cuda.is_available():
        pytest.skip(f"{case}: checks the refusal on a machine without CUDA")


PREFLIGHT_CASES = {
    "masked-lm": (_config("local/llama/config.json", architectures=["BertForMaskedLM"]), EXTRACT,
                  ("is a BertForMaskedLM, not a causal LM", "pin a chat model")),
    "context-shorter-than-max-length": (_section("extract", max_length=512, batch_tokens=1024), EXTRACT,
                                        ("has a context of 256 tokens, below extract.max_length = 512",
                                         "lower extract.max_length")),
    "k-larger-than-vocabulary": (_section("extract", k=5000), EXTRACT,
                                 ("extract.k = 5000 is larger than the vocabulary of pivot", "lower extract.k")),
    "truncated-weights": (_cut("local/llama/model.safetensors", lambda n: n // 2), EXTRACT,
                          ("model.safetensors is", "the file is truncated; download or copy it again")),
    "weights-cut-inside-the-header": (_cut("local/llama/model.safetensors", lambda n: 20), EXTRACT,
                                      ("is truncated or not safetensors", "download or copy it again")),
    "corrupt-safetensors-header": (_bad_header, EXTRACT, ("corrupt safetensors header", "download or copy it again")),
    "index-names-a-missing-shard": (_index_with_missing_shard, EXTRACT,
                                    ("lists missing shard model-00002-of-00002.safetensors", "finish the download")),
    "config-not-json": (write_text("local/llama/config.json", "{"), EXTRACT,
                        ("config.json is not valid JSON", "download or copy it again")),
    "source-without-chat-template-stops-fuse": (_source_without_template, FUSE,
                                                ("source llama local/llama has no chat template",
                                                 "set tokenizer.chat_template")),
    "other-section-lambda-stops-extract": (_section("fuse", lam="high"), EXTRACT,
                                           ("fuse.lam = 'high'", "must be of type float")),
    "unknown-merge-method-stops-extract": (_section("merge", methods=["slerp"], method="slerp"), EXTRACT,
                                           ("merge method 'slerp' is unknown", "use one of")),
    "launch-not-a-mapping": (_params(lambda d: d.update(launch="python")), EXTRACT,
                             ("launch must map exactly `extract` and `fuse`",)),
    "launch-empty-command": (_params(lambda d: d.update(launch={"extract": "", "fuse": "python"})), FUSE,
                             ("launch.extract = ''", "must be a command")),
    "runtime-threads-zero": (_section("runtime", threads=0), FUSE, ("runtime.threads = 0 must be >= 1",)),
    "runtime-unknown-key": (_section("runtime", thread=2), EVALUATE, ("runtime: unknown key 'thread'",)),
    "runtime-threads-not-a-number": (_section("runtime", threads="all"), MERGE,
                                     ("runtime.threads = 'all' must be of type int",)),
    "demo-wrong-type": (_section("demo", steps="many"), EXTRACT, ("demo.steps = 'many' must be of type int",)),
    "dataset-unknown-long-rows": (_section("dataset", long_rows="chop"), FUSE,
                                  ("dataset.long_rows = 'chop' is not one of",)),
    "fuse-batch-not-a-multiple": (_section("fuse", global_batch_size=6), EXTRACT,
                                  ("fuse.global_batch_size must be a multiple of fuse.micro_batch_size",)),
    "align-k-zero-stops-evaluate": (_section("align", k=0), EVALUATE, ("align.k = 0 must be at least 1",)),
}


@pytest.mark.parametrize("case", PREFLIGHT_CASES)
def test_preflight_stops_a_stage_before_any_work(site: Path, stage: Callable, case: str) -> None:
    breaks, args, words = PREFLIGHT_CASES[case]
    breaks(site)
    before = snapshot(site)
    assert_refused(stage(args), words, site, before)


NO_GPU = "run on a GPU machine, or restore the CPU settings (git checkout params.yaml)"
GPU_CASES = {
    "extract-device-cuda": (_section("extract", device="cuda"), EXTRACT,
                            ("extract.device = 'cuda' but this machine has no CUDA GPU", NO_GPU)),
    "merge-device-cuda": (_section("merge", device="cuda"), MERGE, ("merge.device = 'cuda'", NO_GPU)),
    "fuse-zero-stage": (_section("fuse", zero_stage=2), FUSE, ("fuse.zero_stage = 2 (DeepSpeed ZeRO) needs CUDA",)),
    "launch-one-process-per-gpu": (_params(lambda d: d.update(launch={"extract": "torchrun --nproc_per_node gpu",
                                                                       "fuse": "python"})), EVALUATE,
                                   ("launch.extract = 'torchrun --nproc_per_node gpu' starts one process per GPU",)),
}


@pytest.mark.parametrize("case", GPU_CASES)
def test_gpu_profile_on_a_machine_without_cuda(site: Path, stage: Callable, case: str) -> None:
    _needs_no_gpu(case)
    breaks, args, words = GPU_CASES[case]
    breaks(site)
    before = snapshot(site)
    assert_refused(stage(args), words, site, before)


# --- fusecli check: the whole preflight, with every section required ----------------------------------------

REPO_PARAMS = yaml.safe_load((STAGES.parent / "params.yaml").read_text())


def _complete(root: Path) -> None:
    """The site's params.yaml with the sections it leaves out taken from the repository's."""
    edit_yaml("params.yaml", lambda d: d.update({k: v for k, v in REPO_PARAMS.items() if k not in d}))


def _then(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def run(root: Path) -> None:
        for step in steps:
            step(root)

    return run


def _latin1(root: Path) -> None:
    row = {"messages": [{"role": "user", "content": "Où est Besançon ?"},
                        {"role": "assistant", "content": "En France."}]}
    (root / "latin1.jsonl").write_bytes((json.dumps(row, ensure_ascii=False) + "\n").encode("latin-1"))
    edit_yaml("params.yaml", lambda d: d.update(dataset={"sources": [{"path": "latin1.jsonl"}], "eval": 0.1}))


CHECK_CASES = {
    "section-missing": (lambda r: None, ("params.yaml has no 'launch' section", "add it")),
    "unknown-section": (_then(_complete, _params(lambda d: d.update(extras={"a": 1}))),
                        ("params.yaml: unknown section 'extras'", "valid sections are")),
    "model-folder-missing": (_then(_complete, lambda r: shutil.rmtree(r / "local/llama")),
                             ("source llama: model folder local/llama is missing", "copy it back, or re-pin")),
    "masked-lm": (_then(_complete, _config("local/qwen/config.json", architectures=["RobertaForMaskedLM"])),
                  ("pivot local/qwen is a RobertaForMaskedLM, not a causal LM",)),
    "latin1-dataset": (_then(_complete, _latin1), ("latin1.jsonl is not UTF-8 (byte 0xf9 on line 1)", "iconv")),
    "dataset-file-missing": (_then(_complete, _params(lambda d: d.update(
        dataset={"sources": [{"path": "x.jsonl"}], "eval": 0.1}))),
                             ("dataset source x.jsonl not found", "fix `path` in params.yaml")),
    "gpu-launcher-without-gpu": (_then(_complete, _params(lambda d: d["launch"].update(
        fuse="torchrun --nproc_per_node gpu"))), ("launch.fuse = 'torchrun --nproc_per_node gpu' starts one process",)),
}


@pytest.mark.parametrize("case", CHECK_CASES)
def test_fusecli_check(site: Path, case: str) -> None:
    if case == "gpu-launcher-without-gpu":
        _needs_no_gpu(case)
    breaks, words = CHECK_CASES[case]
    breaks(site)
    before = snapshot(site)
    assert_refused(run_cli(["check"]), words, site, before)


def test_fusecli_check_passes_a_sound_workspace(site: Path) -> None:
    _complete(site)
    result = run_cli(["check"])
    assert result.code == 0, result.err
    assert "2 model(s) are causal LMs" in result.out and "ready" in result.out


def test_fusecli_check_warns_when_dataset_max_chars_cannot_fit_extract_max_length(site: Path) -> None:
    _complete(site)
    edit_yaml("params.yaml", lambda d: d["dataset"].update(max_chars=512))  # 4 x extract.max_length = 128: fits
    result = run_cli(["check"])
    assert result.code == 0 and "warning" not in result.out, result.out
    edit_yaml("params.yaml", lambda d: d["dataset"].update(max_chars=8000))
    result = run_cli(["check"])
    assert result.code == 0 and "ready" in result.out, result.err
    out = " ".join(result.out.split())  # the console wraps long lines
    assert out.count("warning: ") == 1
    assert ("warning: dataset.max_chars = 8000 cannot fit extract.max_length = 128: a row that long is about 2,000 "
            "tokens at ~4 characters per token (English; code and other scripts take more), so its replies would be "
            "cut without their end (extract counts them): lower dataset.max_chars to 512 or raise "
            "extract.max_length") in out


# --- dataset files: encodings, dependencies -----------------------------------------------------------------

def test_latin1_jsonl_is_one_line_not_a_traceback(site: Path, stage: Callable) -> None:
    _latin1(site)
    before = snapshot(site)
    assert_refused(stage(["build_dataset", "--out", "new/data"]),
                   ("latin1.jsonl is not UTF-8", "re-save it as UTF-8", "iconv -f latin1 -t utf-8"), site, before)


def test_utf8_with_a_byte_order_mark_is_read(site: Path, stage: Callable) -> None:
    rows = "".join(json.dumps({"messages": [{"role": "user", "content": f"Q{i}?"},
                                            {"role": "assistant", "content": f"A{i}"}]}) + "\n" for i in range(10))
    (site / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + rows.encode())
    edit_yaml("params.yaml", lambda d: d.update(dataset={"sources": [{"path": "bom.jsonl"}], "eval": 0.2}))
    result = stage(["build_dataset", "--out", "new/data"])
    assert result.code == 0, result.err
    assert pl.read_parquet("new/data/train.parquet").height + pl.read_parquet("new/data/eval.parquet").height == 10


def test_dataset_file_that_is_not_a_dvc_dependency(site: Path, stage: Callable) -> None:
    shutil.copy(STAGES.parent / "dvc.yaml", site / "dvc.yaml")
    (site / "mine.jsonl").write_text("")
    edit_yaml("params.yaml", lambda d: d.update(dataset={"sources": [{"path": "mine.jsonl"}], "eval": 0.1}))
    before = snapshot(site)
    assert_refused(stage(["build_dataset", "--out", "new/data"]),
                   ("'mine.jsonl' is not a dependency of build_dataset", "run `fusecli dataset-deps`"), site, before)


def test_add_source_refuses_truncated_weights(site: Path) -> None:
    shutil.copytree(site / "local/llama", site / "local/cut")
    _cut("local/cut/model.safetensors", lambda n: n - 100)(site)
    before = snapshot(site)
    assert_refused(run_cli(["add-source", "local/cut"]), ("is truncated", "download or copy it again"), site, before)


# --- fusecli profile: what it would write is loaded with the stages' loaders first --------------------------

PROFILE_CASES = {
    "lambda-not-a-number": ("fuse:\n  lam: high\n", ("would make params.yaml invalid", "fuse.lam = 'high'")),
    "unknown-merge-method": ("merge:\n  method: slerp\n  methods: [slerp]\n", ("merge method 'slerp' is unknown",)),
    "k-out-of-range": ("extract:\n  k: 0\n", ("extract.k = 0", "must be >= 1")),
}


@pytest.mark.parametrize("case", PROFILE_CASES)
def test_profile_refuses_what_the_stages_would_refuse(site: Path, case: str) -> None:
    text, words = PROFILE_CASES[case]
    (site / "profile.yaml").write_text(text)
    before = snapshot(site)
    assert_refused(run_cli(["profile", "profile.yaml"]), words, site, before)

"""Security: no unsafe loading or code execution in the product code, hub tokens never written or printed,
and models.lock paths that cannot reach outside the workspace by accident.

Paths (README, "Managing sources"): a model folder inside the workspace is pinned workspace-relative; a *local*
folder outside it is pinned by its absolute path, which is allowed (real models live on shared disks), and
`remove-source` never deletes it: it deletes only the source's outputs inside the workspace. Hub and demo models
always live inside the workspace, so their paths must be relative. A path with `..` (or a backslash) is refused
for every origin, so a hand-edited lock cannot point a stage at `../somewhere`.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import yaml
from typer.testing import CliRunner

from fusecli.cli import app
from fusecli.lock import read_lock

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_PLANTEDtokenQx7Zk2Lm9Vb4Nc8Rt5Wy3Ud6"
SHA = "0123456789abcdef0123456789abcdef01234567"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib"}
UNPICKLE = {"load", "loads", "Unpickler"}


# --- static scan: no unpickling, no unsafe torch.load, no hard-coded remote code, no eval/exec --------------

def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _call_findings(node: ast.Call, modules: dict[str, str]) -> list[str]:
    """`modules` maps the names bound by `import x [as y]` to their module, so a local `yaml = YAML()` (ruamel,
    round-trip and safe) is not mistaken for PyYAML."""
    func, kw = node.func, {k.arg: k.value for k in node.keywords}
    owner = modules.get(func.value.id) if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    found = []
    if (isinstance(func, ast.Name) or owner == "builtins") and name in ("eval", "exec"):
        found.append(f"{name}() call")
    if owner in PICKLE_MODULES and name in UNPICKLE:
        found.append(f"{owner}.{name}() unpickles")
    if owner == "torch" and name == "load" and not _is_true(kw.get("weights_only")):
        found.append("torch.load() without weights_only=True")
    if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
        found.append(f"yaml.{name}() (use yaml.safe_load)")
    if name == "YAML" and isinstance(kw.get("typ"), ast.Constant) and kw["typ"].value == "unsafe":
        found.append("ruamel YAML(typ='unsafe')")
    if owner == "numpy" and name == "load" and _is_true(kw.get("allow_pickle")):
        found.append("numpy.load(allow_pickle=True)")
    if _is_true(kw.get("trust_remote_code")):
        found.append("trust_remote_code=True literal")
    if _is_true(kw.get("shell")):
        found.append("shell=True")
    return found


def unsafe(source: str) -> list[str]:
    """Every unsafe construct in `source` as 'line N: what', found on the syntax tree (not by grep)."""
    tree = ast.parse(source)
    modules = {"builtins": "builtins"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                            for a in node.names})
    found = []
    for node in ast.walk(tree):
        what: list[str] = []
        if isinstance(node, ast.Call):
            what = _call_findings(node, modules)
        elif isinstance(node, ast.ImportFrom):
            names = {a.name for a in node.names}
            if (node.module in PICKLE_MODULES and names & UNPICKLE) or (node.module == "torch" and "load" in names):
                what = [f"from {node.module} import {', '.join(sorted(names))}"]
            if node.module == "builtins" and names & {"eval", "exec"}:
                what = ["eval/exec imported from builtins"]
        elif isinstance(node, ast.Dict):
            pairs = zip(node.keys, node.values, strict=True)
            if any(isinstance(k, ast.Constant) and k.value == "trust_remote_code" and _is_true(v) for k, v in pairs):
                what = ["{'trust_remote_code': True} literal"]
        elif isinstance(node, ast.arguments):
            args = [*node.posonlyargs, *node.args][-len(node.defaults):] if node.defaults else []
            pairs = [*zip(args, node.defaults, strict=True), *zip(node.kwonlyargs, node.kw_defaults, strict=True)]
            if any(a.arg == "trust_remote_code" and _is_true(d) for a, d in pairs):
                what = ["trust_remote_code defaults to True"]
        found += [f"line {node.lineno}: {w}" if hasattr(node, "lineno") else w for w in what]
    return found


def product_files() -> list[Path]:
    return sorted(p for root in ("fusecli", "stages") for p in (REPO / root).rglob("*.py"))


def test_product_code_has_no_unsafe_loading_or_code_execution() -> None:
    files = product_files()
    assert len(files) > 40 and REPO / "stages/extract.py" in files
    problems = [f"{p.relative_to(REPO)} {w}" for p in files for w in unsafe(p.read_text(encoding="utf-8"))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("snippet", [
    "import pickle\npickle.load(f)",
    "import pickle as pk\npk.loads(b)",
    "from pickle import load",
    "import dill\ndill.load(f)",
    "import torch\ntorch.load('model.bin')",
    "import torch as t\nt.load('model.bin', weights_only=False)",
    "from torch import load",
    "AutoModel.from_pretrained(path, trust_remote_code=True)",
    "kwargs = {'trust_remote_code': True}",
    "def load(path, trust_remote_code=True): ...",
    "def load(path, *, trust_remote_code=True): ...",
    "eval('1 + 1')",
    "exec(code)",
    "import builtins\nbuiltins.exec(code)",
    "import yaml\nyaml.load(text)",
    "from ruamel.yaml import YAML\nYAML(typ='unsafe').load(text)",
    "import numpy as np\nnp.load(f, allow_pickle=True)",
    "subprocess.run(cmd, shell=True)",
])
def test_the_scan_catches_each_unsafe_form(snippet: str) -> None:
    assert unsafe(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "model.eval()",
    "import torch\ntorch.load('x.pt', weights_only=True)",
    "import yaml\nyaml.safe_load(text)",
    "from ruamel.yaml import YAML\nyaml = YAML()\nyaml.load(text)",
    "import pickle\npickle.dumps(obj)",
    "AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)",
    "def load(path, trust_remote_code=False): ...",
    "import numpy as np\nnp.load(f)",
    "subprocess.run([sys.executable, '-m', 'dvc'])",
])
def test_the_scan_passes_safe_forms(snippet: str) -> None:
    assert not unsafe(snippet), snippet


# --- a planted hub token never reaches a file, stdout or stderr ---------------------------------------------

def cli(*args: str) -> SimpleNamespace:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return SimpleNamespace(code=result.exit_code, text=result.stdout + result.stderr, err=result.stderr)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tiny_models: dict[str, Path]) -> None:
    """HfApi / snapshot_download stand-ins: `owner/denied` fails with an error that echoes the token (as an
    HTTP library may print request headers), any other repo is served the tiny Llama folder."""

    class FakeApi:
        def model_info(self, repo: str, revision: str | None = None) -> SimpleNamespace:
            if repo == "owner/denied":
                raise RuntimeError(f"401 Client Error for https://huggingface.co/api/models/{repo}\n"
                                   f"request headers: {{'authorization': 'Bearer {TOKEN}'}}")
            files = [p.name for p in tiny_models["llama"].iterdir()]
            return SimpleNamespace(sha=SHA, siblings=[SimpleNamespace(rfilename=f) for f in files])

    def snapshot(repo: str, *, revision: str, local_dir: Path, allow_patterns: list[str]) -> str:
        shutil.copytree(tiny_models["llama"], local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)


def _init_dvc(root: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)


def test_planted_hub_token_is_never_written_or_printed(ws: Path, tmp_path: Path, fake_hub: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "hf-home"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.setenv(name, TOKEN)
    monkeypatch.setenv("HF_HOME", str(home))
    _init_dvc(ws)
    runs = [cli("set-pivot", "local/qwen"), cli("add-source", "local/llama"), cli("add-source", "owner/tiny-model"),
            cli("list"), cli("status")]
    assert [r.code for r in runs] == [0] * len(runs), [r.text for r in runs]
    denied = cli("add-source", "owner/denied")
    assert denied.code == 1 and denied.err.count("\n") == 1
    assert denied.err.startswith("error: hub request for owner/denied failed: 401 Client Error")
    assert "Bearer ***" in denied.err and denied.err.rstrip().endswith("check the network and retry")

    assert read_lock(ws / "models.lock").sources["tiny-model"].revision == SHA
    for run in [*runs, denied]:
        assert TOKEN not in run.text
    written = [p for root in (ws, home) if root.exists() for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "models.lock" for p in written) and any("tiny-model" in p.parts for p in written)
    assert [p for p in written if TOKEN.encode() in p.read_bytes()] == []


# --- paths in models.lock ---------------------------------------------------------------------------------

def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def _set_path(lock: Path, where: str, path: str, **fields: object) -> None:
    data = yaml.safe_load(lock.read_text())
    entry = data["pivot"] if where == "pivot" else data["sources"][where]
    entry.update(path=path, **fields)
    lock.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize(("where", "path", "fields", "message"), [
    ("pivot", "../outside/qwen", {}, "pivot.path must be a path without '..' or backslashes"),
    ("llama", "local/../../outside/llama", {}, "sources.llama.path must be a path without '..'"),
    ("llama", "/srv/models/../../etc", {}, "sources.llama.path must be a path without '..'"),
    ("llama", "local\\..\\..\\outside", {}, "sources.llama.path must be a path without '..' or backslashes"),
    ("llama", "/srv/models/llama", {"origin": "demo", "content_hash": "dvc"},
     "sources.llama.path must be workspace-relative for origin demo (only local folders may lie outside"),
])
def test_lock_paths_cannot_escape_the_workspace(ws: Path, where: str, path: str, fields: dict, message: str) -> None:
    assert cli("set-pivot", "local/qwen").code == cli("add-source", "local/llama").code == 0
    lock = ws / "models.lock"
    _set_path(lock, where, path, **fields)
    before = lock.read_bytes()
    for args in (["list"], ["remove-source", "llama"], ["add-source", "local/qwen", "--name", "other"]):
        result = cli(*args)
        assert result.code == 1 and result.err.count("\n") == 1, result.text
        assert message in result.err and "fix the file or re-pin with fusecli" in result.err
        assert lock.read_bytes() == before


def test_local_folder_outside_the_workspace_is_pinned_absolute_and_never_deleted(ws: Path, tmp_path: Path) -> None:
    outside = tmp_path / "shared-disk" / "llama"
    shutil.copytree(ws / "local/llama", outside)
    kept = _digest(outside)
    _init_dvc(ws)
    assert cli("set-pivot", "local/qwen").code == 0
    assert cli("add-source", str(outside), "--name", "far").code == 0
    entry = read_lock(ws / "models.lock").sources["far"]
    assert (entry.origin, entry.path) == ("local", outside.as_posix())
    assert "far" in cli("list").text
    status = cli("status")
    assert status.code == 0 and "pinned files: unchanged" in status.text, status.text

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("not the workspace's")
    (ws / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"extract@far": {
        "cmd": "x", "outs": [{"path": "../victim"}, {"path": str(outside)}, {"path": "extract/sources/far"}]}}}))
    (ws / "extract/sources/far").mkdir(parents=True)
    result = cli("remove-source", "far")
    assert result.code == 0, result.text
    assert "deleted extract/sources/far" in result.text and "dvc.lock:extract@far" in result.text
    assert "far" not in read_lock(ws / "models.lock").sources
    assert _digest(outside) == kept and (victim / "keep.txt").read_text() == "not the workspace's"

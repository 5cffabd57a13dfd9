"""The files a piece of fusecli code runs: its `fusecli.*` import closure plus the package data it reads.

Read statically (ast and the files on disk, nothing imported), so checking a torch-heavy stage
costs milliseconds. Two readers need the same answer: `fusecli sync-dvc` writes every dvc.yaml stage's
code `deps` from it (fusecli/dvc_yaml.py: a missed file means `dvc repro` keeps a stale result), and the evaluation
score cache (fusecli/evaluate/cache.py) hashes it, so any change to the scoring code rescores.

What counts: every `import`/`from ... import` of a fusecli module anywhere in a file (also inside
functions, which is how heavy modules are loaded late), except under `if TYPE_CHECKING:`; a string
literal that names a fusecli module (`importlib.import_module("fusecli.merge.methods")`, PEP 562
tables); every module of a package whose `__init__.py` imports them all through `pkgutil.iter_modules`
(the merge methods); the `__init__.py` of every package on the way (unless it runs nothing: empty, or a
docstring alone); and the non-Python files inside the folder of each package the closure touches (e.g.
fusecli/demo/data/).

Not followed: the preflight every stage runs first (`PREFLIGHT`: fusecli/check.py validates every
section of params.yaml and every pinned model, fusecli/busy.py holds the workspace lock). It can stop
a stage but never changes a byte of what the stage writes, and following it would make every stage
depend on every other stage's code (editing the trainer would rerun extraction). It has its own tests.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "fusecli"
ROOT = Path(__file__).resolve().parent.parent  # the repository root: closure paths are relative to it
PREFLIGHT = ("fusecli.check", "fusecli.busy")  # validation and locking only: see the module docstring


@cache
def module_file(name: str) -> Path | None:
    """The source file of fusecli module `name`, or None when `name` is not one (found on disk, not imported:
    importlib's find_spec would import the parent packages, torch with them)."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path.resolve()
    return None


@cache
def _parsed(path: Path, mtime_ns: int, size: int) -> ast.Module:  # noqa: ARG001 (the key: a changed file is read again)
    return ast.parse(path.read_text(), str(path))


def parse(path: Path) -> ast.Module:
    stat = path.stat()
    return _parsed(path, stat.st_mtime_ns, stat.st_size)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = here.split(".") if is_package else here.split(".")[:-1]
    base = parts[: len(parts) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imported_names(path: Path) -> set[str]:
    """Every module name the file at `path` may import (not yet filtered to fusecli modules)."""
    tree = parse(path)
    here = _module_name(path) if path.is_relative_to(ROOT / PACKAGE) else ""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, here, is_package)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PACKAGE + "."):
            names.add(node.value)
        elif is_package and isinstance(node, ast.Attribute) and node.attr == "iter_modules":
            names.update(f"{here}.{p.stem}" for p in path.parent.glob("*.py") if p.name != "__init__.py")
    return names


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _package_data(package_dir: Path) -> set[Path]:
    """Non-Python files in a package's folder and its non-package subfolders."""
    out: set[Path] = set()
    for path in package_dir.iterdir():
        if path.name.startswith(".") or path.name == "__pycache__":
            continue
        if path.is_dir() and not (path / "__init__.py").exists():
            out |= {p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        elif path.is_file() and path.suffix not in (".py", ".pyc"):
            out.add(path)
    return out


def runs_code(path: Path) -> bool:
    """False for a file that runs nothing (empty, or a docstring alone): editing it cannot change a result."""
    if path.stat().st_size == 0:
        return False
    body = parse(path).body
    return not (len(body) <= 1 and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body))


def closure(*entry_points: str | Path) -> list[Path]:
    """Sorted repo-relative files run by `entry_points` (file paths, or fusecli module names)."""
    todo: list[Path] = []
    for entry in entry_points:
        path = module_file(entry) if isinstance(entry, str) and not entry.endswith(".py") else Path(entry).resolve()
        if path is None or not path.is_file():
            raise FileNotFoundError(f"no such module or file: {entry}")
        todo.append(path)
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            if any(name == p or name.startswith(p + ".") for p in PREFLIGHT):
                continue
            for parent in _with_parents(name):
                found = module_file(parent)
                if found is not None and found not in seen:
                    todo.append(found)
    packages = {p.parent for p in seen if p.is_relative_to(ROOT / PACKAGE)}
    seen = {p for p in seen if runs_code(p)}  # e.g. fusecli/__init__.py: its docstring
    data = set().union(*(_package_data(d) for d in packages)) if packages else set()
    return sorted(p.relative_to(ROOT) for p in seen | data)

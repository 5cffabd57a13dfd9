"""dvc.yaml's `stages:` written from the stage table (fusecli/pipeline.py): `fusecli sync-dvc [--check]`.

Only the `stages:` mapping is generated; the lines around it (the header, `vars`, `plots`) are kept
as written. A stage's code deps are its entry point's import closure (fusecli/closure.py), a folder
standing for its files when the stage runs every one of them (so the list stays short and a new module
in a package the stage runs whole is covered before anyone resyncs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fusecli.closure import ROOT, closure, runs_code
from fusecli.config import read_yaml
from fusecli.errors import FusecliError
from fusecli.io import atomic_write_text
from fusecli.pipeline import STAGES, Stage, hashed_params

WIDTH = 100  # a long cmd is folded onto indented lines (YAML reads them back as one line)


def _code_files(folder: Path) -> set[Path]:
    """The files under `folder` a closure may contain: code that runs, and package data."""
    files = {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    return {p.relative_to(ROOT) for p in files if p.suffix != ".py" or runs_code(p)}


def code_deps(entry: str) -> list[str]:
    """The files `entry` runs besides itself, a folder standing for every file in it when the closure
    holds them all."""
    files = set(closure(entry)) - {Path(entry)}
    out: list[str] = []
    for path in sorted(files):
        if any(Path(d) in path.parents for d in out):
            continue
        whole = None
        for parent in reversed(path.parents[:-1]):  # outermost first: fusecli/merge before fusecli/merge/methods
            if parent != Path("fusecli") and _code_files(ROOT / parent) <= files:
                whole = parent
                break
        out.append(str(whole or path))
    return out


def stage_body(s: Stage, params: dict[str, Any], params_path: Path) -> dict[str, Any]:
    """The stage's dvc.yaml mapping (inside `do:` for a foreach stage)."""
    data = list(s.data) + (s.data_from_params(params_path) if s.data_from_params else [])
    body: dict[str, Any] = {"cmd": s.cmd, "deps": [s.entry, *code_deps(s.entry), *data]}
    hashed = hashed_params(s, params)
    if hashed:
        body["params"] = hashed
    if s.metrics:
        body["metrics"] = list(s.metrics)
    if s.outs:
        body["outs"] = list(s.outs)
    return {"foreach": s.foreach, "do": body} if s.foreach else body


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:  # noqa: ARG002
        return super().increase_indent(flow, False)  # lists indented under their key, as DVC's examples write them


def render(params_path: Path) -> str:
    """The `stages:` block, one blank line between stages."""
    params = read_yaml(params_path)
    blocks = []
    for s in STAGES:
        text = yaml.dump({s.name: stage_body(s, params, params_path)}, Dumper=_Dumper, sort_keys=False,
                         width=WIDTH, default_flow_style=False)
        blocks.append("".join(f"  {line}\n" for line in text.splitlines()))
    return "stages:\n" + "\n".join(blocks)


def _stages_span(lines: list[str], dvc_yaml: Path) -> tuple[int, int]:
    """[first, end) of the `stages:` block: up to the comments and blank lines before the next top-level key."""
    if "stages:" not in lines:
        raise FusecliError(f"{dvc_yaml} has no top-level `stages:`: restore it from the repository")
    first = lines.index("stages:")
    end = next((i for i in range(first + 1, len(lines)) if lines[i][:1] not in ("", " ", "#")), len(lines))
    while end > first + 1 and lines[end - 1][:1] in ("", "#"):
        end -= 1
    return first, end


def synced(dvc_yaml: Path, params_path: Path) -> tuple[str, str]:
    """(dvc.yaml as it is, dvc.yaml with its `stages:` written from the stage table)."""
    text = dvc_yaml.read_text() if dvc_yaml.is_file() else ""
    lines = text.split("\n")
    first, end = _stages_span(lines, dvc_yaml)
    head, rest = "\n".join(lines[:first]).rstrip("\n"), "\n".join(lines[end:]).strip("\n")
    return text, (head + "\n\n" if head else "") + render(params_path) + ("\n" + rest + "\n" if rest else "")


def differing_stages(current: str, wanted: str) -> list[str]:
    """The stages whose parsed definitions differ (what --check names; layout aside)."""
    a = (yaml.safe_load(current) or {}).get("stages") or {}
    b = (yaml.safe_load(wanted) or {}).get("stages") or {}
    return sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))


def sync(dvc_yaml: Path, params_path: Path, check: bool) -> list[str] | None:
    """Write dvc.yaml's stages from the table (`check`: only compare); return the stages that differed
    (empty: the layout only), None when dvc.yaml was already in step.

    With `check`, raise when a stage's definition differs, naming the stages (layout, such as a comment or
    a quoted path, is not compared: `fusecli dataset-deps` writes its paths as JSON strings)."""
    current, wanted = synced(dvc_yaml, params_path)
    if current == wanted:
        return None
    changed = differing_stages(current, wanted)
    if check:
        if changed:
            raise FusecliError(
                f"{dvc_yaml.name} disagrees with the stage table (fusecli/pipeline.py) in {', '.join(changed)}: "
                "run `fusecli sync-dvc` (edit a stage in fusecli/pipeline.py, never in dvc.yaml)"
            )
        return changed
    atomic_write_text(dvc_yaml, wanted)
    return changed

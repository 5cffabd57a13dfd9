"""`fusecli profile FILE`: lay a parameter profile (e.g. params.gpu.yaml) over params.yaml.

params.yaml stays the one file DVC tracks, so a profile is content-hashed like any other edit: applying
params.gpu.yaml reruns exactly the stages whose keys it changes. The overlay is round-tripped with
ruamel.yaml (DVC's own YAML library), so params.yaml keeps its comments, key order and untouched values
as written (`null` stays `null`), and the file is replaced atomically. A profile may only set keys
params.yaml already has: a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from ruamel.yaml import YAML

from fusecli.busy import workspace_change
from fusecli.config import read_yaml
from fusecli.errors import FusecliError
from fusecli.io import atomic_write_text

Change = tuple[str, Any, Any]  # dotted key, old value, new value


def overlay(base: Any, profile: dict[str, Any], where: str, prefix: str = "") -> list[Change]:
    """Set every leaf of `profile` in `base` (a ruamel mapping, changed in place); return what changed."""
    changes: list[Change] = []
    for key, value in profile.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise FusecliError(f"{where}: unknown key {dotted!r} (params.yaml has no such key): fix or remove it")
        if isinstance(value, dict) != isinstance(base[key], dict):
            raise FusecliError(f"{where}: {dotted!r} is a section in one file, a value in the other: match params.yaml")
        if isinstance(value, dict):
            changes += overlay(base[key], value, where, f"{dotted}.")
        elif base[key] != value:
            changes.append((dotted, base[key], value))
            base[key] = value
    return changes


def _float(representer: Any, value: float) -> Any:
    """Floats as PyYAML (YAML 1.1, what the stages read) parses them: `5e-06` would be a string there."""
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def _null(representer: Any, value: None) -> Any:
    """`null` as written: ruamel's round trip writes a null mapping value as nothing (`gate:`), which reads the
    same but is not what the file said, and looks like a key left unfinished."""
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def apply_profile(params: Path, profile: Path) -> list[Change]:
    """Overlay `profile` onto `params` (atomically, comments kept); return the changed keys."""
    data = read_yaml(profile)  # a mapping, or a one-line error
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)  # params.yaml's own list style
    yaml.representer.add_representer(float, _float)
    yaml.representer.add_representer(type(None), _null)
    base = yaml.load(params.read_text())
    changes = overlay(base, data, str(profile))
    if changes:
        buf = io.StringIO()
        yaml.dump(base, buf)
        validate(buf.getvalue(), profile)
        atomic_write_text(params, buf.getvalue())
    return changes


def validate(text: str, profile: Path) -> None:
    """Load the overlaid parameters with the stages' own loaders (fusecli/check.py) before writing them."""
    from fusecli.check import check_params  # imported here: the parameter classes pull in torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(text)
        try:
            check_params(path, require_all=False)
        except FusecliError as exc:
            raise FusecliError(f"{profile} would make params.yaml invalid: {exc}") from None


def profile_command(
    ctx: typer.Context,
    profile: Path = typer.Argument(..., help="A YAML file of params.yaml sections, e.g. params.gpu.yaml."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="The parameters file to update."),
) -> None:
    """Apply a parameter profile to params.yaml (e.g. `fusecli profile params.gpu.yaml` for GPUs)."""
    root = ctx.find_root().obj.root
    target = params if params.is_absolute() else root / params
    if not profile.is_file():
        raise FusecliError(f"profile {profile} not found: pass a YAML file such as params.gpu.yaml")
    if not target.is_file():
        raise FusecliError(f"{target} not found: run in the workspace or pass --params")
    with workspace_change(root):
        changes = apply_profile(target, profile)
    console = Console()
    if not changes:
        console.print(f"{target.name}: already matches {profile}")
        return
    table = Table("key", "was", "now", title=f"{target.name} <- {profile}", box=None, header_style="bold")
    for key, old, new in changes:
        table.add_row(key, repr(old), repr(new))
    console.print(table)
    console.print("run `dvc repro`: only the stages reading these keys rerun")

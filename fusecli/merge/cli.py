"""`fusecli merge`: merge model folders from the command line (the lead registers `merge_command`).

fusecli merge --method ties --base pivot --model a --model b --out merged --set density=0.5
fusecli merge --config mergekit.yaml --out merged      # a mergekit YAML (fusecli/merge/mergekit.py)
fusecli merge --method fisher_gate --base pivot --model fused/a --model fused/b --importance fisher --out merged
Options are the method's own (its options dataclass, params.yaml `merge.<method>`): `--set KEY=VALUE`
sets any of them (VALUE is read as YAML, so `--set weight=[0.5,0.3]` gives a list). Errors reach the
`fusecli` app's handler (fusecli/cli.py), which prints them as one line.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from fusecli.errors import FusecliError
from fusecli.io import atomic_write_text
from fusecli.merge.params import merge_params


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs -> a mapping, each VALUE parsed as YAML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FusecliError(f"--set {pair!r} is not KEY=VALUE: e.g. --set density=0.5")
        if key.strip() in ("method", "device", "max_shard_size"):
            raise FusecliError(f"--set {key.strip()}=... : use --{key.strip()} instead")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise FusecliError(f"--set {pair!r}: {value!r} is not a valid value") from None
    return out


def model_labels(models: list[Path]) -> list[tuple[str, Path]]:
    """Label each model by its folder name, or by its path when two folder names collide."""
    names = [m.name or str(m) for m in models]
    if len(set(names)) != len(names):
        names = [str(m) for m in models]
    return list(zip(names, models, strict=True))


def _base_dtype(base: Path) -> str | None:
    from fusecli.merge.io import ModelFolder  # torch: imported when a merge runs, not for every command

    with ModelFolder(base) as folder:
        floating = [n for n in folder.names() if folder.dtype(n).startswith(("F", "BF"))]
        return folder.dtype(floating[0]) if floating else None


def run_merge_command(
    method: str | None,
    base: Path | None,
    models: list[Path],
    out: Path,
    sets: list[str],
    device: str | None,
    export_mergekit: Path | None,
    config: Path | None = None,
    root: Path | None = None,
    importance: Path | None = None,
) -> str:
    """Merge as the options say, or as the mergekit YAML `config` says (`root`: the workspace, which its
    relative paths and the export's are relative to)."""
    from fusecli.merge.mergekit import mergekit_yaml, read_mergekit
    from fusecli.merge.run import merge_models

    shared = {"device": device} if device is not None else {}
    if config is not None:
        mixed = [flag for flag, value in (("--method", method), ("--base", base), ("--model", models), ("--set", sets))
                 if value]  # fmt: skip
        if mixed:
            raise FusecliError(
                f"--config takes the method, base, models and options from {config}: drop {'/'.join(mixed)} "
                "(or drop --config)"
            )
        spec = read_mergekit(config, root)
        base, models, method = spec.base, spec.models, spec.method
        spec.check_dtype(_base_dtype(base))
        params = spec.params(**shared)
    else:
        missing = [flag for flag, value in (("--method", method), ("--base", base), ("--model", models)) if not value]
        if missing or method is None or base is None:
            raise FusecliError(f"missing {'/'.join(missing)}: give --method, --base and --model, or --config FILE")
        params = merge_params(method, where=f"--method {method} --set", **parse_sets(sets), **shared)
    export = mergekit_yaml(params, base, models, _base_dtype(base), root=root) if export_mergekit else None
    labelled = model_labels(models)
    weights = {label: importance / Path(path).name for label, path in labelled} if importance is not None else None
    result = merge_models(base, labelled, params, out, importance=weights)
    if export_mergekit is not None and export is not None:
        atomic_write_text(export_mergekit, export)
    cropped = len(result.report["cropped"])
    note = f" ({cropped} grown-vocabulary tensors cropped, see merge_report.json)" if cropped else ""
    return f"merged {len(models)} models onto {base} with {method} -> {out}{note}"


def registered_methods() -> dict[str, list[str]]:
    """Method name -> its option names, read from the `@register(name, options=Cls)` lines of
    fusecli/merge/methods/ without importing them (that would load torch for every `fusecli` command).
    tests/merge/test_cli.py checks it against the imported registry."""
    methods: dict[str, list[str]] = {}
    for path in sorted((Path(__file__).parent / "methods").glob("*.py")):
        tree = ast.parse(path.read_text())
        fields = {
            node.name: [s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and hasattr(s.target, "id")]
            for node in tree.body
            if isinstance(node, ast.ClassDef)
        }
        for node in tree.body:
            for deco in getattr(node, "decorator_list", []):
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "register":
                    name = deco.args[0].value
                    options = next(k.value.id for k in deco.keywords if k.arg == "options")
                    methods[name] = fields[options]
    return dict(sorted(methods.items()))


def method_help() -> str:
    def describe(name: str, options: list[str]) -> str:
        return f"{name} ({', '.join(options)})" if options else name

    listed = "; ".join(describe(n, o) for n, o in registered_methods().items())
    return f"One of: {listed}. Set options with --set."


def merge_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Output folder (written atomically).")],
    method: Annotated[str | None, typer.Option(help=method_help())] = None,
    base: Annotated[Path | None, typer.Option(help="Base (pivot) model folder; task vectors are relative to it.")] = (
        None
    ),
    model: Annotated[list[Path] | None, typer.Option(help="A model folder to merge; repeat for each model.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE method option, e.g. density=0.5.")] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="A mergekit YAML instead of --method/--base/--model/--set, for the methods both tools have; "
            "relative paths in it are read from the workspace."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="Where the arithmetic runs: cpu or cuda.")] = None,
    importance: Annotated[
        Path | None,
        typer.Option(help="For methods that weigh models by what they learnt (fisher_gate): a folder holding, "
                     "under each model's folder name, its importance (the pipeline's fisher/<slug>)."),
    ] = None,
    export_mergekit: Annotated[
        Path | None,
        typer.Option(help="Also write the equivalent mergekit YAML to this file (paths relative to the workspace)."),
    ] = None,
) -> None:
    """Merge model folders onto a base with one of fusecli's merge methods (or as a mergekit YAML says)."""
    workspace = ctx.find_root().obj
    root = getattr(workspace, "root", None)  # `fusecli --workspace`, default the current directory
    typer.echo(
        run_merge_command(method, base, model or [], out, set_ or [], device, export_mergekit, config, root, importance)
    )

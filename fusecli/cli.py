"""The `fusecli` command line: pin models into models.lock, then `dvc repro` does the rest.

Every command is a plain Typer function; errors are handled once, in `FusecliGroup`, so a command added
elsewhere is one line: `app.command("merge")(merge)`. A command that needs the workspace takes
`ctx: typer.Context` and calls `workspace_of(ctx)`.
Every failure is one line on stderr, `error: <problem>: <fix>`, with exit status 1, and models.lock
is only ever replaced whole (temp file + rename), so a failing command leaves it byte-for-byte as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from fusecli import gguf, hashing, sources, workspace
from fusecli.align.inspect import inspect_command
from fusecli.busy import workspace_change
from fusecli.check import require_chat_template
from fusecli.dtypes import LOADABLE
from fusecli.errors import FusecliError, describe_os_error
from fusecli.lock import DVC_PINNED, Lock, ModelEntry, locked_update, read_lock
from fusecli.merge.cli import merge_command
from fusecli.profile import profile_command
from fusecli.report.cli import card_command, report_command

SHORT = 8  # characters of a commit sha or content hash shown in tables (like git's short sha)


def _fail(message: str) -> NoReturn:
    typer.echo("error: " + " ".join(message.split()), err=True)  # one line, whatever the message held
    raise typer.Exit(1)


class FusecliGroup(TyperGroup):
    """Turns every expected failure of any subcommand into one `error:` line and exit status 1."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FusecliError as exc:
            _fail(str(exc))
        except typer.TyperException as exc:  # usage errors (missing argument, bad value) carry a message
            if not hasattr(exc, "format_message"):
                raise
            sub = getattr(exc, "ctx", None)
            command = sub.command_path if sub is not None else "fusecli"
            _fail(f"{exc.format_message().rstrip('.')}: see `{command} --help`")
        except OSError as exc:
            _fail(describe_os_error(exc))


app = typer.Typer(
    cls=FusecliGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Pin chat models for FuseChat-style knowledge fusion; `dvc repro` runs the pipeline.",
)


@dataclass(frozen=True)
class Workspace:
    root: Path
    lock: Path  # models.lock


def workspace_of(ctx: typer.Context) -> Workspace:
    return ctx.find_root().obj


def _console() -> Console:
    return Console()  # built per call: rich reads the terminal width (COLUMNS) when it is created


@app.callback()
def main(
    ctx: typer.Context,
    workspace_dir: Path = typer.Option(Path("."), "--workspace", metavar="DIR", help="Workspace root (dvc.yaml)."),
    lock: Path = typer.Option(Path("models.lock"), "--lock", help="Lock file, relative to the workspace."),
) -> None:
    root = workspace_dir.expanduser().resolve()
    if not root.is_dir():
        raise FusecliError(f"workspace {workspace_dir} is not a folder: pass an existing --workspace DIR")
    ctx.obj = Workspace(root=root, lock=root / lock)


def _check_slug_free(lock: Lock, slug: str, replace: bool) -> None:
    if slug == lock.pivot.name:
        raise FusecliError(f"{slug!r} is the pivot's name: pass --name to pick another slug for this source")
    if slug in lock.sources and not replace:
        raise FusecliError(
            f"source {slug!r} is already in models.lock: pass --name OTHER to add it under another slug, "
            "or --replace to re-pin it"
        )


def _warn_pickle(entry: ModelEntry, root: Path, where: str) -> None:
    """--allow-pickle is a per-model opt-in to code execution on load: say so every time it is used."""
    folder = entry.folder(root)
    pickled = [] if hashing.safetensors_files(folder) else hashing.pickle_files(folder)
    if entry.allow_pickle and pickled:
        typer.echo(
            f"warning: {where} loads pickle weights ({pickled[0].name}), which can run code when loaded: "
            "convert them to safetensors when you can", err=True,
        )


DTYPE_HELP = f"GGUF only: the dtype its weights are de-quantized to ({', '.join(LOADABLE)}; default float32)."
TEMPLATE_HELP = "GGUF only: a Jinja chat template file, for a GGUF whose metadata has none (base models)."


def _check_template_before(located: sources.Located, conversion: sources.Conversion, role: str) -> None:
    """A GGUF without a chat template is refused before its conversion (minutes), not after."""
    if located.gguf is not None and conversion.chat_template is None:
        require_chat_template(gguf.chat_template(located.gguf) is not None, role, located.ref, gguf=True)


def _check_template(entry: ModelEntry, role: str) -> None:
    """The same check, and the same line, as `fusecli check`: a model without a template is never pinned."""
    require_chat_template(entry.chat_template_hash is not None, role, entry.path, gguf=entry.gguf is not None)


def _summary(entry: ModelEntry) -> str:
    pinned = f"revision {entry.revision[:SHORT]}" if entry.revision else _short_hash(entry)
    return f"{entry.architecture}, vocab {entry.vocab_size}, {entry.dtype}, {entry.path} ({pinned})"


def _say_ignored(folder: str | None) -> None:
    if folder:
        _console().print(f"git-ignored {folder} (a model folder in the workspace: `git add -A` would commit it)")


def _short_hash(entry: ModelEntry) -> str:
    return "dvc.lock" if entry.content_hash == DVC_PINNED else entry.content_hash.removeprefix("sha256:")[:SHORT]


@app.command("add-source")
def add_source(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Local model folder, hub repo id (owner/name) or paper alias."),
    name: str | None = typer.Option(None, "--name", help="Slug for this source (default: from the folder/repo)."),
    revision: str | None = typer.Option(None, "--revision", help="Hub branch, tag or commit (pinned to a sha)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the repo."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickle (.bin) weights."),
    replace: bool = typer.Option(False, "--replace", help="Re-pin an existing source (after its files changed)."),
    dtype: str | None = typer.Option(None, "--dtype", help=DTYPE_HELP),
    chat_template: Path | None = typer.Option(None, "--chat-template", metavar="FILE", help=TEMPLATE_HELP),
) -> None:
    """Pin a source model into models.lock (its extract/align/fuse stages are added); a GGUF file is converted."""
    ws = workspace_of(ctx)
    conversion = sources.Conversion(dtype, chat_template)
    with workspace_change(ws.root):
        entry = _add_source(ws, ref, name, revision, trust_remote_code, allow_pickle, replace, conversion)
        ignored = workspace.ignore_model_folder(ws.root, entry.path)
    _warn_pickle(entry, ws.root, f"sources.{entry.name}")
    _console().print(f"[green]pinned[/] sources.{entry.name}: {_summary(entry)}; run `dvc repro`")
    _say_ignored(ignored)


def _add_source(ws: Workspace, ref: str, name: str | None, revision: str | None, trust_remote_code: bool,
                allow_pickle: bool, replace: bool, conversion: sources.Conversion) -> ModelEntry:
    located = sources.locate(ref, ws.root, name, revision, trust_remote_code)
    _check_slug_free(read_lock(ws.lock), located.slug, replace)  # fail before a long download
    role = f"source {located.slug}"
    _check_template_before(located, conversion, role)
    entry = sources.pin(located, ws.root, revision, trust_remote_code, allow_pickle, conversion)
    _check_template(entry, role)
    with locked_update(ws.lock) as update:
        assert update.lock is not None
        _check_slug_free(update.lock, entry.name, replace)  # another process may have added it meanwhile
        update.lock = update.lock.with_source(entry)
    return entry


@app.command("remove-source")
def remove_source(
    ctx: typer.Context,
    slug: str = typer.Argument(..., help="Slug of the source to remove."),
) -> None:
    """Drop a source from models.lock and delete its outputs and DVC records."""
    ws = workspace_of(ctx)
    with workspace_change(ws.root), locked_update(ws.lock) as update:
        lock = update.lock
        assert lock is not None
        if slug == lock.pivot.name:
            raise FusecliError(f"{slug!r} is the pivot: set another pivot with `fusecli set-pivot REF` first")
        if slug not in lock.sources:
            pinned = ", ".join(lock.sources) or "none"
            raise FusecliError(f"no source {slug!r} in models.lock: pinned sources are {pinned}")
        # Clean first: if it fails, the entry stays and rerunning remove-source finishes the job.
        removed = workspace.clean_source(ws.root, slug)
        update.lock = lock.without_source(slug)
    console = _console()
    console.print(f"[green]removed[/] sources.{slug}")
    for item in removed:
        console.print(f"  deleted {item}")


@app.command("set-pivot")
def set_pivot(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Local model folder, hub repo id (owner/name) or paper alias."),
    name: str | None = typer.Option(None, "--name", help="Slug for the pivot (default: from the folder/repo)."),
    revision: str | None = typer.Option(None, "--revision", help="Hub branch, tag or commit (pinned to a sha)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the repo."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickle (.bin) weights."),
    dtype: str | None = typer.Option(None, "--dtype", help=DTYPE_HELP),
    chat_template: Path | None = typer.Option(None, "--chat-template", metavar="FILE", help=TEMPLATE_HELP),
) -> None:
    """Pin the pivot (the merge base); creates models.lock if there is none; a GGUF file is converted."""
    ws = workspace_of(ctx)
    conversion = sources.Conversion(dtype, chat_template)
    with workspace_change(ws.root):
        entry = _set_pivot(ws, ref, name, revision, trust_remote_code, allow_pickle, conversion)
        ignored = workspace.ignore_model_folder(ws.root, entry.path)
    _warn_pickle(entry, ws.root, "pivot")
    _console().print(f"[green]pinned[/] pivot {entry.name}: {_summary(entry)}; run `dvc repro`")
    _say_ignored(ignored)


def _set_pivot(ws: Workspace, ref: str, name: str | None, revision: str | None, trust_remote_code: bool,
               allow_pickle: bool, conversion: sources.Conversion) -> ModelEntry:
    located = sources.locate(ref, ws.root, name, revision, trust_remote_code)
    if ws.lock.exists() and located.slug in read_lock(ws.lock).sources:
        raise FusecliError(f"{located.slug!r} is already a source: pass --name to pick another slug for the pivot")
    _check_template_before(located, conversion, "pivot")
    entry = sources.pin(located, ws.root, revision, trust_remote_code, allow_pickle, conversion)
    _check_template(entry, "pivot")
    with locked_update(ws.lock, create=True) as update:
        if update.lock is None:
            update.lock = Lock(pivot=entry, sources={})
        elif entry.name in update.lock.sources:
            raise FusecliError(f"{entry.name!r} is already a source: pass --name to pick another slug for the pivot")
        else:
            update.lock = update.lock.with_pivot(entry)
    return entry


@app.command("list")
def list_models(ctx: typer.Context) -> None:
    """Show the pinned pivot and sources."""
    lock = read_lock(workspace_of(ctx).lock)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("role", "slug", "origin", "architecture", "vocab", "revision", "hash"):
        table.add_column(column, no_wrap=True, justify="right" if column == "vocab" else "left")
    for role, entry in [("pivot", lock.pivot), *(("source", e) for e in lock.sources.values())]:
        revision = entry.revision[:SHORT] if entry.revision else "-"
        table.add_row(role, entry.name, entry.origin, entry.architecture, str(entry.vocab_size), revision,
                      _short_hash(entry))
    _console().print(table)


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Validate models.lock, check pinned files are unchanged, and list stages `dvc repro` would run."""
    ws = workspace_of(ctx)
    lock = read_lock(ws.lock)
    console = _console()
    console.print(f"{ws.lock.name}: valid (pivot {lock.pivot.name}, {len(lock.sources)} source(s))")
    cache = ws.root / hashing.CACHE_FILE
    hashing.verify_entry(lock.pivot, ws.root, cache, is_pivot=True)
    for entry in lock.sources.values():
        hashing.verify_entry(entry, ws.root, cache)
    console.print("pinned files: unchanged")
    unignored = workspace.unignored_outputs(ws.root)
    if unignored:
        console.print(f"[red]not ignored by git[/] (a failed `dvc repro` took the lines back; `git add -A` would "
                      f"commit them): {', '.join(unignored)}: run `fusecli recover`")
    stale = workspace.stale_stages(ws.root)
    if not stale:
        console.print("[green]pipeline up to date[/]")
        return
    table = Table("stage", "why", box=box.SIMPLE, title="stages `dvc repro` will run")
    for stage, why in stale.items():
        table.add_row(stage, why)
    console.print(table)


@app.command("recover")
def recover(ctx: typer.Context) -> None:
    """After a killed or failed `dvc repro`: repair DVC's torn files and lost .gitignore lines, then rerun it."""
    root = workspace_of(ctx).root
    with workspace_change(root):
        repaired = workspace.recover(root)
    console = _console()
    for item in repaired:
        console.print(f"[yellow]repaired[/] {item}")
    console.print("nothing torn: run `dvc repro`" if not repaired else "run `dvc repro`")


@app.command("pull-models")
def pull_models(ctx: typer.Context) -> None:
    """Download the pinned revision of every hub model into models/<slug> and verify its content hash."""
    from fusecli.pull import hub_models
    from fusecli.pull import pull_models as pull

    ws = workspace_of(ctx)
    lock = read_lock(ws.lock)
    console = _console()
    with workspace_change(ws.root):
        fetched = pull(lock, ws.root, console.print)
    total, n = len(hub_models(lock)), len(fetched)
    console.print(f"[green]{total} hub model(s) in place[/] ({n} fetched, {total - n} up to date)")


@app.command("dataset-deps")
def dataset_deps(
    ctx: typer.Context,
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file, relative to the workspace."),
) -> None:
    """Write the dataset files of params.yaml's dataset.sources into dvc.yaml as deps of build_dataset."""
    from fusecli.config import load_section  # imported here: polars is slow to load for the other commands
    from fusecli.data.build import DatasetParams
    from fusecli.data.deps import sync_declared

    root = workspace_of(ctx).root
    dataset = load_section(DatasetParams, "dataset", root / params)
    with workspace_change(root):
        added, removed = sync_declared(dataset, root / "dvc.yaml")
    console = _console()
    for path in added:
        console.print(f"[green]added[/] {path} to build_dataset deps")
    for path in removed:
        console.print(f"[yellow]removed[/] {path} from build_dataset deps")
    if not added and not removed:
        console.print("dvc.yaml: build_dataset already depends on every dataset file")


@app.command("sync-dvc")
def sync_dvc(
    ctx: typer.Context,
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file, relative to the workspace."),
    check_only: bool = typer.Option(False, "--check", help="Change nothing; exit 1 when dvc.yaml disagrees."),
) -> None:
    """Write dvc.yaml's stages from the stage table (fusecli/pipeline.py) and the code each stage runs."""
    from fusecli.dvc_yaml import sync  # imported here: the stage dataclasses pull in torch

    root = workspace_of(ctx).root
    if check_only:
        sync(root / "dvc.yaml", root / params, check=True)
        _console().print("dvc.yaml: every stage as the stage table writes it")
        return
    with workspace_change(root):
        changed = sync(root / "dvc.yaml", root / params, check=False)
    if changed is None:
        _console().print("dvc.yaml: already in step")
    else:
        _console().print(f"dvc.yaml: rewrote {', '.join(changed) or 'the layout'}")


@app.command("check")
def check(
    ctx: typer.Context,
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file, relative to the workspace."),
) -> None:
    """Preflight before `dvc repro`: params.yaml, every pinned model and the dataset files, in seconds."""
    from fusecli import check as preflight  # imported here: the parameter classes pull in torch
    from fusecli.config import load_section
    from fusecli.data.build import DatasetParams
    from fusecli.data.deps import check_declared

    ws = workspace_of(ctx)
    path = ws.root / params
    console = _console()
    console.print(f"{params}: valid ({', '.join(preflight.check_params(path))})")
    preflight.check_hardware(path)
    checked = preflight.check_models(ws.lock, ws.root, preflight.Limits.of(path))
    unbuilt = len(read_lock(ws.lock).names()) - len(checked)
    console.print(f"{ws.lock.name}: {len(checked)} model(s) are causal LMs with whole weights, chat templates and "
                  "enough context" + (f"; {unbuilt} demo model(s) not built yet (build_demo)" if unbuilt else ""))
    files = preflight.check_dataset_files(path, ws.root)
    if (ws.root / "dvc.yaml").is_file():
        check_declared(load_section(DatasetParams, "dataset", path), ws.root / "dvc.yaml")
    console.print(f"dataset: {len(files)} file(s) readable and tracked by DVC")
    if warning := preflight.length_warning(path):
        console.print(f"[yellow]warning[/]: {warning}")
    console.print("[green]ready[/]: run `dvc repro`")


app.command("merge")(merge_command)
app.command("inspect-alignment")(inspect_command)
app.command("report")(report_command)
app.command("card")(card_command)
app.command("profile")(profile_command)


if __name__ == "__main__":
    app()

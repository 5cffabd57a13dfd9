"""The quality benchmark (issues 13, 24): every model of the pipeline over several seeds, and the controls.

For each seed it copies the repository's working tree (git's tracked files with their uncommitted changes,
plus untracked files git does not ignore) into a fresh folder, sets every `seed` key of params.yaml (found by
walking the file) to the seed, applies the --set overrides, pins the extra demo specialists of --sources (`dvc
repro build_demo`, then `fusecli add-source demo/models/<name>` as a user would), runs the whole `dvc repro`
and reads eval/metrics.json. Then, per control of --controls, it sets `fuse.teacher` to it and runs `dvc
repro` again: DVC reruns the training stages that read `fuse.teacher` (the pair models and fuse_all; the
`sft_baseline` it reports again is the same model), the merges, evaluate and report. The controls: `reference`
(rows prefixed `control:`), every fused target the reference one-hot, what the teachers add beyond the
references; `pivot` (rows prefixed `self:`), the sources dropped and the pivot's own distribution the only
teacher, what the sources add beyond the pivot teaching itself. Per model (pivot, sources, sft_baseline, the
pair models, fuselm, the implicit-fusion rows imf_sft and imf, every merge method, then each control's
retrained ones) and per domain it prints mean ± spread over the seeds, the spread being half the max-min
range, writes every seed's numbers and the summary to --out, and with --readme writes the Markdown tables
between the marker comments of that file.

    python benchmarks/quality.py --seeds 0,1,2 --out quality.json --readme README.md
    python benchmarks/quality.py --sources 3 --out quality-3src.json               # merge three pair models
    python benchmarks/quality.py --set fuse.gate=1.0 --controls reference --out quality-gate1.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fusecli.config import load_section
from fusecli.demo.world import DemoParams
from fusecli.errors import FusecliError, fail_cleanly
from fusecli.io import atomic_write_json, atomic_write_text
from fusecli.lock import read_lock
from fusecli.sources import DEMO_DIR

ROOT = Path(__file__).resolve().parents[1]
CONTROLS = {"reference": "control:", "pivot": "self:"}  # fuse.teacher of each control -> its rows' prefix
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"
SPREAD = "half the max-min range over seeds"


def workspace_files(repo: Path) -> list[str]:
    """The working tree as git sees it: tracked files (as they are on disk) and untracked, unignored ones."""
    proc = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise FusecliError(f"{repo} is not a git repository: pass --repo the fusecli checkout")
    return [f for f in proc.stdout.split("\n") if f and (repo / f).is_file()]


def copy_workspace(repo: Path, dest: Path) -> None:
    """A fresh workspace at `dest`: the working tree's files, committed to a new git repository (DVC needs one)."""
    for f in workspace_files(repo):
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / f, dest / f)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=q@q", "-c", "user.name=q", "commit", "-qm", "quality benchmark"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)


def seed_paths(node: Any, path: tuple = ()) -> list[tuple]:
    """The path of every key named `seed` in params.yaml, in mappings and lists at any depth."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        if key == "seed" and not isinstance(value, dict | list):
            found.append((*path, key))
        else:
            found += seed_paths(value, (*path, key))
    return found


def set_path(params: dict, path: tuple, value: Any) -> None:
    node = params
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            raise FusecliError(f"params.yaml has no {'.'.join(map(str, path))}: fix the --set key")
    if not isinstance(node, dict | list):
        raise FusecliError(f"params.yaml's {'.'.join(map(str, path[:-1]))} is not a section: fix the --set key")
    node[path[-1]] = value


def parse_set(spec: str) -> tuple[tuple, Any]:
    """`fuse.gate=1.0` -> (("fuse", "gate"), 1.0); the value is YAML (null, [a, b], {k: v} work)."""
    key, sep, raw = spec.partition("=")
    if not sep or not key:
        raise FusecliError(f"--set {spec!r} is not KEY=VALUE: write e.g. --set fuse.gate=1.0")
    return tuple(int(k) if k.isdigit() else k for k in key.split(".")), yaml.safe_load(raw)


def configure(workspace: Path, seed: int, overrides: list[tuple[tuple, Any]]) -> list[str]:
    """Set every seed of the workspace's params.yaml to `seed`, then the overrides; returns the seed keys."""
    path = workspace / "params.yaml"
    params = yaml.safe_load(path.read_text())
    seeds = seed_paths(params)
    for p in seeds:
        set_path(params, p, seed)
    for p, value in overrides:
        set_path(params, p, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return [".".join(map(str, p)) for p in seeds]


def run_logged(cmd: list[str], workspace: Path, log: Path, what: str) -> None:
    """Run `cmd` in `workspace`, its output appended to `log`, with this interpreter's environment first on
    PATH (the stages run `python`, the CLI is `fusecli`) and the copy's own fusecli first on PYTHONPATH (not
    the one this environment has installed)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(workspace), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYTHONUNBUFFERED": "1"}
    with log.open("a") as out:
        code = subprocess.run(cmd, cwd=workspace, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise FusecliError(f"{what} failed in {workspace} (exit {code}): see {log}")


def repro(workspace: Path, log: Path, *targets: str) -> None:
    """`dvc repro` of the workspace (or of `targets` only)."""
    run_logged([sys.executable, "-m", "dvc", "repro", *targets], workspace, log, "dvc repro")


def extra_sources(workspace: Path, spec: str | None) -> list[str]:
    """The demo specialists --sources adds to the workspace's models.lock: `spec` is either the total number
    of sources wanted (the locked ones, then the demo's other specialists in demo.models order) or
    comma-separated demo model names. The pivot (the first demo model) is never a source."""
    if not spec:
        return []
    lock = read_lock(workspace / "models.lock")
    locked = {Path(e.path).name for e in lock.sources.values() if e.origin == "demo"}
    specialists = [m.name for m in load_section(DemoParams, "demo", workspace / "params.yaml").models[1:]]
    free = [m for m in specialists if m not in locked]
    if spec.strip().isdigit():
        n, have = int(spec), len(lock.sources)
        if not have <= n <= have + len(free):
            raise FusecliError(f"--sources {n}: models.lock has {have} sources and the demo {len(free)} more "
                               f"specialists ({', '.join(free) or 'none'}): pass N within [{have}, {have + len(free)}]")
        return free[: n - have]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        if name not in free:
            raise FusecliError(f"--sources {name!r} is not a demo specialist left to add: use N or some of "
                               f"{', '.join(free) or '(none left)'}")
    if len(set(names)) != len(names):
        raise FusecliError(f"--sources {spec!r} names a model twice: name each once")
    return names


def add_demo_sources(workspace: Path, names: list[str], log: Path) -> None:
    """Pin demo models as sources with `fusecli add-source`, as a user would (the folders must be built)."""
    for name in names:
        run_logged(["fusecli", "add-source", f"{DEMO_DIR}/{name}"], workspace, log, f"fusecli add-source {name}")


def read_scores(workspace: Path) -> dict[str, dict[str, dict[str, float | None]]]:
    """eval/metrics.json's `models`: {model: {domain: {score: value}}}, with a `mean` over the domains."""
    path = workspace / "eval" / "metrics.json"
    try:
        models = json.loads(path.read_text())["models"]
    except (OSError, ValueError, KeyError):
        raise FusecliError(f"{path} is missing or has no 'models': see the dvc repro log") from None
    out = {}
    for model, domains in models.items():
        per = {d: dict(s) for d, s in domains.items()}
        keys = sorted({k for s in per.values() for k in s})
        means = {}
        for k in keys:
            values = [s[k] for s in per.values() if isinstance(s.get(k), int | float)]
            means[k] = sum(values) / len(values) if values else None
        out[model] = {**per, "mean": means}
    return out


def summarize(runs: dict[int, dict[str, dict]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per model, domain and score: mean, spread (half the max-min range), min, max and n over the seeds."""
    summary: dict = {}
    for scores in runs.values():
        for model, domains in scores.items():
            for domain, values in domains.items():
                for key, v in values.items():
                    if isinstance(v, int | float) and math.isfinite(v):
                        summary.setdefault(model, {}).setdefault(domain, {}).setdefault(key, []).append(float(v))
    for domains in summary.values():
        for values in domains.values():
            for key, vs in values.items():
                values[key] = {"mean": sum(vs) / len(vs), "spread": (max(vs) - min(vs)) / 2, "min": min(vs),
                               "max": max(vs), "n": len(vs)}
    return summary


ORDER = ("pivot", "source:", "sft_baseline", "fused:", "fuselm", "imf_sft", "imf", "merged:")  # evaluate's order
UNCONTROLLED = ("imf_sft", "imf")  # read no `fuse.teacher`: the control leaves them as they were


def split_control(name: str) -> tuple[int, str]:
    """(0, name) for a model of the main run; (i, the name without the prefix) for the i-th control's."""
    for i, prefix in enumerate(CONTROLS.values(), 1):
        if name.startswith(prefix):
            return i, name.removeprefix(prefix)
    return 0, name


def model_order(models: list[str]) -> list[str]:
    """evaluate's order (pivot, sources, sft_baseline, pair models, fuselm, the implicit rows imf_sft and imf,
    merges), each control's after. Left out: the `merged` alias (the default method's scores again) where the
    methods' own rows are present, and a control's pivot, sources and implicit rows (the same models: a
    control retrains only what reads `fuse`)."""

    def rank(name: str) -> tuple:
        control, base = split_control(name)
        group = next((i for i, p in enumerate(ORDER) if base == p or (p.endswith(":") and base.startswith(p))),
                     len(ORDER))
        return control, group, base

    has_methods = any(split_control(m)[1].startswith("merged:") for m in models)
    shown = [m for m in models if not (has_methods and split_control(m)[1] == "merged")]
    shown = [m for m in shown if not (rank(m)[0] and (rank(m)[1] < ORDER.index("sft_baseline")
                                                      or split_control(m)[1] in UNCONTROLLED))]
    return sorted(shown, key=rank)


def domain_order(summary: dict) -> list[str]:
    return sorted({d for domains in summary.values() for d in domains if d != "mean"}) + ["mean"]


def score_keys(summary: dict, wanted: list[str] | None = None) -> list[str]:
    found = sorted({k for domains in summary.values() for values in domains.values() for k in values})
    return found if wanted is None else [k for k in wanted if k in found]


def cell(stats: dict | None) -> str:
    return "-" if stats is None else f"{stats['mean']:.3f} ± {stats['spread']:.3f}"


def markdown(summary: dict, seeds: list[int], overrides: list[str], scores: list[str] | None = None) -> str:
    """One table per score (em, ce, ...): rows are models, columns the domains and their mean."""
    domains = domain_order(summary)
    controls = [f"`{prefix}` rows: `fuse.teacher: {teacher}`" for teacher, prefix in CONTROLS.items()
                if any(m.startswith(prefix) for m in summary)]
    lines = [f"Mean ± spread ({SPREAD}) over seeds {', '.join(map(str, seeds))}"
             + (f", with {', '.join(f'`{o}`' for o in overrides)}" if overrides else "")
             + "".join(f"; {c}" for c in controls) + ". Generated by `benchmarks/quality.py`.", ""]
    for key in score_keys(summary, scores):
        lines += [f"**{key}**", "", "| model | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
        for model in model_order(list(summary)):
            per = summary[model]
            lines.append(f"| {model} | " + " | ".join(cell(per.get(d, {}).get(key)) for d in domains) + " |")
        lines.append("")
    return "\n".join(lines)


def write_readme(path: Path, table: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace what lies between the marker lines (each alone on its line, so prose may quote them)."""
    lines = path.read_text().split("\n")
    try:
        first = lines.index(begin)
        last = lines.index(end, first + 1)
    except ValueError:
        raise FusecliError(f"{path} has no {begin} ... {end} markers: add them, each on its own line, "
                           "where the table goes") from None
    atomic_write_text(path, "\n".join([*lines[: first + 1], table, *lines[last:]]))


def print_tables(summary: dict, console: Console, scores: list[str] | None = None) -> None:
    domains = domain_order(summary)
    for key in score_keys(summary, scores):
        table = Table(title=f"{key}: mean ± spread ({SPREAD})")
        table.add_column("model")
        for d in domains:
            table.add_column(d, justify="right")
        for model in model_order(list(summary)):
            table.add_row(model, *(cell(summary[model].get(d, {}).get(key)) for d in domains))
        console.print(table)


def run_seed(repo: Path, workdir: Path, seed: int, overrides: list, controls: list[str], sources: str | None,
             progress: Progress, task: Any) -> dict:
    """One seed: the pipeline (with the --sources specialists added), then each control; returns
    {"seed_keys", "sources", "main", "controls": {teacher: scores}}."""
    ws = workdir / f"seed-{seed}"
    if ws.exists():
        shutil.rmtree(ws)
    for old in workdir.glob(f"seed-{seed}*.log"):
        old.unlink()
    progress.update(task, description=f"seed {seed}: copying the workspace")
    copy_workspace(repo, ws)
    keys = configure(ws, seed, overrides)
    added = extra_sources(ws, sources)
    if added:
        progress.update(task, description=f"seed {seed}: building the demo, adding {', '.join(added)}")
        repro(ws, workdir / f"seed-{seed}.log", "build_demo")
        add_demo_sources(ws, added, workdir / f"seed-{seed}.log")
    progress.update(task, description=f"seed {seed}: dvc repro")
    repro(ws, workdir / f"seed-{seed}.log")
    main = read_scores(ws)
    progress.advance(task)
    scores = {}
    for teacher in controls:
        configure(ws, seed, [*overrides, (("fuse", "teacher"), teacher)])
        progress.update(task, description=f"seed {seed}: dvc repro (control: fuse.teacher {teacher})")
        repro(ws, workdir / f"seed-{seed}-{teacher}.log")
        scores[teacher] = read_scores(ws)
        progress.advance(task)
    return {"seed_keys": keys, "sources": sorted(read_lock(ws / "models.lock").sources), "main": main,
            "controls": scores}


def parse_controls(spec: str) -> list[str]:
    """--controls: comma-separated `fuse.teacher` values of CONTROLS, each one more `dvc repro` per seed."""
    names = [c.strip() for c in spec.split(",") if c.strip()]
    for name in names:
        if name not in CONTROLS:
            raise FusecliError(f"--controls {name!r} is unknown: use some of {','.join(CONTROLS)} (or '' for none)")
    return list(dict.fromkeys(names))


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one pipeline run (and control) each")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a params.yaml override applied in every run, e.g. fuse.gate=1.0 (repeatable)")
    ap.add_argument("--controls", default=",".join(CONTROLS),
                    help="fuse.teacher controls rerun per seed: reference (control: rows), pivot (self: rows)")
    ap.add_argument("--sources", metavar="N|NAMES",
                    help="merge more pair models: N sources in all (the lock's, then the demo's other "
                         "specialists), or comma-separated demo model names, e.g. llama-instruments")
    ap.add_argument("--out", type=Path, default=Path("quality.json"), help="per-seed numbers and the summary")
    ap.add_argument("--readme", type=Path, help="write the Markdown tables between the markers of this file")
    ap.add_argument("--scores", help="comma-separated score keys for the tables, e.g. em,ce (default: all)")
    ap.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose working tree is benchmarked")
    ap.add_argument("--workdir", type=Path, help="where the per-seed workspaces go (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the per-seed workspaces")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run side by side (each dvc repro mostly uses one core)")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="run nothing: print (and with --readme write) the tables of a saved --out file")
    args = ap.parse_args(argv)
    scores = [k for k in args.scores.split(",") if k] if args.scores else None
    if args.render:
        saved = json.loads(args.render.read_text())
        print_tables(saved["summary"], Console(), scores)
        if args.readme:
            write_readme(args.readme, markdown(saved["summary"], saved["seeds"], saved["overrides"], scores))
        return
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise FusecliError(f"--seeds {args.seeds!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise FusecliError("--seeds is empty: pass e.g. --seeds 0,1,2")
    overrides = [parse_set(s) for s in args.overrides]
    controls = parse_controls(args.controls)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fusecli-quality-"))
    workdir.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    runs: dict[int, dict] = {}
    started = time.time()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
               "{task.total} runs"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("quality", total=(1 + len(controls)) * len(seeds))
        def one(seed: int) -> dict:
            result = run_seed(args.repo.resolve(), workdir, seed, overrides, controls, args.sources, progress, task)
            if not args.keep:
                shutil.rmtree(workdir / f"seed-{seed}", ignore_errors=True)
            return result

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            runs = dict(zip(seeds, pool.map(one, seeds), strict=True))
    merged = {seed: {**r["main"], **{f"{CONTROLS[t]}{m}": s for t, scores in r["controls"].items()
                                      for m, s in scores.items()}} for seed, r in runs.items()}
    summary = summarize(merged)
    table = markdown(summary, seeds, args.overrides, scores)
    result = {
        "command": shlex.join(["python", "benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "wall_s": round(time.time() - started, 1),
        "seeds": seeds,
        "overrides": args.overrides,
        "seed_keys": runs[seeds[0]]["seed_keys"],
        "controls": controls,
        "sources": runs[seeds[0]]["sources"],
        "spread": SPREAD,
        "runs": {str(seed): scores for seed, scores in merged.items()},
        "summary": summary,
    }
    atomic_write_json(args.out, result)
    print_tables(summary, Console(), scores)
    if args.readme:
        write_readme(args.readme, table)
    console.print(f"wrote {args.out}" + (f" and the tables in {args.readme}" if args.readme else "")
                  + f" ({result['wall_s']:.0f} s; logs in {workdir})")


if __name__ == "__main__":
    main()

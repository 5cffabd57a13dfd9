"""Load (issue 8): fusecli and DVC with 20 sources and a 100,000-row dataset, on a copy of the workspace.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.load [--sources 20] [--rows 100000] [--repeat 5]

Set-up, in a temporary git repo holding a copy of the workspace (as tests/test_pipeline.py makes it):
- models: a tiny random Qwen2 pivot and a tiny random Llama source (tests/tiny.py), the source copied to
  `local/s00` ... `local/s19`; pinned by `fusecli set-pivot` and one `fusecli add-source` per source
  (each timed: the first and the last are reported, to show whether adding gets slower with the lock).
- data: `bench/rows.jsonl`, --rows short single-turn dialogues (OpenAI `messages`, 4 domains, unique),
  made params.yaml's only dataset source.

Measured (wall seconds of the whole command, Python start-up included; median and min of --repeat runs;
CPU = user + system seconds of the command and its children, median):
- build_dataset: `python stages/build_dataset.py` on the rows, alone (also peak RSS), then as
  `dvc repro build_dataset` (the same plus DVC collecting ~80 stages and hashing the outputs).
- With everything up to date: `fusecli list`, `fusecli status`, `dvc status`, `dvc repro --dry` and
  a no-op `dvc repro` (asserted to run no stage, and `fusecli status` to say "up to date"); the no-op
  once more with ruamel.yaml's C parser hidden from DVC, as it runs where ruamel.yaml.clib is missing.

"Up to date" without running the other ~80 stages (extract, align and fuse per source, merges, evaluate,
report): their outputs are placeholders, an empty file or a folder holding one small file, recorded in
dvc.lock by `dvc commit -f`, which hashes the real dependencies (code, model folders, the parquet files)
and those outputs exactly as a finished run would. So the no-op numbers are what DVC and fusecli cost to
decide that nothing changed at this size: collecting the stages from dvc.yaml and models.lock, comparing
params, and checking every dependency and output against dvc.lock (from DVC's state database by mtime
and inode, as after any run). Real outputs hold more files than a placeholder, so checking them stats
more files: an extract store is one file per 256 rows (400 at 100k rows), a model folder a handful.
--scaling adds in-process timings of fusecli's per-source code (lock round trip, the pinned-files
check of `fusecli status`) at 20, 200 and 2,000 sources, to show that they grow linearly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import yaml

from benchmarks._common import machine, markdown_table

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOMAINS = ("sum", "capital", "color", "echo")
# DVC with ruamel.yaml's C parser hidden: what a no-op costs without ruamel.yaml.clib (optional since 0.19).
PURE_YAML_DVC = [sys.executable, "-c", "import sys; sys.modules['_ruamel_yaml'] = None; "
                 "from dvc.cli import main; sys.exit(main(sys.argv[1:]))"]


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false"}


def run(cmd: Sequence[str], cwd: Path) -> tuple[float, float, str]:
    """Run `cmd` in `cwd`; (wall s, CPU s of it and its children, stdout + stderr). Fails loudly."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=cwd, env=env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout + proc.stderr


def repeated(cmd: Sequence[str], cwd: Path, n: int, check: Callable[[str], None] | None = None) -> dict[str, float]:
    """Median and min wall seconds, and median CPU seconds, of `n` runs of `cmd` (each output checked)."""
    walls, cpus = [], []
    for _ in range(n):
        wall, cpu, out = run(cmd, cwd)
        if check is not None:
            check(out)
        walls.append(wall)
        cpus.append(cpu)
    return {"median": statistics.median(walls), "min": min(walls), "cpu": statistics.median(cpus)}


def copy_workspace(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files of this checkout, in a fresh git repo."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.splitlines()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    run(["git", "init", "-q"], dest)


def git_commit(ws: Path, message: str) -> None:
    run(["git", "add", "-A"], ws)
    run(["git", "-c", "user.email=b@b", "-c", "user.name=bench", "commit", "-qm", message], ws)


def make_models(ws: Path, n_sources: int) -> None:
    """local/pivot (Qwen2) and local/s00.. (copies of one Llama): tiny, random, with their own tokenizers."""
    from tests.tiny import write_model

    write_model(ws / "local" / "pivot", arch="qwen2", vocab_size=300, seed=0)
    write_model(ws / "local" / "source", arch="llama", vocab_size=280, seed=1)
    for i in range(n_sources):
        shutil.copytree(ws / "local" / "source", ws / "local" / f"s{i:02d}")
    shutil.rmtree(ws / "local" / "source")


def pin_models(ws: Path, n_sources: int) -> list[float]:
    """A fresh models.lock by the CLI: set-pivot, then add-source per source; wall seconds of each add."""
    (ws / "models.lock").unlink()
    run(["fusecli", "set-pivot", "local/pivot", "--name", "pivot"], ws)
    return [run(["fusecli", "add-source", f"local/s{i:02d}", "--name", f"s{i:02d}"], ws)[0] for i in range(n_sources)]


def row(i: int) -> dict[str, object]:
    """One short, unique dialogue; its domain decides the question's shape."""
    domain = DOMAINS[i % len(DOMAINS)]
    question, answer = {
        "sum": (f"What is {i} plus 7?", str(i + 7)),
        "capital": (f"Name the capital of country number {i}.", f"City {i}"),
        "color": (f"Which color has code {i}?", f"color-{i % 97}"),
        "echo": (f"Repeat the number {i}.", str(i)),
    }[domain]
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"id": f"r{i}", "domain": domain, "messages": messages, "answer": answer}


def make_dataset(ws: Path, n_rows: int) -> None:
    """bench/rows.jsonl, and params.yaml's dataset reading only it."""
    path = ws / "bench" / "rows.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_rows):
            f.write(json.dumps(row(i)) + "\n")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["dataset"]["sources"] = [{"path": "bench/rows.jsonl", "name": "bench"}]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage_outs(ws: Path) -> list[tuple[str, str]]:
    """(stage, output path) of every stage but build_dataset, as DVC expands dvc.yaml with models.lock."""
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:
        return [(s.addressing, str(o.fs_path)) for s in repo.index.stages if s.addressing != "build_dataset"
                for o in s.outs]


def fake_outputs(ws: Path) -> int:
    """A placeholder for every output (a file for names with a suffix, else a folder with one file)."""
    outs = stage_outs(ws)
    for stage, out in outs:
        path = Path(out)
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}\n" if path.suffix == ".json" else f"placeholder of {stage}\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "placeholder.txt").write_text(f"placeholder of {stage}\n")
    return len(outs)


def nothing_ran(out: str) -> None:
    ran = re.findall(r"Running stage '([^']+)'", out) + re.findall(r"Stage '([^']+)' is cached", out)
    assert not ran, f"no-op dvc repro ran {ran}"


def up_to_date(out: str) -> None:
    assert "pipeline up to date" in out, out[-2000:]


def scaling(sizes: Sequence[int], ws: Path) -> list[list[str]]:
    """In-process seconds of fusecli's per-source code at growing source counts (linear = constant per source).

    Each source gets its own folder (hard links to local/s00's files, so 2,000 cost no disk), as the
    hash cache has one entry per file of every pinned model; the pinned-files check is timed on its
    second pass, with every digest cached, as `fusecli status` runs it after the first time.
    """
    from fusecli import hashing
    from fusecli.lock import Lock, dump_lock, parse_lock, read_lock

    lock = read_lock(ws / "models.lock")
    template = lock.sources["s00"]
    cache = ws / hashing.CACHE_FILE
    rows = []
    for n in sizes:
        for i in range(n):
            folder = ws / "local" / "scale" / f"s{i:04d}"
            if not folder.exists():
                shutil.copytree(template.folder(ws), folder, copy_function=os.link)
        entries = {f"s{i:04d}": replace(template, name=f"s{i:04d}", path=f"local/scale/s{i:04d}") for i in range(n)}
        big = Lock(pivot=lock.pivot, sources=entries)
        start = time.perf_counter()
        parse_lock(dump_lock(big))
        round_trip = time.perf_counter() - start
        for _ in range(2):
            start = time.perf_counter()
            for entry in big.sources.values():
                hashing.verify_entry(entry, ws, cache)
            verify = time.perf_counter() - start
        rows.append([f"{n:,}", f"{round_trip:.3f}", f"{1e3 * round_trip / n:.2f}", f"{verify:.3f}",
                     f"{1e3 * verify / n:.2f}"])
    return rows


def fmt(m: dict[str, float]) -> list[str]:
    return [f"{m['median']:.2f}", f"{m['min']:.2f}", f"{m['cpu']:.2f}"]


def bench(ws: Path, args: argparse.Namespace) -> None:
    copy_workspace(ws)
    make_models(ws, args.sources)
    adds = pin_models(ws, args.sources)
    make_dataset(ws, args.rows)
    git_commit(ws, "load benchmark workspace")
    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}", flush=True)

    alone = repeated([sys.executable, "stages/build_dataset.py", "--params", "params.yaml", "--out",
                      str(ws / "scratch" / "data")], ws, 1)
    wall, cpu, out = run(["dvc", "repro", "build_dataset"], ws)
    stage = {"median": wall, "min": wall, "cpu": cpu}
    print(out.strip().splitlines()[-3:], flush=True)

    n_outs = fake_outputs(ws)
    commit_wall = run(["dvc", "commit", "-f"], ws)[0]
    run(["dvc", "status"], ws)  # the first check after the commit fills DVC's state database
    results = {
        "fusecli list": repeated(["fusecli", "list"], ws, args.repeat),
        "fusecli status": repeated(["fusecli", "status"], ws, args.repeat, up_to_date),
        "dvc status": repeated(["dvc", "status"], ws, args.repeat),
        "dvc repro --dry": repeated(["dvc", "repro", "--dry"], ws, args.repeat, nothing_ran),
        "dvc repro (no-op)": repeated(["dvc", "repro"], ws, args.repeat, nothing_ran),
        "dvc repro (no-op), pure-Python YAML": repeated([*PURE_YAML_DVC, "repro"], ws, args.repeat, nothing_ran),
    }
    n_stages = len(set(s for s, _ in stage_outs(ws))) + 1
    print(f"\n{args.sources} sources, {n_stages} stages, {n_outs} placeholder outputs, {args.rows:,} rows; "
          f"`dvc commit -f` {commit_wall:.1f} s; load average after: {os.getloadavg()[0]:.2f}\n")
    print(f"add-source: first {adds[0]:.2f} s, last {adds[-1]:.2f} s, median {statistics.median(adds):.2f} s\n")
    table = [["build_dataset alone", *fmt(alone)], ["dvc repro build_dataset", *fmt(stage)]]
    table += [[name, *fmt(m)] for name, m in results.items()]
    print(markdown_table(["command", "median s", "min s", "CPU s"], table))
    if args.scaling:
        print()
        print(markdown_table(["sources", "lock round trip s", "ms / source", "pinned-files check s",
                              "ms / source"], scaling((20, 200, 2000), ws)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=20)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scaling", action="store_true", help="also time fusecli's per-source code in-process")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace (its path is printed)")
    args = parser.parse_args(argv)
    ws = Path(tempfile.mkdtemp(prefix="fusecli-load-"))
    try:
        bench(ws, args)
    finally:
        if args.keep:
            print(f"workspace kept: {ws}")
        else:
            shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()

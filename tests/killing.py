"""Kill-anywhere harness: SIGKILL `dvc repro` of one stage at a chosen time, and judge what the kill left.

Used by tests/test_kill.py. A stage runs as `dvc repro --single-item --no-run-cache <stage>` in a new
session, so killing its process group kills DVC and the stage command it spawned (same group) at once,
the way a preempted job or an OOM-killed container dies: no handler, no cleanup.

Outputs are compared file by file (sha256) with an uninterrupted run's, except for the values that
are wall-clock measurements (`TIMING_KEYS`): dropped from JSON files, and metric files named after
them (dvclive's `<key>.tsv`) skipped. Everything else must be bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml
from safetensors.numpy import load_file

from tests.test_pipeline import BIN, FAST, ROOT, deep_update, workspace_files

# Tiny like the pipeline test's FAST, but with work to interrupt (a stage spends ~5 s starting Python, torch
# and DVC): twenty extract shards, 96 fuse steps with a checkpoint every 8 (resume), the merge written as
# many output shards. One merge method is enough.
KILL_PARAMS: dict[str, Any] = {
    "demo": {"steps": 10},  # the demo models' quality does not matter here, their build time does
    "dataset": {"sources": [{"path": "demo", "count": 1280, "eval_count": 50}]},
    "extract": {"shard_size": 64},
    "fuse": {"max_steps": 96, "save_steps": 8, "logging_steps": 2},
    "merge": {"method": "sce", "methods": ["sce"], "max_shard_size": "100KB"},
}

# Keys whose values are timings (or derived from one): tokens/s, MFU, runtimes, per-second rates, and
# peak memory, which is allocator noise. Which files hold them: extract's manifest summary (tokens_per_s,
# mfu), fuse's logs/<slug>/selection.json (train_runtime_s, tokens_per_s, mfu, peak_gpu_gib) and
# dvclive's metrics.json (tokens_per_s, train.runtime, train.samples_per_second, train.steps_per_second)
# with the plots/metrics/**/<key>.tsv series of the same names.
TIMING_KEYS = frozenset(
    {"tokens_per_s", "mfu", "train_runtime_s", "peak_gpu_gib", "runtime", "samples_per_second", "steps_per_second"}
)
TEMP_NAME = re.compile(r"^\..+\.(tmp|old)$")  # what fusecli.io leaves mid-write (temps, atomic_dir's old copy)


def env(ws: Path) -> dict[str, str]:
    """The stages import the workspace's copy of fusecli (the code DVC hashed), not the editable install's."""
    path = os.pathsep.join(p for p in (str(ws), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": path,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def repro_cmd(stage: str) -> list[str]:
    """One stage, never restored from DVC's run cache: a rerun must run (or resume) the stage's own code."""
    return ["dvc", "repro", "--single-item", "--no-run-cache", stage]


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(cwd), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return proc.stdout + proc.stderr


def make_workspace(ws: Path) -> Path:
    """A copy of the checkout as its own git repo, with the FAST and KILL_PARAMS settings."""
    for f in workspace_files():
        (ws / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, ws / f)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params = deep_update(deep_update(params, json.loads(json.dumps(FAST))), KILL_PARAMS)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], ws)
    run(["git", "add", "-A"], ws)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "workspace"], ws)
    return ws


def repro_timed(ws: Path, target: str) -> dict[str, float]:
    """Run `dvc repro target` uninterrupted; return each stage's wall time as a lone `repro_cmd` would take
    it (its share of the run, from its 'Running stage' line to the next, plus DVC's start-up)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        ["dvc", "repro", target], cwd=ws, env=env(ws), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines, marks = [], []
    for line in proc.stdout:
        lines.append(line)
        if m := re.search(r"Running stage '([^']+)'", line):
            marks.append((m[1], time.monotonic()))
    if proc.wait() != 0 or not marks:
        raise AssertionError(f"dvc repro {target} failed ({proc.returncode}):\n{''.join(lines)[-4000:]}")
    ends = [t for _, t in marks[1:]] + [time.monotonic()]
    startup = marks[0][1] - start
    return {name: end - t + startup for (name, t), end in zip(marks, ends, strict=True)}


def stage_outs(ws: Path, stage: str) -> dict[str, bool]:
    """The stage's outputs (paths relative to the workspace) -> persist (DVC keeps them across runs)."""
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:
        (collected,) = repo.stage.collect(stage)
        return {out.def_path: bool(out.persist) for out in collected.outs}


# --- comparing outputs ---------------------------------------------------------------------------------


def _drop_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_drop_timings(v) for v in obj]
    return obj


def comparable(path: Path) -> bytes | None:
    """The bytes to compare: JSON without its timing keys; None for a timing series (not compared)."""
    if path.suffix == ".tsv" and path.stem in TIMING_KEYS:
        return None
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            return json.dumps(_drop_timings(json.loads(data)), sort_keys=True).encode()
        except ValueError:
            return data  # a broken file: compared raw, so it differs
    return data


def snapshot(ws: Path, outs: list[str]) -> dict[str, str]:
    """sha256 of every comparable file under `outs`, by path relative to the workspace."""
    hashes = {}
    for out in outs:
        for f in sorted(p for p in (ws / out).rglob("*") if p.is_file()):
            data = comparable(f)
            if data is not None:
                hashes[f.relative_to(ws).as_posix()] = hashlib.sha256(data).hexdigest()
    return hashes


def has_timings(ws: Path, out: str) -> bool:
    """Whether the folder holds a timing value, so its DVC hash legitimately differs between runs."""
    return any(comparable(f) != f.read_bytes() for f in (ws / out).rglob("*") if f.is_file())


def diff(got: dict[str, str], want: dict[str, str]) -> str:
    lines = [f"  missing: {p}" for p in sorted(set(want) - set(got))]
    lines += [f"  extra:   {p}" for p in sorted(set(got) - set(want))]
    lines += [f"  differs: {p}" for p in sorted(set(got) & set(want)) if got[p] != want[p]]
    return "\n".join(lines)


# --- what a kill may leave -----------------------------------------------------------------------------


def _records(tensors: dict[str, Any]) -> int:
    name = next(n for n in tensors if not n.endswith(".offsets"))
    offsets = tensors.get(f"{name}.offsets")
    return len(offsets) - 1 if offsets is not None else len(tensors[name])


def store_problems(root: Path) -> list[str]:
    """A store's manifest may only list shards that exist whole with the records it says they hold."""
    manifest = json.loads((root / "manifest.json").read_text())
    problems = []
    for shard in manifest["shards"]:
        if shard["file"] is None:
            continue
        path = root / shard["file"]
        if not path.is_file():
            problems.append(f"{path}: listed in the manifest but missing")
        elif _records(load_file(path)) != shard["records"]:
            problems.append(f"{path}: holds another record count than the manifest lists")
    if manifest["records"] != sum(s["records"] for s in manifest["shards"]):
        problems.append(f"{root}/manifest.json: the record total disagrees with its shards")
    return problems


def file_problems(root: Path) -> list[str]:
    """Every file with a final name (not a hidden temp file) parses: safetensors, JSON, index, manifest."""
    problems = []
    for f in sorted(root.rglob("*")):
        if not f.is_file() or any(part.startswith(".") for part in f.relative_to(root).parts):
            continue
        try:
            if f.suffix == ".safetensors":
                load_file(f)
            elif f.suffix == ".json":
                json.loads(f.read_text())
        except Exception as exc:  # noqa: BLE001 (any failure to read is the finding)
            problems.append(f"{f}: unreadable ({type(exc).__name__}: {exc})")
    if not problems and (root / "manifest.json").is_file():
        problems += store_problems(root)
    index = root / "model.safetensors.index.json"
    if not problems and index.is_file():
        listed = set(json.loads(index.read_text())["weight_map"].values())
        problems += [f"{root / n}: in the index but missing" for n in sorted(listed) if not (root / n).is_file()]
    return problems


def claims_complete(root: Path) -> bool:
    """What a reader takes as finished: a store whose manifest says complete, or a model folder (config.json)."""
    manifest = root / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("complete") is True
    return (root / "config.json").is_file()


def debris(ws: Path, outs: list[str]) -> list[str]:
    """Temp files and folders of interrupted writes inside the outputs or beside them (their parent folder
    is often a dependency of a later stage: `fused`, `merged`, `align`)."""
    found = set()
    for out in outs:
        root = ws / out
        for p in [*root.parent.iterdir(), *(root.rglob("*") if root.is_dir() else [])]:
            if TEMP_NAME.match(p.name):
                found.add(p.relative_to(ws).as_posix())
    return sorted(found)


# --- dvc.lock ------------------------------------------------------------------------------------------


def lock_entry(ws: Path, stage: str) -> dict | None:
    path = ws / "dvc.lock"
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {}).get(stage) if path.exists() else None


def invalidate(ws: Path, stage: str) -> None:
    """Forget the stage's last run (as if its inputs had changed), so `dvc repro` must run its command."""
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    lock["stages"].pop(stage, None)
    (ws / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def out_hashes(entry: dict) -> dict[str, str]:
    return {o["path"]: o["md5"] for o in entry.get("outs", [])}


# --- killing -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    delay: float  # seconds after the start at which the kill was sent
    killed: bool  # False: the run finished first
    phase: str  # "dvc": before the stage's command started; "stage": the command or DVC's commit after it
    log: str


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's whole process group, and any descendant that left it; wait until all are gone."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(family, timeout=30)


def repro_and_kill(ws: Path, stage: str, delay: float, log_path: Path) -> Attempt:
    """Start `repro_cmd(stage)` and SIGKILL it after `delay` seconds unless it finished."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            repro_cmd(stage), cwd=ws, env=env(ws), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout=delay)
            killed = False
        except subprocess.TimeoutExpired:
            kill_group(proc)
            killed = True
    text = log_path.read_text(errors="replace")
    if not killed and proc.returncode != 0:
        raise AssertionError(f"{stage} failed on its own ({proc.returncode}):\n{text[-4000:]}")
    return Attempt(delay, killed, "stage" if "Running stage" in text else "dvc", text)


def describe(ws: Path, outs: list[str]) -> str:
    """A one-line picture of the outputs after a kill, for the log."""
    parts = []
    for out in outs:
        root = ws / out
        if not root.exists():
            parts.append(f"{out}: absent")
        elif (root / "manifest.json").is_file():
            m = json.loads((root / "manifest.json").read_text())
            parts.append(f"{out}: {len(m['shards'])} shards listed, complete={m['complete']}")
        else:
            parts.append(f"{out}: {sum(1 for p in root.rglob('*') if p.is_file())} files")
    if checkpoints := sorted(p.name for p in (ws / "scratch").glob("*/checkpoint-*")):
        parts.append(f"checkpoints {checkpoints}")
    if temp := debris(ws, outs):
        parts.append(f"temp {temp}")
    return "; ".join(parts)


def kill_fractions(rng: Any, n: int) -> list[float]:
    """n points in [0, 1), one uniform draw in each of n equal strata, in shuffled order: uniform overall,
    yet spread over the whole stage whatever n."""
    strata = list(range(n))
    rng.shuffle(strata)
    return [(s + rng.random()) / n for s in strata]


@dataclass
class Reference:
    """An uninterrupted run of one stage: its outputs' comparable hashes and its dvc.lock entry."""

    outs: dict[str, bool]  # path -> persist
    files: dict[str, str]
    lock: dict
    timed_outs: frozenset[str]  # outputs whose DVC hash includes a timing value

    @classmethod
    def take(cls, ws: Path, stage: str) -> Reference:
        outs = stage_outs(ws, stage)
        lock = lock_entry(ws, stage)
        assert lock is not None, f"{stage} has no dvc.lock entry after the uninterrupted run"
        timed = frozenset(o for o in outs if has_timings(ws, o))
        return cls(outs, snapshot(ws, list(outs)), lock, timed)

    def after_kill_problems(self, ws: Path, stage: str, removing: dict[str, str] | None) -> list[str]:
        """No partial output is readable as complete, and DVC recorded the stage only with whole outputs.

        `removing`: the kill came before the stage's command started, while DVC deletes the previous
        outputs (given: their snapshot) file by file, which is not fusecli's to make atomic: what is left
        must be whole files of them, and DVC reruns the stage (fusecli's readers refuse a store or model
        folder with files missing). Persistent outputs (fuse's dvclive logs) are a run's progress,
        rewritten in place by the rerun: they are judged after it, with the rest.
        """
        problems = []
        for out, persist in self.outs.items():
            root = ws / out
            if persist or not root.exists():
                continue
            if removing is not None:
                left = {p: h for p, h in snapshot(ws, [out]).items() if removing.get(p) != h}
                problems += [f"{p}: left by DVC's removal of the outputs, but not theirs" for p in sorted(left)]
                continue
            problems += file_problems(root)
            if claims_complete(root):
                if d := diff(snapshot(ws, [out]), {p: h for p, h in self.files.items() if p.startswith(f"{out}/")}):
                    problems.append(f"{out} reads as complete but is not the uninterrupted run's:\n{d}")
        entry = lock_entry(ws, stage)
        if entry is not None:
            problems += self.recorded_problems(ws, entry)
        return problems

    def recorded_problems(self, ws: Path, entry: dict) -> list[str]:
        """dvc.lock's entry must describe the uninterrupted run's outputs, and the workspace must hold them."""
        problems = []
        if d := diff(snapshot(ws, list(self.outs)), self.files):
            problems.append(f"dvc.lock records the stage but its outputs differ from the uninterrupted run's:\n{d}")
        got, want = out_hashes(entry), out_hashes(self.lock)
        for out in set(want) - self.timed_outs:
            if got.get(out) != want[out]:
                problems.append(f"dvc.lock records {out} as {got.get(out)}, the uninterrupted run as {want[out]}")
        return problems

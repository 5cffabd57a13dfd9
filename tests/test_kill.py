"""Kill anywhere (issue 8): SIGKILL `dvc repro` mid-stage, rerun, and get the uninterrupted run's outputs.

The harness (marked slow): a workspace runs the pipeline up to merge@sce once, uninterrupted (the
reference, and each stage's wall time). Then, per stage (one extract@, align@ and fuse@ source, and
merge@sce), the stage is made stale and `dvc repro` of it is SIGKILLed KILL_ROUNDS times, at seeded
uniform random times over the stage's measured duration (one draw per equal slice of it, so kills land
early, late and mid-work), restarting it after each kill as a user would. After each kill: every
safetensors/JSON file with a final name parses, store manifests list only whole shards, an output that
reads as complete (a complete manifest, a model folder) is the reference's, and a dvc.lock entry for
the stage describes the reference's outputs. After every KILL_CHAIN kills, one last `dvc repro` runs to
the end, and every output file must equal the reference's, sha256 by sha256 (timing values excepted:
tests/killing.py, TIMING_KEYS), with no temp debris left beside them.

    KILL_SEED=123 pytest tests/test_kill.py     # replay a seed (each run prints the one it drew, -s shows it)
    make soak                                   # KILL_ROUNDS=50 per stage

The fast tests below pin each bug the harness found, deterministically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from transformers import TrainerCallback

from fusecli.fuse import train as train_mod
from fusecli.workspace import recover
from tests.fuse import test_train as fuse_tests
from tests.fuse.test_train import pair  # noqa: F401 (a fixture, used by name)
from tests.killing import (
    Reference,
    comparable,
    debris,
    describe,
    diff,
    invalidate,
    kill_fractions,
    lock_entry,
    make_workspace,
    repro_and_kill,
    repro_cmd,
    repro_timed,
    run,
    snapshot,
)

pytestmark = pytest.mark.slow  # kills and resumes real stage processes: make test, not make test-fast

SOURCE = "llama-crops"
STAGES = (f"extract@{SOURCE}", f"align@{SOURCE}", f"fuse@{SOURCE}", "merge@sce")
ROUNDS = int(os.environ.get("KILL_ROUNDS", "5"))  # kills per stage
CHAIN = int(os.environ.get("KILL_CHAIN", "5"))  # kills before each run to completion
SEED = int(os.environ.get("KILL_SEED") or random.SystemRandom().randrange(2**32))


# --- the harness ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killing_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float], dict[str, Reference]]:
    """The workspace after one uninterrupted run to merge@sce, each stage's duration, and its reference."""
    ws = make_workspace(tmp_path_factory.mktemp("kill-ws"))
    durations = repro_timed(ws, "merge@sce")
    return ws, durations, {stage: Reference.take(ws, stage) for stage in STAGES}


def finish(ws: Path, stage: str, ref: Reference, where: str) -> None:
    """Rerun to completion: the reference's outputs, recorded in dvc.lock, nothing half-written left over."""
    run(repro_cmd(stage), ws)
    entry = lock_entry(ws, stage)
    assert entry is not None, f"{where}: the rerun did not record {stage} in dvc.lock"
    assert not (problems := ref.recorded_problems(ws, entry)), f"{where}:\n" + "\n".join(problems)
    assert not (left := debris(ws, list(ref.outs))), f"{where}: interrupted writes left {left}"


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_killed_stage_reruns_to_the_uninterrupted_outputs(killing_ws, stage: str, tmp_path: Path) -> None:
    ws, durations, refs = killing_ws
    ref, duration = refs[stage], durations[stage]
    fractions = kill_fractions(random.Random(f"{SEED}:{stage}"), ROUNDS)
    print(f"KILL_SEED={SEED} {stage}: {ROUNDS} kills over {duration:.1f} s, a full rerun every {CHAIN}")
    for start in range(0, ROUNDS, CHAIN):
        invalidate(ws, stage)
        for i, u in enumerate(fractions[start : start + CHAIN], start):
            before = snapshot(ws, list(ref.outs))
            attempt = repro_and_kill(ws, stage, u * duration, tmp_path / f"kill-{i}.log")
            where = f"KILL_SEED={SEED} {stage} kill #{i} at {u:.3f} x {duration:.1f} s = {attempt.delay:.2f} s"
            state = "finished first" if not attempt.killed else f"killed in {attempt.phase}"
            for repaired in recover(ws):  # `fusecli recover`: DVC's own files, which DVC writes in place
                state += f"; fusecli recover: {repaired}"
            print(f"  #{i} {u:.3f} -> {attempt.delay:5.2f} s {state}: {describe(ws, list(ref.outs))}")
            removing = before if attempt.killed and attempt.phase == "dvc" else None  # DVC deleting the outputs
            problems = ref.after_kill_problems(ws, stage, removing)
            assert not problems, f"{where}:\n" + "\n".join(problems) + f"\n--- dvc output ---\n{attempt.log[-3000:]}"
            if lock_entry(ws, stage) is not None:  # it finished before the kill: make it stale again
                invalidate(ws, stage)
        finish(ws, stage, ref, f"KILL_SEED={SEED} {stage} rerun after kills #{start}..{i}")


@pytest.mark.slow
def test_references_hold_model_data_and_outlive_the_kills(killing_ws) -> None:
    """The comparison compares something, and the kill tests left every stage's outputs as they found them."""
    ws, _, refs = killing_ws
    for stage, ref in refs.items():
        assert any(p.endswith(".safetensors") for p in ref.files), f"{stage}: no safetensors in {list(ref.outs)}"
        assert not diff(snapshot(ws, list(ref.outs)), ref.files), f"{stage}: outputs changed"


# --- what it found, pinned -----------------------------------------------------------------------------




def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)


def test_vocab_map_file_is_byte_identical_across_processes(tmp_path: Path) -> None:
    """safetensors wrote metadata in a per-process hash order: align/<slug> changed hash on every run."""
    code = (
        "import numpy as np, sys; from fusecli.align.stage import save_sorted\n"
        "meta = {k: str(i) for i, k in enumerate(['kind', 'method', 'vocab_map', 'k', 'pivot_vocab', 'src'])}\n"
        "sys.stdout.buffer.write(save_sorted({'a': np.arange(3), 'b': np.ones(2, np.float32)}, meta))"
    )
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout for _ in range(4)}
    assert len(outs) == 1


@pytest.mark.parametrize("write", ["atomic_dir", "atomic_write_bytes", "remove_tree"])
def test_a_killed_writers_temp_is_swept_by_the_next_write(tmp_path: Path, write: str) -> None:
    """SIGKILL runs no clean-up: temps beside an output (in fused/, merged/, align/) outlived every rerun."""
    target = tmp_path / "out" / "model"
    die = "os.kill(os.getpid(), signal.SIGKILL)"
    code = {
        "atomic_dir": f"with io.atomic_dir(t) as tmp:\n    (tmp / 'w').write_text('partial')\n    {die}",
        "atomic_write_bytes": f"os.replace = lambda *a: {die}\nio.atomic_write_bytes(t, b'partial')",
        "remove_tree": f"t.mkdir(parents=True)\nio.shutil.rmtree = lambda *a, **k: {die}\nio.remove_tree(t)",
    }[write]
    head = f"import os, signal\nfrom pathlib import Path\nfrom fusecli import io\nt = Path({str(target)!r})\n"
    proc = _python(head + code, Path(__file__).parents[1])
    assert proc.returncode == -9, proc.stderr
    assert any(p.name.endswith(".tmp") for p in target.parent.iterdir()), "the kill left no temp: test is void"
    from fusecli import io

    if write == "atomic_dir":
        with io.atomic_dir(target) as tmp:
            (tmp / "w").write_text("whole")
    elif write == "atomic_write_bytes":
        io.atomic_write_bytes(target, b"whole")
    else:
        io.sweep_stale(target)  # what fuse does on start for its scratch folder
    assert [p.name for p in target.parent.iterdir()] == ([] if write == "remove_tree" else ["model"])


def test_a_checkpoint_killed_mid_save_is_not_resumed_from(tmp_path: Path) -> None:
    """The Trainer resumed from the highest checkpoint-N whatever its state: every rerun then failed."""
    from fusecli.fuse.train import last_complete_checkpoint

    for step, state in ((4, {"global_step": 4}), (8, {"global_step": 8}), (12, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        if state is not None:
            (folder / "trainer_state.json").write_text(json.dumps(state))
    (tmp_path / "checkpoint-16").mkdir()
    (tmp_path / "checkpoint-16" / "trainer_state.json").write_text('{"global_step": 1')  # cut mid-write
    assert last_complete_checkpoint(tmp_path, clean=False) == tmp_path / "checkpoint-8"
    assert last_complete_checkpoint(tmp_path, clean=True) == tmp_path / "checkpoint-8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]


class KillAt(TrainerCallback):
    """Interrupt training after step `step` (the pipeline's kill, in process)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_fuse_resumed_mid_epoch_matches_an_uninterrupted_run(request, monkeypatch) -> None:
    """Three resume bugs: the Trainer drew a later epoch's data order from the RNG as seeded at start-up
    (other weights); dvclive resumed after its own last step, past the checkpoint (steps logged twice,
    the curve shifted); train_loss averaged only the steps after the resume."""
    d = request.getfixturevalue("pair")  # tests/fuse/test_train.py's pivot, stores and data: 2 steps an epoch
    args = (str(d / "pivot"), str(d / "extract"), [str(d / "align")], str(d / "train.parquet"))
    params = dataclasses.replace(fuse_tests.params(d), save_steps=3, logging_steps=1, scratch=str(d / "kill-scratch"))
    train_mod.train(*args, str(d / "kill-a"), str(d / "kill-logs-a"), params)
    original = train_mod.FusionTrainer.__init__

    def with_kill(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        original(self, *a, **kw)
        self.add_callback(KillAt(5))  # the checkpoint is step 3, mid-epoch 2; dvclive has logged step 5

    monkeypatch.setattr(train_mod.FusionTrainer, "__init__", with_kill)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(*args, str(d / "kill-b"), str(d / "kill-logs-b"), params)
    monkeypatch.setattr(train_mod.FusionTrainer, "__init__", original)
    train_mod.train(*args, str(d / "kill-b"), str(d / "kill-logs-b"), params)

    a, b = load_file(d / "kill-a" / "model.safetensors"), load_file(d / "kill-b" / "model.safetensors")
    assert [k for k in a if not np.array_equal(a[k], b[k])] == []

    def logs(root: Path) -> dict[str, bytes | None]:
        return {p.relative_to(root).as_posix(): comparable(p) for p in sorted(root.rglob("*")) if p.is_file()}

    la, lb = logs(d / "kill-logs-a"), logs(d / "kill-logs-b")
    assert la.keys() == lb.keys()
    assert sorted(k for k in la if la[k] != lb[k]) == []
    steps = np.loadtxt(d / "kill-logs-b" / "plots" / "metrics" / "loss.tsv", skiprows=1)[:, 0]
    assert len(set(steps)) == len(steps), "a step logged twice"


def test_recover_cuts_a_torn_dvc_lock_back_to_whole_entries_and_drops_a_torn_rwlock(tmp_path: Path) -> None:
    """DVC writes dvc.lock and .dvc/tmp/rwlock in place: a kill mid-write stopped every later `dvc` command."""
    from dvc.repo import Repo

    from fusecli.workspace import _lock_valid, _repair_dvc_lock

    Repo.init(str(tmp_path), no_scm=True).close()
    md5 = "5d41402abc4b2a76b9719d911017c592"
    out = f"    - path: x\n      hash: md5\n      md5: {md5}\n      size: 1\n"
    whole = "schema: '2.0'\nstages:\n" + "".join(
        f"  s@{i}:\n    cmd: echo {i}\n    deps:\n{out}    outs:\n{out}" for i in range(3)
    )
    assert _lock_valid(whole)
    (tmp_path / ".dvc" / "tmp").mkdir(exist_ok=True)
    rwlock = tmp_path / ".dvc" / "tmp" / "rwlock"
    for cut in range(len(whole)):  # every place a kill can cut it; the whole repair (with DVC's lock) at some
        (tmp_path / "dvc.lock").write_text(whole[:cut])
        if cut % 40 == 0:
            rwlock.write_text('{"read": {}, "wri')
            assert recover(tmp_path) and not rwlock.exists()
        else:
            _repair_dvc_lock(tmp_path / "dvc.lock")
        text = (tmp_path / "dvc.lock").read_text()
        assert _lock_valid(text), cut
        assert whole.startswith(text) or text == "schema: '2.0'\nstages: {}\n", cut
    assert recover(tmp_path) == []

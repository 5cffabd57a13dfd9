"""Stages take their thread count from params.yaml, so OMP_NUM_THREADS changes no output byte."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import fusecli.runtime
from fusecli.errors import FusecliError
from fusecli.runtime import RuntimeParams
from tests.killing import comparable
from tests.tiny import write_dataset, write_model

ROOT = Path(__file__).resolve().parents[1]

# A sum over 1M elements: torch splits it into one chunk per thread, so its last bits follow the count.
REDUCE = (
    "import sys, torch\n"
    "if sys.argv[1] == 'pinned':\n"
    "    from fusecli.runtime import pin_runtime\n"
    "    pin_runtime(sys.argv[2])\n"
    "x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))\n"
    "print(torch.get_num_threads(), x.sum().item().hex())\n"
)


def _python(code_or_file: list[str], omp: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": omp, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, *code_or_file], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_a_pinned_run_gives_the_same_bits_whatever_omp_num_threads_says(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("runtime:\n  threads: 2\n  deterministic: true\n")
    free = {omp: _python(["-c", REDUCE, "free"], omp, tmp_path) for omp in ("1", "3")}
    assert free["1"] != free["3"], "the control: unpinned, the thread count changes the sum"
    pinned = {omp: _python(["-c", REDUCE, "pinned", str(params)], omp, tmp_path) for omp in ("1", "3")}
    assert pinned["1"] == pinned["3"] and pinned["1"].startswith("2 ")


ARGS = {  # each stage's other required arguments, naming files that do not exist
    "extract": ["--model", "pivot", "--data", "d"],
    "fuse": ["--data", "d", "--pivot-extract", "e", "--align", "a", "--live-dir", "l"],
    "merge": ["--base", "b"],
    "evaluate": ["--data", "d"],
}


@pytest.mark.parametrize("stage", sorted(ARGS))
def test_every_torch_stage_pins_its_threads_before_any_work(stage, monkeypatch, tmp_path):
    class Pinned(Exception):
        pass

    def pin(params):
        raise Pinned(params)

    monkeypatch.setattr(fusecli.runtime, "pin_runtime", pin)
    argv = ["--params", "p.yaml", "--out", "o", *ARGS[stage]]
    monkeypatch.setattr(sys, "argv", [f"stages/{stage}.py", *argv])
    monkeypatch.chdir(tmp_path)  # no models.lock, no data: any work before pinning would fail otherwise
    with pytest.raises(Pinned, match="p.yaml"):
        runpy.run_path(str(ROOT / "stages" / f"{stage}.py"), run_name="__main__")


def test_runtime_threads_must_be_positive():
    with pytest.raises(FusecliError, match=r"runtime.threads = 0 must be >= 1"):
        RuntimeParams(threads=0).validate()


@pytest.mark.slow
def test_the_extract_stage_writes_the_same_bytes_under_any_omp_num_threads(tmp_path: Path, monkeypatch):
    """The whole stage, as dvc.yaml runs it, twice: 1 and 3 threads in the environment, 2 in params.yaml."""
    from typer.testing import CliRunner

    from fusecli.cli import app

    ws = tmp_path
    monkeypatch.chdir(ws)
    write_model(ws / "pivot")
    assert CliRunner().invoke(app, ["set-pivot", "pivot"]).exit_code == 0
    write_dataset(ws / "train.parquet", 24)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["extract"].update(max_length=64, batch_tokens=512, shard_size=8, device="cpu")
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    for omp in ("1", "3"):
        _python([str(ROOT / "stages" / "extract.py"), "--params", "params.yaml", "--lock", "models.lock",
                 "--model", "pivot", "--data", "train.parquet", "--out", f"out{omp}"], omp, ws)
    files = sorted(p.relative_to(ws / "out1") for p in (ws / "out1").rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(ws / "out3") for p in (ws / "out3").rglob("*") if p.is_file())
    for f in files:
        assert comparable(ws / "out1" / f) == comparable(ws / "out3" / f), f

"""Fusion settings on the demo world, side by side (issue 2): per setting, the SFT baseline, the two pair-fused
models and four merges, scored on the held-out questions. Runs the stage functions directly on a workspace
that already ran `dvc repro` up to the align stages (data/, extract/pivot, align/<slug>).

    cd WORKSPACE && python -m benchmarks.demo_sweep "epochs=2" "learning_rate=0.0005,epochs=10"

Each argument overrides `fuse` keys of the workspace's params.yaml; prints exact match per model and domain.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import polars as pl

from fusecli.config import load_section
from fusecli.evaluate.params import EvalParams
from fusecli.evaluate.run import EvalModel, score_model
from fusecli.fuse.train import FuseParams, train
from fusecli.lock import read_lock
from fusecli.merge import merge_models, merge_params

METHODS = ("sce", "linear", "ties", "task_arithmetic")


def run_setting(spec: str, base: FuseParams, pivot: str, sources: list[str], out: Path) -> dict[str, dict]:
    overrides = dict(kv.split("=") for kv in spec.split(","))
    params = dataclasses.replace(
        base, **{k: type(getattr(base, k))(v) for k, v in overrides.items()}, logging_steps=10**6, save_steps=10**6
    )
    root = out / spec
    train(pivot, "extract/pivot", [], "data/train.parquet", str(root / "sft"), str(root / "sft-logs"),
          dataclasses.replace(params, lam=1.0))  # fmt: skip
    for s in sources:
        logs = str(root / f"{s}-logs")
        train(pivot, "extract/pivot", [f"align/{s}"], "data/train.parquet", str(root / s), logs, params)
    for method in METHODS:
        merge_models(pivot, [(s, root / s) for s in sources], merge_params(method), root / f"merged-{method}")
    models = {"sft": root / "sft", **{s: root / s for s in sources}, **{m: root / f"merged-{m}" for m in METHODS}}
    data = pl.read_parquet("data/eval.parquet")
    params = load_section(EvalParams, "evaluate", "params.yaml")
    return {name: score_model(EvalModel(name, str(path)), data, params) for name, path in models.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="+", help="KEY=VALUE[,KEY=VALUE] of the fuse section")
    ap.add_argument("--out", type=Path, default=Path("scratch/demo-sweep"))
    args = ap.parse_args()
    base = load_section(FuseParams, "fuse", "params.yaml")
    lock = read_lock("models.lock")
    for spec in args.settings:
        t0 = time.perf_counter()
        scores = run_setting(spec, base, lock.pivot.path, list(lock.sources), args.out)
        print(f"{spec} ({time.perf_counter() - t0:.0f} s)")
        for name, domains in scores.items():
            print(f"  {name:16s}", {d: round(v["em"], 3) for d, v in domains.items()})


if __name__ == "__main__":
    main()

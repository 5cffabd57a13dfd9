"""The dress rehearsal's bookkeeping (issue 9): time `dvc repro`'s stages and summarise a run.

    dvc repro 2>&1 | python -m benchmarks.rehearsal_report tee out/full.json
    python -m benchmarks.rehearsal_report summary --workspace WS --runs out/full.json out/incremental.json

`tee` passes DVC's output through, each line prefixed with the seconds since start, and writes each
stage's wall time (from its "Running stage" line to the next stage's, or the end) and the stages
DVC ran or skipped. `summary` prints a markdown report: per-stage wall time, tokens/s, MFU and peak
GPU memory of extraction and fusion (from the stages' own metrics), and the runs' totals.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

RUNNING = re.compile(r"Running stage '([^']+)'")
SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")


def tee(out: Path) -> None:
    t0 = time.perf_counter()
    starts: list[tuple[str, float]] = []
    skipped: list[str] = []
    for line in sys.stdin:
        now = time.perf_counter() - t0
        sys.stdout.write(f"[{now:7.1f}s] {line}")
        sys.stdout.flush()
        if m := RUNNING.search(line):
            starts.append((m.group(1), now))
        elif m := SKIPPED.search(line):
            skipped.append(m.group(1))
    total = time.perf_counter() - t0
    ends = [t for _, t in starts[1:]] + [total]
    stages = {name: round(end - start, 1) for (name, start), end in zip(starts, ends, strict=True)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"total_s": round(total, 1), "stages": stages, "skipped": skipped}, indent=1))


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(value: object, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def stage_metrics(ws: Path, stage: str) -> dict:
    """tokens/s, MFU and peak GPU memory the stage recorded itself."""
    name, _, item = stage.partition("@")
    if name == "extract_pivot":
        return _read(ws / "extract/pivot/manifest.json").get("summary", {})
    if name == "extract":
        return _read(ws / "extract/sources" / item / "manifest.json").get("summary", {})
    if name == "fuse":
        return _read(ws / "logs/fuse" / item / "selection.json")
    if name in ("fuse_all", "sft_baseline"):
        return _read(ws / "logs" / name / "selection.json")
    return {}


def summary(ws: Path, runs: list[Path]) -> str:
    lines = []
    for run in runs:
        data = _read(run)
        lines += [f"### {run.stem}: {data.get('total_s', 0):.0f} s in all", ""]
        lines += ["| stage | wall s | tokens/s | MFU | peak GiB/GPU |", "| --- | --- | --- | --- | --- |"]
        for stage, seconds in data.get("stages", {}).items():
            m = stage_metrics(ws, stage)
            mfu = f"{m['mfu']:.1%}" if isinstance(m.get("mfu"), float) else "-"
            lines.append(
                f"| {stage} | {seconds:.1f} | {_fmt(m.get('tokens_per_s'), ',.0f')} | {mfu} "
                f"| {_fmt(m.get('peak_gpu_gib'), '.1f')} |"
            )
        if data.get("skipped"):
            lines += ["", f"Skipped (unchanged): {', '.join(data['skipped'])}."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tee")
    t.add_argument("out", type=Path)
    s = sub.add_parser("summary")
    s.add_argument("--workspace", type=Path, required=True)
    s.add_argument("--runs", type=Path, nargs="+", required=True)
    args = ap.parse_args()
    if args.cmd == "tee":
        tee(args.out)
    else:
        print(summary(args.workspace, args.runs))


if __name__ == "__main__":
    main()

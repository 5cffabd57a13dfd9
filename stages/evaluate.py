"""Stage evaluate: score every model the pipeline made or used, per held-out domain."""

from __future__ import annotations

import argparse
from pathlib import Path

from fusecli.config import load_section
from fusecli.errors import fail_cleanly
from fusecli.evaluate.run import EvalModel, EvalParams, evaluate, report_markdown
from fusecli.io import atomic_write_json, atomic_write_text
from fusecli.lock import read_lock


@fail_cleanly
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--lock", default="models.lock")
    ap.add_argument("--data", required=True)
    ap.add_argument("--fused-dir", default="fused")
    ap.add_argument("--baseline", default="baseline/sft")
    ap.add_argument("--merged", default="merged")
    ap.add_argument("--out", default="eval")
    args = ap.parse_args()
    params = load_section(EvalParams, "evaluate", args.params)
    lock = read_lock(args.lock)
    models = [EvalModel("pivot", lock.pivot.path, lock.pivot.trust_remote_code)]
    for slug in sorted(lock.sources):
        e = lock.sources[slug]
        models.append(EvalModel(f"source:{slug}", e.path, e.trust_remote_code))
    models.append(EvalModel("sft_baseline", args.baseline, lock.pivot.trust_remote_code))
    for slug in sorted(lock.sources):
        models.append(EvalModel(f"fused:{slug}", str(Path(args.fused_dir) / slug), lock.pivot.trust_remote_code))
    models.append(EvalModel("merged", args.merged, lock.pivot.trust_remote_code))
    metrics = evaluate(models, args.data, params)
    atomic_write_json(Path(args.out) / "metrics.json", metrics)
    atomic_write_text(Path(args.out) / "report.md", report_markdown(metrics))
    print(report_markdown(metrics))


if __name__ == "__main__":
    main()

"""Stage evaluate: score every model the pipeline made or used, per held-out domain.

python stages/evaluate.py --params params.yaml --lock models.lock --data data/eval.parquet --fused-dir fused
  --fused-all fused_all --baseline baseline/sft --merged-dir merged --imf-sft imf/sft --imf imf/dpo --out eval
"""

from __future__ import annotations

import sys
from pathlib import Path

from fusecli.config import load_section, stage_parser
from fusecli.errors import fail_cleanly
from fusecli.evaluate.cache import DEFAULT_DIR
from fusecli.evaluate.params import EvalParams
from fusecli.evaluate.stage import pipeline_models, run
from fusecli.evaluate.summary import terminal_summary
from fusecli.evaluate.tables import report_markdown
from fusecli.hashing import verify_pinned
from fusecli.io import atomic_write_json, atomic_write_text
from fusecli.lock import read_lock
from fusecli.plan import merge_methods
from fusecli.runtime import start_stage


@fail_cleanly
def main() -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--fused-dir", default="fused")
    ap.add_argument("--fused-all", default="fused_all", help="the FuseLLM-style student of every source (fuselm)")
    ap.add_argument("--baseline", default="baseline/sft")
    ap.add_argument("--merged-dir", default="merged", help="holds merged/<method>/ for every merge.methods")
    ap.add_argument("--imf-sft", default="imf/sft", help="implicit fusion: the pivot trained on the best responses")
    ap.add_argument("--imf", default="imf/dpo", help="implicit fusion: imf_sft after preference training")
    ap.add_argument("--out", default="eval")
    ap.add_argument("--cache-dir", default=str(DEFAULT_DIR), help="per-model result cache; '' turns it off")
    args = ap.parse_args()
    start_stage(args.params, args.lock)  # threads and kernels from params.yaml, then the preflight
    params = load_section(EvalParams, "evaluate", args.params)
    merge = merge_methods(args.params)
    lock = read_lock(args.lock)
    verify_pinned(lock, ".", lock.sources)  # pivot or source changed on disk after pinning: stop before any work
    models = pipeline_models(args.lock, args.fused_dir, args.fused_all, args.baseline, args.merged_dir,
                             args.imf_sft, args.imf, merge)
    metrics = run(params, models, args.data, merge, args.cache_dir or None, Path(args.out) / "judgments.jsonl")
    atomic_write_json(Path(args.out) / "metrics.json", metrics)
    atomic_write_json(Path(args.out) / "summary.json", terminal_summary(metrics["summary"]))
    atomic_write_text(Path(args.out) / "report.md", report_markdown(metrics))
    print(report_markdown(metrics))
    for note in metrics["notes"]:
        print(f"warning: evaluate: {note}", file=sys.stderr)


if __name__ == "__main__":
    main()

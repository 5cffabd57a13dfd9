"""Stage report: reports/index.md with PNG plots, reports/teachers.json (who taught what) as metrics, and the
merged models' cards with their evaluation, reports/cards/<method>/README.md.

python stages/report.py --params params.yaml --lock models.lock --metrics eval/metrics.json --logs logs
  --align align --merged-dir merged --extract extract --out reports
"""

from __future__ import annotations

from pathlib import Path

from fusecli.config import stage_parser
from fusecli.errors import fail_cleanly
from fusecli.report.stage import ReportInputs, run


@fail_cleanly
def main() -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--metrics", type=Path, default=Path("eval/metrics.json"))
    ap.add_argument("--logs", type=Path, default=Path("logs"))
    ap.add_argument("--align", type=Path, default=Path("align"))
    ap.add_argument("--merged-dir", type=Path, default=Path("merged"))
    ap.add_argument("--extract", type=Path, default=Path("extract"), help="extract/pivot and extract/sources/<slug>")
    ap.add_argument("--out", type=Path, default=Path("reports"))
    args = ap.parse_args()
    inputs = ReportInputs(args.metrics, Path(args.lock), Path(args.params), args.logs, args.align, args.merged_dir,
                          args.extract)
    print(f"wrote {run(inputs, args.out)}")


if __name__ == "__main__":
    main()

"""Stage report: reports/index.md with PNG plots, and reports/teachers.json (who taught what) as metrics.

python stages/report.py --params params.yaml --lock models.lock --metrics eval/metrics.json --logs logs
  --align align --merged-dir merged --out reports
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fusecli.errors import fail_cleanly
from fusecli.report.run import ReportInputs, build_report


@fail_cleanly
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--lock", type=Path, default=Path("models.lock"))
    ap.add_argument("--metrics", type=Path, default=Path("eval/metrics.json"))
    ap.add_argument("--logs", type=Path, default=Path("logs"))
    ap.add_argument("--align", type=Path, default=Path("align"))
    ap.add_argument("--merged-dir", type=Path, default=Path("merged"))
    ap.add_argument("--out", type=Path, default=Path("reports"))
    args = ap.parse_args()
    inputs = ReportInputs(args.metrics, args.lock, args.params, args.logs, args.align, args.merged_dir)
    print(f"wrote {build_report(inputs, args.out)}")


if __name__ == "__main__":
    main()

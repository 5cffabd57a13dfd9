"""Stage build_dataset: assemble data/train.parquet and data/eval.parquet from the configured sources."""

from __future__ import annotations

from pathlib import Path

from fusecli.config import load_section, stage_parser
from fusecli.data.build import DatasetParams, run
from fusecli.data.deps import check_declared
from fusecli.errors import fail_cleanly


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, lock=False)
    parser.add_argument("--out", default="data")
    parser.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"), help="checked: every dataset file is a dep")
    args = parser.parse_args(argv)
    params = load_section(DatasetParams, "dataset", args.params)
    if args.dvc_yaml.exists():  # absent when run outside a DVC workspace: nothing to keep in step
        check_declared(params, args.dvc_yaml)
    run(params, args.out)


if __name__ == "__main__":
    main()

"""Stage build_dataset: assemble data/train.parquet and data/eval.parquet from the configured sources."""

from __future__ import annotations

from fusecli.config import load_section, stage_parser
from fusecli.data.build import DatasetParams, run
from fusecli.errors import fail_cleanly


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, lock=False)
    parser.add_argument("--out", default="data")
    args = parser.parse_args(argv)
    run(load_section(DatasetParams, "dataset", args.params), args.out)


if __name__ == "__main__":
    main()

"""Stage demo_use: write demo/use.json, whether models.lock or dataset.sources uses the demo world, so
build_demo trains the demo's models only in a workspace that reads them (fusecli/demo/use.py)."""

from __future__ import annotations

from fusecli.config import load_section, stage_parser
from fusecli.data.build import DatasetParams
from fusecli.demo.use import USE_FILE, write_use
from fusecli.errors import fail_cleanly
from fusecli.lock import read_lock


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default=USE_FILE)
    args = parser.parse_args(argv)
    users = write_use(read_lock(args.lock), load_section(DatasetParams, "dataset", args.params), args.out)
    print(f"demo world used by {', '.join(users)}" if users else "demo world unused: build_demo will not train it")


if __name__ == "__main__":
    main()

"""Stage build_demo: train the embedded demo world's tiny chat models into demo/models/<name>/."""

from __future__ import annotations

from fusecli.config import load_section, stage_parser
from fusecli.demo.world import DemoParams, build_world
from fusecli.errors import fail_cleanly


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, lock=False)
    parser.add_argument("--out", default="demo/models")
    args = parser.parse_args(argv)
    build_world(load_section(DemoParams, "demo", args.params), args.out)


if __name__ == "__main__":
    main()

"""Stage build_demo: train the embedded demo world's tiny chat models into demo/models/<name>/ and write
its fusion data and evaluation questions to demo/dialogues.jsonl (the dataset's `path: demo`)."""

from __future__ import annotations

from fusecli.config import load_section, stage_parser
from fusecli.demo.world import DemoParams, build_world
from fusecli.errors import fail_cleanly


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, lock=False)
    parser.add_argument("--out", default="demo/models")
    parser.add_argument("--dialogues", default="demo/dialogues.jsonl")
    args = parser.parse_args(argv)
    build_world(load_section(DemoParams, "demo", args.params), args.out, args.dialogues)


if __name__ == "__main__":
    main()

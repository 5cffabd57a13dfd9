"""Stage build_demo: train the embedded demo world's tiny chat models into demo/models/<name>/ and write
its fusion data and evaluation questions to demo/dialogues.jsonl (the dataset's `path: demo`); when
demo/use.json says nothing uses the demo, write a placeholder instead (fusecli/demo/use.py)."""

from __future__ import annotations

from fusecli.config import load_section, stage_parser
from fusecli.demo.use import USE_FILE, read_use, write_placeholder
from fusecli.errors import fail_cleanly


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, lock=False)
    parser.add_argument("--out", default="demo/models")
    parser.add_argument("--dialogues", default="demo/dialogues.jsonl")
    parser.add_argument("--use", default=USE_FILE, help="demo_use's answer: does anything read the demo?")
    args = parser.parse_args(argv)
    if not read_use(args.use):
        write_placeholder(args.out, args.dialogues)
        print("demo world: not used by models.lock nor dataset.sources, not built")
        return
    from fusecli.demo.world import DemoParams, build_world  # imported here: torch is slow to load

    build_world(load_section(DemoParams, "demo", args.params), args.out, args.dialogues)


if __name__ == "__main__":
    main()

"""Stage fuse@<slug> (and fuse_all, sft_baseline): train the pivot on its own and sources' aligned distributions.

fuse@<slug> takes one source (`--align align/<slug>`); fuse_all, the FuseLLM-style row, takes every locked
source at once (`--align-root align`: align/<slug> for each slug of models.lock), the fusion function
choosing among all of them per sequence; sft_baseline takes none.

Launch with `python`, `torchrun --nproc_per_node N` or `deepspeed` (params.yaml: launch.fuse).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fusecli.config import load_section, stage_parser
from fusecli.errors import FusecliError, fail_cleanly
from fusecli.fuse.selection import control_line, warnings
from fusecli.fuse.train import FuseParams, sft_only, train
from fusecli.hashing import verify_pinned
from fusecli.lock import read_lock
from fusecli.runtime import start_stage


@fail_cleanly
def main() -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--pivot-extract", required=True)
    ap.add_argument("--align", action="append", default=[], help="a source's aligned store (repeatable)")
    ap.add_argument("--align-root", help="teach with <root>/<slug> of every source in the lock (fuse_all)")
    ap.add_argument("--sft-baseline", action="store_true", help="lambda = 1: the pivot on the same data and steps")
    ap.add_argument("--out", required=True)
    ap.add_argument("--live-dir", required=True, help="dvclive metrics and the teacher-selection summary")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    start_stage(args.params, args.lock)  # threads and kernels from params.yaml, then the preflight
    params = load_section(FuseParams, "fuse", args.params)
    lock = read_lock(args.lock)
    aligns = list(args.align)
    if args.align_root:
        if not lock.sources:
            raise FusecliError(f"{args.lock} has no sources to fuse: add one with `fusecli add-source`")
        aligns += [str(Path(args.align_root) / slug) for slug in sorted(lock.sources)]
    if args.sft_baseline:
        params, aligns = sft_only(params), []
    elif not aligns:
        ap.error("--align or --align-root is required unless --sft-baseline")
    verify_pinned(lock, ".")  # the pivot's weights changed on disk after pinning: stop before any work
    pivot = lock.pivot
    summary = train(
        pivot.path,
        args.pivot_extract,
        aligns,
        args.data,
        args.out,
        args.live_dir,
        params,
        pivot.trust_remote_code,
    )
    if summary and aligns:  # rank 0 only (the other ranks get {}); the SFT baseline has no source
        warn_silent_sources(summary, [Path(a).name for a in aligns], bool(args.align_root))


def warn_silent_sources(summary: dict, sources: list[str], every_source: bool) -> None:
    """A source that taught under 1% of the sequences makes its fused model the SFT baseline: say so; and say
    when the run is a control."""
    run = "fuse_all" if every_source else "fuse@" + "+".join(sources)
    if (line := control_line(run, summary)) is not None:
        print(f"note: {line}", file=sys.stderr)
    for line in warnings(run, summary, sources):
        print(f"warning: {line}", file=sys.stderr)


if __name__ == "__main__":
    main()

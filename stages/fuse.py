"""Stage fuse@<slug> (and sft_baseline): train the pivot on its own and a source's aligned distributions.

Launch with `python`, `torchrun --nproc_per_node N` or `deepspeed` (params.yaml: launch.fuse).
"""

from __future__ import annotations

import argparse
import dataclasses

from fusecli.config import load_section
from fusecli.errors import fail_cleanly
from fusecli.fuse.train import FuseParams, train
from fusecli.hashing import verify_pinned
from fusecli.lock import read_lock
from fusecli.runtime import start_stage


@fail_cleanly
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--lock", default="models.lock")
    ap.add_argument("--data", required=True)
    ap.add_argument("--pivot-extract", required=True)
    ap.add_argument("--align", help="the source's aligned store; omit with --sft-baseline")
    ap.add_argument("--sft-baseline", action="store_true", help="lambda = 1: the pivot on the same data and steps")
    ap.add_argument("--out", required=True)
    ap.add_argument("--live-dir", required=True, help="dvclive metrics and the teacher-selection summary")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    start_stage(args.params, args.lock)  # threads and kernels from params.yaml, then the preflight
    params = load_section(FuseParams, "fuse", args.params)
    if args.sft_baseline:
        params = dataclasses.replace(params, lam=1.0)
    elif not args.align:
        ap.error("--align is required unless --sft-baseline")
    lock = read_lock(args.lock)
    verify_pinned(lock, ".")  # the pivot's weights changed on disk after pinning: stop before any work
    pivot = lock.pivot
    train(
        pivot.path,
        args.pivot_extract,
        None if args.sft_baseline else args.align,
        args.data,
        args.out,
        args.live_dir,
        params,
        pivot.trust_remote_code,
    )


if __name__ == "__main__":
    main()

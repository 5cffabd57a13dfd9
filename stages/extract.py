"""Stage extract_pivot / extract@<slug>: top-K next-token distributions of one model.

Launch with `python` (one device, or `extract.model_parallel` over all GPUs) or
`torchrun --nproc_per_node N` (data parallel; params.yaml: launch.extract).
"""

from __future__ import annotations

import sys

from fusecli.config import load_section, stage_parser
from fusecli.errors import FusecliError, fail_cleanly
from fusecli.extract import truncation
from fusecli.extract.run import ExtractParams, ModelRef, Rank, dropped_warnings, extract, row_ids
from fusecli.hashing import verify_pinned
from fusecli.lock import read_lock
from fusecli.runtime import start_stage


@fail_cleanly
def main() -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--model", required=True, help="'pivot' or a source slug")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    start_stage(args.params, args.lock)  # threads and kernels from params.yaml, then the preflight
    params = load_section(ExtractParams, "extract", args.params)
    lock = read_lock(args.lock)
    if args.model != "pivot" and args.model not in lock.sources:
        raise FusecliError(f"no source {args.model!r} in {args.lock}: add it with fusecli add-source")
    entry = lock.pivot if args.model == "pivot" else lock.sources[args.model]
    verify_pinned(lock, ".", [] if args.model == "pivot" else [args.model])  # changed on disk: stop before any work
    model = ModelRef(entry.path, entry.trust_remote_code, entry.allow_pickle)
    summary = extract(args.data, model, args.out, params)  # under torchrun: this rank's share
    if Rank.from_env().rank == 0:
        ids = row_ids(args.data)
        print(f"extract {args.model}: {summary['tokens']:,} tokens at {summary['tokens_per_s']:,.0f} tok/s; "
              f"{len(summary['cut_rows'])} of {len(ids)} rows cut at extract.max_length = {params.max_length} "
              f"({truncation.share_cut(summary):.1%} of response tokens)")
        cut = truncation.warning(summary, len(ids), params.max_length, ids)
        for line in dropped_warnings(args.data, summary) + ([cut] if cut else []):
            print(f"warning: extract {args.model}: {line}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Stage sample@<slug>: imf.sample.n responses per training prompt from one source, in its own chat template.

python stages/sample.py --params params.yaml --lock models.lock --source SLUG --data data/train.parquet
  --out imf/samples/SLUG.parquet
"""

from __future__ import annotations

import sys

from fusecli.config import stage_parser
from fusecli.errors import FusecliError, fail_cleanly
from fusecli.hashing import verify_pinned
from fusecli.imf.params import SampleParams, load_imf
from fusecli.imf.sample import sample
from fusecli.lock import read_lock
from fusecli.runtime import start_stage


@fail_cleanly
def main() -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--source", required=True, help="a source slug of models.lock")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    start_stage(args.params, args.lock)  # threads and kernels from params.yaml, then the preflight
    params = load_imf(SampleParams, "sample", args.params)
    lock = read_lock(args.lock)
    if args.source not in lock.sources:
        raise FusecliError(f"no source {args.source!r} in {args.lock}: add it with fusecli add-source")
    verify_pinned(lock, ".", [args.source])  # changed on disk after pinning: stop before any work
    entry = lock.sources[args.source]
    done = sample(args.data, args.source, entry.path, args.out, params, entry.trust_remote_code)
    print(f"sample {args.source}: {done['responses']:,} responses to {done['prompts']:,} prompts")
    if done["empty"]:
        print(f"warning: sample {args.source}: {done['empty']} empty responses (raise imf.sample.max_new_tokens?)",
              file=sys.stderr)


if __name__ == "__main__":
    main()

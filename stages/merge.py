"""DVC stage `merge@<method>`: the pivot plus every locked source's pair-fused target -> one merged model.

python stages/merge.py --params params.yaml --lock models.lock --fused-dir fused --base PATH --method sce
  --out merged/sce [--importance-dir fisher]
"""

from __future__ import annotations

from pathlib import Path

from fusecli.config import stage_parser
from fusecli.errors import fail_cleanly
from fusecli.hashing import verify_pinned
from fusecli.lock import read_lock
from fusecli.merge.params import stage_params
from fusecli.merge.stage import run
from fusecli.plan import IDENTITY
from fusecli.runtime import start_stage


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--fused-dir", type=Path, default=Path("fused"))
    parser.add_argument("--importance-dir", type=Path, default=None,
                        help="<dir>/<slug>: each pair model's importance (fisher@<slug>), for methods that read it")
    parser.add_argument("--base", type=Path, required=True, help="the pivot model folder")
    parser.add_argument("--method", default=None, help="one of merge.methods (default: merge.method)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    start_stage(args.params, args.lock)  # threads and kernels from params.yaml, then the preflight
    params = stage_params(args.params, args.method)
    lock = read_lock(args.lock)
    if args.base.resolve() == lock.pivot.folder(".").resolve():
        verify_pinned(lock, ".")  # the base's weights changed on disk after pinning: stop before any work
    result = run(params, args.lock, args.fused_dir, args.base, args.out, args.importance_dir)
    models = ", ".join(result.report["models"])
    if IDENTITY in result.report:
        print(f"one source: {result.out} is {result.report[IDENTITY]} (a merge of one model is that model; "
              "its card and report written, no weights)")
    else:
        print(f"merged {models} onto {args.base} with {params.method} -> {result.out}")


if __name__ == "__main__":
    main()

"""Stage align@<slug>: one source's top-K distributions mapped onto the pivot's tokens (docs/method.md, stage 3).

The two tokenizer folders come from models.lock (`--lock models.lock --source <slug>`, as dvc.yaml runs
it) or are named directly (`--pivot-model PATH --source-model PATH [--trust-remote-code]`).
"""

from __future__ import annotations

import argparse

from fusecli.align.params import AlignParams
from fusecli.align.stage import run
from fusecli.config import load_section, stage_parser
from fusecli.errors import FusecliError, fail_cleanly
from fusecli.hashing import verify_pinned
from fusecli.lock import read_lock
from fusecli.runtime import start_stage


def _models(args: argparse.Namespace) -> tuple[str, str, tuple[bool, bool]]:
    """(pivot folder, source folder, (pivot, source) trust_remote_code)."""
    if args.pivot_model and args.source_model:
        return args.pivot_model, args.source_model, (args.trust_remote_code, args.trust_remote_code)
    if not args.source:
        raise FusecliError("name the models: --lock models.lock --source <slug>, or --pivot-model and --source-model")
    lock = read_lock(args.lock)
    if args.source not in lock.sources:
        pinned = ", ".join(lock.sources) or "none"
        raise FusecliError(f"{args.lock} has no source {args.source!r} (pinned: {pinned}): run fusecli add-source")
    verify_pinned(lock, ".", [args.source])  # the tokenizers changed on disk after pinning: stop before any work
    source = lock.sources[args.source]
    return lock.pivot.path, source.path, (lock.pivot.trust_remote_code, source.trust_remote_code)


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--pivot-extract", required=True, help="extract/pivot")
    ap.add_argument("--source-extract", required=True, help="extract/sources/<slug>")
    ap.add_argument("--out", required=True, help="align/<slug>")
    ap.add_argument("--source", help="the source's slug in models.lock")
    ap.add_argument("--pivot-model", help="the pivot's model or tokenizer folder (instead of the lock)")
    ap.add_argument("--source-model", help="the source's model or tokenizer folder (instead of the lock)")
    ap.add_argument("--trust-remote-code", action="store_true", help="with --*-model: allow tokenizer code")
    args = ap.parse_args(argv)
    start_stage(args.params, args.lock, models=False)  # threads, kernels, params preflight (tokenizers only)
    params = load_section(AlignParams, "align", args.params)
    pivot_model, source_model, trust_remote_code = _models(args)
    cov = run(
        params,
        args.pivot_extract,
        args.source_extract,
        pivot_model,
        source_model,
        args.out,
        trust_remote_code=trust_remote_code,
    )
    print(
        f"align: {cov['mapped_positions']:,}/{cov['response_positions']:,} response positions mapped "
        f"({cov['coverage']:.1%}), {cov['pivot_only_sequences']} pivot-only sequences"
    )


if __name__ == "__main__":
    main()

"""Stage fisher@<slug>: the pair model's diagonal Fisher on the sequences its source taught.

python stages/fisher.py --params params.yaml --lock models.lock --data data/train.parquet
  --pivot-extract extract/pivot --align align/<slug> --fused fused/<slug> --out fisher/<slug>

The sequences are the ones the fusion function gave to the source in fuse@<slug> (the same `fuse` keys
choose them); merge methods that weigh each pair model by what it learnt read the output
(fusecli/fuse/fisher.py, fusecli/merge/methods/fisher_gate.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import AutoConfig

from fusecli.config import load_section, stage_parser
from fusecli.errors import fail_cleanly
from fusecli.fuse.data import build_examples
from fusecli.fuse.fisher import FisherParams, run
from fusecli.fuse.train import FuseParams
from fusecli.lock import read_lock
from fusecli.runtime import start_stage


@fail_cleanly
def main() -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--pivot-extract", required=True)
    ap.add_argument("--align", required=True, help="the source's aligned store")
    ap.add_argument("--fused", required=True, help="the pair model fused from it")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    start_stage(args.params, args.lock)
    fuse = load_section(FuseParams, "fuse", args.params)
    params = load_section(FisherParams, "fisher", args.params)
    trust = read_lock(args.lock).pivot.trust_remote_code
    vocab = AutoConfig.from_pretrained(args.fused, trust_remote_code=trust).get_text_config().vocab_size
    examples, _ = build_examples(
        args.pivot_extract, [args.align], args.data, fuse.fusion_fn, fuse.temperature, vocab, fuse.teacher, fuse.gate
    )
    summary = run(args.fused, examples, params, args.out, trust)
    print(f"fisher of {args.fused}: {summary['sequences']} of the {summary['taught']} sequences its source taught "
          f"({summary['response_tokens']} response tokens) -> {args.out}")  # fmt: skip
    if not summary["taught"]:
        print(f"warning: fisher@{Path(args.out).name}: the source taught none of the {summary['of']} sequences; "
              "its importance is zero, so fisher_gate keeps its pair model's change only where no other pair's "
              "knowledge needs the parameter", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()

"""Stage imf_sft: the pivot trained (sft_baseline's settings) on the best-scored response per prompt.

python stages/imf_sft.py --params params.yaml --lock models.lock --samples imf/samples --scores imf/scores.parquet
  --out imf/sft --live-dir logs/imf_sft
"""

from __future__ import annotations

from fusecli.config import load_section, stage_parser
from fusecli.errors import fail_cleanly
from fusecli.fuse.train import FuseParams
from fusecli.hashing import verify_pinned
from fusecli.imf.params import TrainParams, load_imf
from fusecli.imf.stage import load_choices
from fusecli.imf.train import train_sft
from fusecli.lock import read_lock
from fusecli.runtime import start_stage


@fail_cleanly
def main() -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--samples", required=True)
    ap.add_argument("--scores", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--live-dir", required=True, help="dvclive metrics and the choice summary")
    args = ap.parse_args()
    start_stage(args.params, args.lock)
    imf = load_imf(TrainParams, "train", args.params)
    fuse = load_section(FuseParams, "fuse", args.params)
    lock = read_lock(args.lock)
    verify_pinned(lock, ".")
    picked, stats = load_choices(args.samples, args.scores, sorted(lock.sources), imf)
    train_sft(lock.pivot.path, picked, args.out, args.live_dir, fuse, imf.max_length, stats,
              lock.pivot.trust_remote_code)


if __name__ == "__main__":
    main()

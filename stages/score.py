"""Stage score: every sampled response of every locked source rated by imf.score.reward, cached per response.

python stages/score.py --params params.yaml --lock models.lock --data data/train.parquet --samples imf/samples
  --out imf/scores.parquet
"""

from __future__ import annotations

import sys

from fusecli.config import stage_parser
from fusecli.errors import fail_cleanly
from fusecli.imf.params import load_imf
from fusecli.imf.rewards import ScoreParams
from fusecli.imf.score import DEFAULT_CACHE, score
from fusecli.lock import read_lock
from fusecli.runtime import start_stage


@fail_cleanly
def main() -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--samples", required=True, help="holds <slug>.parquet of every locked source")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="per-response score cache; '' turns it off")
    args = ap.parse_args()
    start_stage(args.params, args.lock)
    params = load_imf(ScoreParams, "score", args.params)
    slugs = sorted(read_lock(args.lock).sources)
    done = score(args.data, args.samples, slugs, args.out, params, args.params, args.cache_dir or None)
    print(f"score: {done['responses']:,} responses, {done['rated']:,} rated now, {done['cached']:,} from the cache")
    for source, n in sorted(done["unscored"].items()):
        print(f"warning: score: {n} responses of {source} got no score from reward {params.reward} "
              "(rule: rows without a checkable answer; judge: replies without a rating)", file=sys.stderr)


if __name__ == "__main__":
    main()

"""score: every sampled response rated by the reward, cached per response.

The stage reads imf/samples/<slug>.parquet of every locked source and writes one table of scores. A score is
cached under the hash of what decides it (the reward's config and what it reads of the item: prompt,
response, and for `rule` the accepted answers), so adding a source rates only its responses, and a removed
source's scores are simply not read. The cache lives in the ignored .fusecli/ folder and is disposable.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from fusecli.imf.rewards import REWARDS, Item, Reward, ScoreParams
from fusecli.imf.tables import load_samples, write_table
from fusecli.io import atomic_write_json

DEFAULT_CACHE = Path(".fusecli") / "cache" / "imf_score"


class ScoreCache:
    """{response key: score} per reward config, one JSON file each (rewritten whole after a run)."""

    def __init__(self, folder: str | Path | None, config: dict) -> None:
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(folder) / f"{digest}.json" if folder else None
        self.scores: dict[str, float | None] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.scores = json.loads(self.path.read_text())
            except ValueError:
                self.scores = {}  # torn or edited: rescore

    def save(self) -> None:
        if self.path is not None:
            try:
                atomic_write_json(self.path, self.scores)
            except OSError:
                pass  # a read-only workspace only loses the speed-up


def item_key(reward: Reward, item: Item) -> str:
    return hashlib.sha256(json.dumps(reward.reads(item), sort_keys=True).encode()).hexdigest()


def score_items(reward: Reward, items: list[Item], cache: ScoreCache) -> tuple[list[float | None], int]:
    """Scores of `items`, rating only those the cache lacks; returns (scores, how many were rated now)."""
    keys = [item_key(reward, it) for it in items]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in cache.scores}.values())
    if todo:
        fresh = reward.score([items[i] for i in todo])
        cache.scores.update({keys[i]: s for i, s in zip(todo, fresh, strict=True)})
        cache.save()
    return [cache.scores[k] for k in keys], len(todo)


def score(data: str | Path, samples_dir: str | Path, slugs: list[str], out: str | Path, params: ScoreParams,
          params_file: str, cache_dir: str | Path | None = DEFAULT_CACHE) -> dict:
    """Write `out` (tables.SCORES): the reward of every response of every source; returns counts per source."""
    samples = load_samples(samples_dir, slugs)
    train = pl.read_parquet(data)
    answer = train["answer"].to_list() if "answer" in train.columns else [None] * train.height
    answers = train["answers"].to_list() if "answers" in train.columns else [None] * train.height
    items = [Item(json.loads(p), r, answer[row], answers[row])
             for row, p, r in samples.select("row", "prompt", "response").iter_rows()]
    reward = REWARDS[params.reward](params, params_file)
    cache = ScoreCache(cache_dir, reward.config())
    scores, rated = score_items(reward, items, cache)
    df = samples.select("row", "source", "k").with_columns(pl.Series("score", scores, dtype=pl.Float64))
    write_table(df, out)
    unscored = df.filter(pl.col("score").is_null()).group_by("source").len()
    return {"responses": df.height, "rated": rated, "cached": df.height - rated,
            "unscored": dict(unscored.iter_rows())}

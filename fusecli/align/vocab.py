"""Source -> pivot vocabulary maps (docs/method.md, "Vocabulary mapping").

`ms` is FuseChat's statistics-based map: co-occurrence counts M[p, s] of the aligned (pivot id,
source id) pairs over the whole dataset, then for each source id s the pivot id p with M[p, s] > 0
minimising ED'(s, p) * sigmoid(M[p, s]). `em` is exact string match; `mined_vocab` is the nearest
pivot token by edit distance over the whole pivot vocabulary. Every map sends ids it cannot place to
the pivot's unk (eos when there is no unk), and bos -> bos, eos -> eos.
"""

from __future__ import annotations

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from fusecli.align.params import VocabMapName
from fusecli.align.tokens import TokenTable
from fusecli.errors import FusecliError


class Cooccurrence:
    """Sparse counts of aligned (pivot id, source id) pairs, as sorted int64 keys s * V_p + p.

    Pairs are buffered and folded in with np.unique, so memory follows the number of distinct pairs,
    never V_p x V_s (39 GB dense for 32K x 152K vocabularies).
    """

    def __init__(self, n_pivot: int, n_source: int, flush_at: int = 1 << 22):
        self.n_pivot, self.n_source, self.flush_at = n_pivot, n_source, flush_at
        self.keys = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    def add(self, pivot_ids: np.ndarray, source_ids: np.ndarray) -> None:
        keys = source_ids.astype(np.int64) * self.n_pivot + pivot_ids.astype(np.int64)
        self._pending.append(keys)
        self._pending_size += len(keys)
        if self._pending_size >= self.flush_at:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        new, new_counts = np.unique(np.concatenate(self._pending), return_counts=True)
        keys, inv = np.unique(np.concatenate([self.keys, new]), return_inverse=True)
        counts = np.zeros(len(keys), dtype=np.int64)
        np.add.at(counts, inv.ravel(), np.concatenate([self.counts, new_counts]))
        self.keys, self.counts = keys, counts
        self._pending, self._pending_size = [], 0

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pivot ids, source ids, counts), sorted by source id, then pivot id."""
        self._flush()
        return (self.keys % self.n_pivot).astype(np.int32), (self.keys // self.n_pivot).astype(np.int32), self.counts


def fallback_id(pivot: TokenTable) -> int:
    """Where unplaceable source ids go: the pivot's unk, else its eos."""
    for i in (pivot.unk_id, pivot.eos_id):
        if i is not None:
            return i
    raise FusecliError(f"{pivot.name} has neither an unk nor an eos token: set eos_token in tokenizer_config.json")


def _finish(mapping: np.ndarray, source: TokenTable, pivot: TokenTable) -> np.ndarray:
    for s, p in ((source.bos_id, pivot.bos_id), (source.eos_id, pivot.eos_id)):
        if s is not None and p is not None:
            mapping[s] = p
    return mapping


def weighted_distance(
    a_stripped: list[str], b_stripped: list[str], a_canon: list[str], b_canon: list[str]
) -> np.ndarray:
    """ED'(a, b) per pair: stripped edit distance (marker-unified strings when one is empty), x0.1 if
    one string contains the other."""
    empty = [not x or not y for x, y in zip(a_stripped, b_stripped, strict=True)]
    a = [c if e else s for s, c, e in zip(a_stripped, a_canon, empty, strict=True)]
    b = [c if e else s for s, c, e in zip(b_stripped, b_canon, empty, strict=True)]
    ed = process.cpdist(a, b, scorer=Levenshtein.distance, dtype=np.int64).astype(np.float64)
    contains = np.fromiter((x in y or y in x for x, y in zip(a, b, strict=True)), dtype=bool, count=len(a))
    return ed * np.where(contains, 0.1, 1.0)


def ms_map(cooc: Cooccurrence, source: TokenTable, pivot: TokenTable) -> np.ndarray:
    """map(s) = argmin_{p: M[p,s] > 0} ED'(s, p) * sigmoid(M[p, s]); ties go to the lowest pivot id."""
    mapping = np.full(source.size, fallback_id(pivot), dtype=np.int32)
    p, s, count = cooc.pairs()
    if len(p):
        score = weighted_distance(
            [source.stripped[i] for i in s],
            [pivot.stripped[i] for i in p],
            [source.canon[i] for i in s],
            [pivot.canon[i] for i in p],
        ) / (1.0 + np.exp(-count.astype(np.float64)))
        order = np.lexsort((p, score, s))
        s_sorted = s[order]
        first = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
        mapping[s_sorted[first]] = p[order][first]
    return _finish(mapping, source, pivot)


def em_map(source: TokenTable, pivot: TokenTable) -> np.ndarray:
    """Exact match of canonical (marker-unified) strings."""
    fallback = fallback_id(pivot)
    mapping = np.array([pivot.lookup.get(c, fallback) if c else fallback for c in source.canon], dtype=np.int32)
    return _finish(mapping, source, pivot)


def mined_vocab_map(source: TokenTable, pivot: TokenTable, workers: int = 1, chunk: int = 64) -> np.ndarray:
    """Exact match where there is one, else the pivot token at minimum c(s, p) over the whole vocabulary.

    O(|V_s| x |V_p|) edit distances (rapidfuzz, vectorised): minutes for 152K x 32K vocabularies.
    """
    mapping = em_map(source, pivot)
    pending = [i for i, c in enumerate(source.canon) if c and c not in pivot.lookup]
    choices = np.array([i for i, c in enumerate(pivot.canon) if c], dtype=np.int32)
    stripped = [pivot.stripped[i] for i in choices]
    canon = [pivot.canon[i] for i in choices]
    empty = [k for k, s in enumerate(stripped) if not s]
    for lo in range(0, len(pending), chunk):
        ids = pending[lo : lo + chunk]
        rows_stripped = [source.stripped[i] for i in ids]
        rows_canon = [source.canon[i] for i in ids]
        dist = process.cdist(rows_stripped, stripped, scorer=Levenshtein.distance, dtype=np.int32, workers=workers)
        if empty:
            dist[:, empty] = process.cdist(rows_canon, [canon[k] for k in empty], scorer=Levenshtein.distance)
        for row, s in enumerate(rows_stripped):
            if not s:
                dist[row] = process.cdist([rows_canon[row]], canon, scorer=Levenshtein.distance, dtype=np.int32)[0]
        mapping[ids] = choices[dist.argmin(axis=1)]
    return _finish(mapping, source, pivot)


def build_vocab_map(
    name: VocabMapName, cooc: Cooccurrence, source: TokenTable, pivot: TokenTable, workers: int = 1
) -> np.ndarray:
    if name == "ms":
        return ms_map(cooc, source, pivot)
    if name == "em":
        return em_map(source, pivot)
    return mined_vocab_map(source, pivot, workers=workers)


def direct_map(vocab_map: np.ndarray, source: TokenTable, pivot: TokenTable) -> np.ndarray:
    """What distribution alignment uses: exact marker-unified match first, else `vocab_map`."""
    exact = np.array([pivot.lookup.get(c, -1) if c else -1 for c in source.canon], dtype=np.int32)
    return _finish(np.where(exact >= 0, exact, vocab_map).astype(np.int32), source, pivot)

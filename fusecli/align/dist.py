"""Distribution alignment: one source top-K row, in pivot ids, per pivot response token (docs/method.md).

Which source row (the off-by-one question). Stores key every row by the token it *predicts*
(docs/architecture.md): the pivot row of response token t is the pivot's distribution after reading
the text before t, i.e. after its context token t-1. The release aligns the gold input tokens and
pairs the logits *at* aligned positions, each of which predicts the next token; in store terms the
teacher for pivot token t is therefore chosen among A_{t-1}, the source tokens aligned to the pivot's
context token t-1, and a chosen source token j' contributes the source row that predicts token j'+1.
That is why the rules below test whether token strings *end* alike: when pivot token t-1 and source
token j' end at the same character, both rows are conditioned on the same text. Rules, on the
marker-unified token strings of pivot token t-1 and the pieces A_{t-1}:
- |A| = 1: the two strings end alike (one ends with the other);
- |A| > 1: a piece equal to the pivot token, else one that ends with it, else one that starts with
  it; else pieces that concatenate to the pivot token, taking the last one;
- otherwise, or when the source has no row predicting token j'+1 (not a source response token):
  a one-hot on the pivot's gold token t, flagged `mapped = 0`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fusecli.align.tokens import Alignment, TokenTable

MAPPED_RULES = ("one_to_one", "piece", "concat")
ONE_HOT_RULES = ("no_match", "no_row", "no_source")
RULES = MAPPED_RULES + ONE_HOT_RULES


def choose_piece(pivot_token: str, pieces: Sequence[str]) -> tuple[int | None, str]:
    """The index of the aligned source piece whose row stands for the pivot's, and the rule that chose it."""
    if not pivot_token or not pieces:
        return None, "no_match"
    if len(pieces) == 1:
        s = pieces[0]
        if s and (s.endswith(pivot_token) or pivot_token.endswith(s)):
            return 0, "one_to_one"
        return None, "no_match"
    for c, s in enumerate(pieces):
        if s == pivot_token:
            return c, "piece"
    for c, s in enumerate(pieces):
        if s.endswith(pivot_token):
            return c, "piece"
    for c, s in enumerate(pieces):
        if s.startswith(pivot_token):
            return c, "piece"
    rest, last = pivot_token, None
    for c, s in enumerate(pieces):
        if s and rest.startswith(s):
            rest, last = rest[len(s) :], c
    if last is not None and not rest:
        return last, "concat"
    return None, "no_match"


def map_topk(ids: np.ndarray, logprobs: np.ndarray, to_pivot: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Map source top-K rows [R, K_s] to pivot ids; duplicates keep the higher logprob; pad to k.

    Ids outside the source vocabulary table (padding rows of a model's output layer) are dropped.
    """
    order = np.argsort(-logprobs, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, 1)[:, :k].astype(np.int64)
    logprobs = np.take_along_axis(logprobs, order, 1)[:, :k].astype(np.float32)
    valid = (ids >= 0) & (ids < len(to_pivot))
    mapped = np.where(valid, to_pivot[np.clip(ids, 0, len(to_pivot) - 1)], -1)
    by_id = np.argsort(mapped, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(mapped, by_id, 1)
    repeat = np.zeros_like(sorted_ids, dtype=bool)
    repeat[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    drop = np.zeros_like(repeat)
    np.put_along_axis(drop, by_id, repeat, 1)
    drop |= mapped < 0
    kept = np.argsort(drop, axis=1, kind="stable")
    out_ids = np.full((len(ids), k), -1, dtype=np.int32)
    out_lp = np.full((len(ids), k), -np.inf, dtype=np.float32)
    width = ids.shape[1]
    out_ids[:, :width] = np.take_along_axis(np.where(drop, -1, mapped), kept, 1)
    out_lp[:, :width] = np.take_along_axis(np.where(drop, -np.inf, logprobs), kept, 1)
    return out_ids, out_lp


@dataclass(frozen=True)
class AlignedRows:
    topk_ids: np.ndarray  # int32 [R, k], pivot ids, -1 padded
    topk_logprobs: np.ndarray  # float32 [R, k], -inf padded
    mapped: np.ndarray  # uint8 [R]
    rule: np.ndarray  # int8 [R], index into RULES


def one_hot_rows(pivot_ids: np.ndarray, pivot_mask: np.ndarray, k: int) -> AlignedRows:
    """Every response token gets a one-hot on its own gold token (rule `no_source`)."""
    resp = np.flatnonzero(pivot_mask)
    ids = np.full((len(resp), k), -1, dtype=np.int32)
    lp = np.full((len(resp), k), -np.inf, dtype=np.float32)
    ids[:, 0] = pivot_ids[resp]
    lp[:, 0] = 0.0
    rule = np.full(len(resp), RULES.index("no_source"), dtype=np.int8)
    return AlignedRows(ids, lp, np.zeros(len(resp), dtype=np.uint8), rule)


def align_rows(
    pivot_ids: np.ndarray,
    pivot_mask: np.ndarray,
    pivot: TokenTable,
    alignment: Alignment,
    source_ids: np.ndarray,
    source_mask: np.ndarray,
    source_topk_ids: np.ndarray,
    source_topk_logprobs: np.ndarray,
    source: TokenTable,
    to_pivot: np.ndarray,
    k: int,
) -> AlignedRows:
    """Rows for the pivot's response tokens; `alignment` covers the first len(alignment) pivot tokens."""
    out = one_hot_rows(pivot_ids, pivot_mask, k)
    resp = np.flatnonzero(pivot_mask).tolist()
    src, ptr, n = alignment.src.tolist(), alignment.ptr.tolist(), len(alignment)
    p_canon = [pivot.canon[i] for i in pivot_ids[:n].tolist()]
    s_canon = [source.canon[i] for i in source_ids.tolist()]
    source_row = np.where(source_mask.astype(bool), np.cumsum(source_mask.astype(np.int64)) - 1, -1).tolist()
    chosen = np.full(len(resp), -1, dtype=np.int64)
    for r, t in enumerate(resp):
        ctx = t - 1
        if ctx < 0 or ctx >= n or ptr[ctx] == ptr[ctx + 1]:
            continue
        pieces = src[ptr[ctx] : ptr[ctx + 1]]
        c, rule = choose_piece(p_canon[ctx], [s_canon[j] for j in pieces])
        if c is None:
            out.rule[r] = RULES.index(rule)
            continue
        nxt = pieces[c] + 1
        row = source_row[nxt] if nxt < len(source_row) else -1
        if row < 0:
            out.rule[r] = RULES.index("no_row")
            continue
        chosen[r] = row
        out.rule[r] = RULES.index(rule)
    sel = np.flatnonzero(chosen >= 0)
    if len(sel):
        ids, lp = map_topk(source_topk_ids[chosen[sel]], source_topk_logprobs[chosen[sel]], to_pivot, k)
        ok = ids[:, 0] >= 0
        out.topk_ids[sel[ok]] = ids[ok]
        out.topk_logprobs[sel[ok]] = lp[ok]
        out.mapped[sel[ok]] = 1
        out.rule[sel[~ok]] = RULES.index("no_match")
    return out

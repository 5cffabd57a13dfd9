"""Distribution alignment: one source top-K row, in pivot ids, per pivot response token (docs/method.md).

Which source row. Stores key every row by the token it *predicts*: the pivot row of response token t is
the pivot's distribution after reading the text before t. A source row may stand for it only where the
source has read exactly the same text: the same turn content up to the same character, each model in its
own chat template (so neither reads the other's markup). Positions are paired through the turns' content
spans (fusecli/data/render.py): pivot character `pivot_content_start + x` is source character
`source_content_start + x`. A *boundary* at character e is a place where a token ends at e and the next
one starts at or after e (byte pieces of one character share their character's span, so no boundary
falls inside a character). Rules, for pivot response token t whose context ends at boundary e, x = e -
content start:
- `content`: 0 <= x < content length and the source has a boundary at the same x: its row there;
- `within_token`: the source has no boundary at x but one token of it covers x, starting at x0 < x: its
  row at x0, conditioned on the text the pivot read since x0 (the prefix): of its tokens, those that start
  with the prefix and go on, each sent to the pivot's first piece of the rest (`Archery` after `A`:
  `rchery`; the trainer renormalises over the kept ids). This is the source's next-text distribution given
  the pivot's context, within one source token (`align.within_token: condition`; `one_hot` turns it off);
- `end_of_turn`: x = content length, t is a special token (the pivot's end of turn) and the source's own
  next token there is a special token that the map sends to t (its end of turn): its row there;
- one-hot on the pivot's gold token t, flagged `mapped = 0`: `no_boundary` (the source splits that text
  elsewhere, or t is inside a character), `markup` (t's context is the pivot's own markup: after the end
  of turn, or whitespace outside the stripped content), `no_match` (no token of the source row maps to a
  pivot token), `no_row` (the source's tokens stop before: truncation), `no_source` (no source record).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAPPED_RULES = ("content", "within_token", "end_of_turn")
ONE_HOT_RULES = ("no_boundary", "markup", "no_match", "no_row", "no_source")
RULES = MAPPED_RULES + ONE_HOT_RULES


def boundaries(offsets: np.ndarray) -> dict[int, int]:
    """{character e: index j of the token after a clean boundary at e}, for j >= 1 (first wins)."""
    if len(offsets) < 2:
        return {}
    ends = np.maximum.accumulate(offsets[:, 1].astype(np.int64))
    clean = ends[:-1] <= offsets[1:, 0]
    out: dict[int, int] = {}
    for j in (np.flatnonzero(clean) + 1).tolist():
        out.setdefault(int(ends[j - 1]), j)
    return out


def turn_end_tokens(ids: np.ndarray, offsets: np.ndarray, turns: np.ndarray) -> list[int]:
    """Per turn, the token id that follows the content's end (the template's end of turn), or -1."""
    bound = boundaries(offsets)
    out = []
    for _, a, b, _ in turns.tolist():
        j = bound.get(b, -1) if a >= 0 else -1
        out.append(int(ids[j]) if j >= 0 else -1)
    return out


def map_topk(ids: np.ndarray, logprobs: np.ndarray, to_pivot: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Map source top-K rows [R, K_s] to pivot ids [R, k], -1 / -inf padded.

    Source tokens that start with the same pivot piece say the same thing to the pivot, so their
    probabilities add (`Archery` and `Athletics` both to `A`). Ids the map drops (-1) and ids outside
    the source vocabulary table (padding rows of a model's output layer) are left out.
    """
    return merge_topk(to_pivot_rows(ids, to_pivot), logprobs, k)


def merge_topk(mapped: np.ndarray, logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of pivot ids [R, K_s] (-1: dropped) and their log-probabilities -> [R, k], duplicates summed,
    by probability (ties: lower id first), -1 / -inf padded."""
    r = mapped.shape[0]
    if r == 0:
        return np.zeros((0, k), dtype=np.int32), np.zeros((0, k), dtype=np.float32)
    mapped = mapped.astype(np.int64)
    stride = int(max(mapped.max(initial=-1), 0)) + 2
    keys = (np.arange(r, dtype=np.int64)[:, None] * stride + mapped + 1).ravel()
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    with np.errstate(under="ignore"):
        mass = np.add.reduceat(np.exp(logprobs.astype(np.float64).ravel()[order]), starts) if len(keys) else keys
    group_row, group_id = keys[starts] // stride, keys[starts] % stride - 1
    keep = (group_id >= 0) & (mass > 0)
    group_row, group_id, mass = group_row[keep], group_id[keep], mass[keep]
    by_mass = np.lexsort((group_id, -mass, group_row))
    group_row, group_id, mass = group_row[by_mass], group_id[by_mass], mass[by_mass]
    first = np.searchsorted(group_row, np.arange(r))
    rank = np.arange(len(group_row)) - first[group_row]
    top = rank < k
    out_ids = np.full((r, k), -1, dtype=np.int32)
    out_lp = np.full((r, k), -np.inf, dtype=np.float32)
    out_ids[group_row[top], rank[top]] = group_id[top]
    out_lp[group_row[top], rank[top]] = np.log(mass[top])
    return out_ids, out_lp


@dataclass(frozen=True)
class AlignedRows:
    topk_ids: np.ndarray  # int32 [R, k], pivot ids, -1 padded
    topk_logprobs: np.ndarray  # float32 [R, k], -inf padded
    mapped: np.ndarray  # uint8 [R]
    rule: np.ndarray  # int8 [R], index into RULES
    source_row: np.ndarray  # int64 [R]: the source row used, -1 for one-hot rows


def one_hot_rows(pivot_ids: np.ndarray, pivot_mask: np.ndarray, k: int, rule: str = "no_source") -> AlignedRows:
    """Every response token gets a one-hot on its own gold token."""
    resp = np.flatnonzero(pivot_mask)
    ids = np.full((len(resp), k), -1, dtype=np.int32)
    lp = np.full((len(resp), k), -np.inf, dtype=np.float32)
    ids[:, 0] = pivot_ids[resp]
    lp[:, 0] = 0.0
    rules = np.full(len(resp), RULES.index(rule), dtype=np.int8)
    return AlignedRows(ids, lp, np.zeros(len(resp), dtype=np.uint8), rules, np.full(len(resp), -1, dtype=np.int64))


@dataclass(frozen=True)
class Side:
    """One model's tokenization of a dialogue, in its own template: what the row choice reads."""

    ids: np.ndarray  # int [T]
    offsets: np.ndarray  # int [T, 2]
    mask: np.ndarray  # bool [T]: response tokens (the rows a store holds)
    turns: np.ndarray  # int [n_turns, 4]: span start, content start, content end, span end
    special: frozenset[int] = frozenset()  # the model's special token ids (its markup)


def choose_rows(
    pivot: Side, source: Side, to_pivot: np.ndarray, within_token: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source row per pivot response token, -1 for none; rule per token; the prefix length in characters
    of `within_token` rows, else 0): see the module docstring."""
    resp = np.flatnonzero(pivot.mask)
    rows = np.full(len(resp), -1, dtype=np.int64)
    rules = np.full(len(resp), RULES.index("markup"), dtype=np.int8)
    prefix = np.zeros(len(resp), dtype=np.int64)
    p_bound = {j: e for e, j in boundaries(pivot.offsets).items()}  # token index -> boundary before it
    s_bound = boundaries(source.offsets)
    s_marks = np.array(sorted(s_bound), dtype=np.int64)
    s_row = np.cumsum(source.mask.astype(np.int64)) - 1
    s_end = int(source.offsets[:, 1].max(initial=0))
    p_turns, s_turns = pivot.turns.tolist(), source.turns.tolist()
    p_starts = pivot.offsets[:, 0].tolist()
    for r, t in enumerate(resp.tolist()):
        k = next((i for i, (a, _, _, b) in enumerate(p_turns) if a <= p_starts[t] < b), None)
        if k is None or k >= len(s_turns):
            continue
        _, pa, pb, _ = p_turns[k]
        s_span, sa, sb, _ = s_turns[k]
        if pa < 0 or sa < 0 or pb - pa != sb - sa:
            continue
        e = p_bound.get(t)
        if e is None:
            rules[r] = RULES.index("no_boundary")
            continue
        x = e - pa
        if x < 0 or x > pb - pa:
            continue
        if sa + x >= s_end:
            rules[r] = RULES.index("no_row")
            continue
        j = s_bound.get(sa + x)
        if j is None and within_token and x < pb - pa:
            j, x0 = covering_token(source, s_bound, s_marks, s_span, sa + x)
            if j is not None and source.mask[j]:
                rows[r], rules[r], prefix[r] = s_row[j], RULES.index("within_token"), sa + x - x0
                continue
            j = None
        if j is None or not source.mask[j]:
            rules[r] = RULES.index("no_boundary")
            continue
        if x == pb - pa:
            gold, own = int(pivot.ids[t]), int(source.ids[j])
            if gold not in pivot.special or own not in source.special or to_pivot[own] != gold:
                continue  # markup: the pivot's template goes on with text, or the source's does
            rules[r] = RULES.index("end_of_turn")
        else:
            rules[r] = RULES.index("content")
        rows[r] = s_row[j]
    return rows, rules, prefix


def covering_token(
    source: Side, bound: dict[int, int], marks: np.ndarray, lo: int, at: int
) -> tuple[int | None, int]:
    """(the source token that starts at the last boundary x0 in [lo, at) and runs past `at`, x0), or (None, 0).

    `lo` is the turn's span start, not its content's: a template's space before the content read with the
    first word as one token (Llama 2's `[/INST] {content}` -> `▁Le`) conditions on that space."""
    i = int(np.searchsorted(marks, at)) - 1
    if i < 0 or marks[i] < lo:
        return None, 0
    x0 = int(marks[i])
    j = bound[x0]
    return (j, x0) if source.offsets[j, 1] > at else (None, 0)


def to_pivot_rows(ids: np.ndarray, to_pivot: np.ndarray) -> np.ndarray:
    """Source ids [R, K] -> pivot ids by the map, -1 for ids outside the table."""
    ids = ids.astype(np.int64)
    valid = (ids >= 0) & (ids < len(to_pivot))
    return np.where(valid, to_pivot[np.clip(ids, 0, max(len(to_pivot) - 1, 0))], -1)


def source_token(source: Side, row: int) -> int:
    """The source token position whose store row is `row` (rows are the response tokens, in order)."""
    return int(np.flatnonzero(source.mask)[row])


class Conditioner:
    """Maps a source row to pivot ids given a prefix the pivot has read within the source's next token."""

    def __init__(self, source_canon: list[str], first_piece: Callable[[str], tuple[int | None, str]]):
        self.canon, self.first_piece = source_canon, first_piece
        self.cache: dict[str, int] = {}

    def piece(self, rest: str) -> int:
        if rest not in self.cache:
            p, _ = self.first_piece(rest)
            self.cache[rest] = -1 if p is None else p
        return self.cache[rest]

    def __call__(self, ids: np.ndarray, prefix: str) -> np.ndarray:
        """Pivot ids [K] (-1: dropped): each source token that starts with `prefix` and goes on -> the pivot's
        first piece of the rest; special tokens, escapes and tokens that do not continue the prefix -> -1."""
        out = np.full(len(ids), -1, dtype=np.int64)
        for c, s in enumerate(ids.tolist()):
            text = self.canon[s] if 0 <= s < len(self.canon) else ""
            if len(text) > len(prefix) and text.startswith(prefix) and "<0x" not in text:
                out[c] = self.piece(text[len(prefix) :])
        return out


def align_rows(
    pivot: Side,
    source: Side,
    source_topk_ids: np.ndarray,
    source_topk_logprobs: np.ndarray,
    to_pivot: np.ndarray,
    k: int,
    conditioner: Conditioner | None = None,
) -> AlignedRows:
    """Rows for the pivot's response tokens: the chosen source rows mapped to pivot ids, else one-hot.
    With a `conditioner`, positions inside a source token get `within_token` rows."""
    out = one_hot_rows(pivot.ids, pivot.mask, k)
    chosen, rules, prefix = choose_rows(pivot, source, to_pivot, conditioner is not None)
    out.rule[:] = rules
    sel = np.flatnonzero(chosen >= 0)
    if len(sel):
        mapped = to_pivot_rows(source_topk_ids[chosen[sel]], to_pivot)
        for i in np.flatnonzero(prefix[sel] > 0).tolist():
            token = conditioner.canon[int(source.ids[source_token(source, chosen[sel[i]])])]
            mapped[i] = conditioner(source_topk_ids[chosen[sel[i]]], token[: prefix[sel[i]]])
        ids, lp = merge_topk(mapped, source_topk_logprobs[chosen[sel]], k)
        ok = ids[:, 0] >= 0
        out.topk_ids[sel[ok]] = ids[ok]
        out.topk_logprobs[sel[ok]] = lp[ok]
        out.mapped[sel[ok]] = 1
        out.source_row[sel[ok]] = chosen[sel[ok]]
        out.rule[sel[~ok]] = RULES.index("no_match")
    return out

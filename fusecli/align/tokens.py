"""Token strings and token alignment of two tokenizations of the same text (docs/method.md, stage 3).

Tokens of different vocabularies are compared in one canonical form: the text a token stands for,
with every space written as the unified word-boundary marker `▁` (sentencepiece's `▁`, byte-level
BPE's `Ġ`), byte-level characters decoded (`Ċ` -> newline), and bytes that are not a whole UTF-8
character written `<0xNN>` (sentencepiece's byte-fallback spelling, so `<0x0A>` and `Ċ` are both a
newline and a lone `<0xE4>` reads the same in both vocabularies). Special tokens keep their content.

Two aligners, both returning, for each pivot position, the source positions aligned to it:
- `mined`: the release's MinED dynamic program over an edit-distance cost matrix (numba);
- `offsets`: exact and near-linear, through the character offsets of both tokenizations.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from fusecli.errors import FusecliError

MARKER = "▁"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _hex_escape(err: UnicodeDecodeError) -> tuple[str, int]:
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start : err.end]), err.end


codecs.register_error("fusecli-hex", _hex_escape)


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character byte-level BPE uses for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTE_DECODER = _byte_decoder()


def tokenizer_kind(tokenizer: Any) -> str:
    """'byte_level', 'metaspace' (sentencepiece style) or 'plain', from the backend's pipeline if any."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = ""
    if backend is not None:
        parts = (backend.normalizer, backend.pre_tokenizer, backend.decoder)
        spec = " ".join(p.__getstate__().decode() for p in parts if p is not None)
    if '"ByteLevel"' in spec:
        return "byte_level"
    if "Metaspace" in spec or MARKER in spec or "\\u2581" in spec:
        return "metaspace"
    vocab = tokenizer.get_vocab()
    g = sum(t.startswith("Ġ") for t in vocab)
    s = sum(t.startswith(MARKER) for t in vocab)
    if max(g, s) < 0.01 * len(vocab):
        return "plain"
    return "byte_level" if g > s else "metaspace"


def canonical(token: str, kind: str) -> str:
    """The canonical string of an ordinary (not added) vocabulary token; see the module docstring."""
    if kind == "byte_level":
        try:
            raw = bytes(BYTE_DECODER[c] for c in token)
        except KeyError:
            return token.replace(" ", MARKER)
        return raw.decode("utf-8", errors="fusecli-hex").replace(" ", MARKER)
    m = _BYTE_TOKEN.fullmatch(token)
    if kind == "metaspace" and m:
        b = int(m.group(1), 16)
        return chr(b).replace(" ", MARKER) if b < 0x80 else f"<0x{b:02X}>"
    return token.replace(" ", MARKER)


def strip_marker(s: str) -> str:
    return s.replace(MARKER, "")


@dataclass(frozen=True)
class TokenTable:
    """Canonical and marker-stripped strings of a whole vocabulary (index = token id), built once."""

    name: str
    kind: str
    canon: list[str]
    stripped: list[str]
    lookup: dict[str, int]  # canonical string -> id; ordinary tokens win over byte-fallback ones
    special: frozenset[int]  # ids of special (added, special=True) tokens: markup, never text
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None

    @property
    def size(self) -> int:
        return len(self.canon)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenTable:
        name = str(getattr(tokenizer, "name_or_path", "") or "the tokenizer")
        kind = tokenizer_kind(tokenizer)
        known = set(tokenizer.get_vocab().values())
        size = max(len(tokenizer), max(known, default=-1) + 1)
        try:
            raw = tokenizer.convert_ids_to_tokens(list(range(size)))
        except Exception as exc:
            raise FusecliError(
                f"{name} cannot turn single ids into token strings ({type(exc).__name__}): "
                "use a tokenizer with a convert_ids_to_tokens (a fast tokenizer)"
            ) from None
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        canon, byte_ids, special = [], set(), set()
        for i, tok in enumerate(raw):
            if tok is None and i not in known:
                canon.append("")  # a hole in the id range: never produced, never matched
                continue
            if not isinstance(tok, str):
                raise FusecliError(
                    f"{name} turns id {i} into {type(tok).__name__}, not a token string: "
                    "use a tokenizer whose convert_ids_to_tokens returns strings (a fast tokenizer)"
                )
            if i in added:
                content = added[i].content
                if added[i].special:
                    special.add(i)
                canon.append(content if added[i].special else content.replace(" ", MARKER))
                continue
            if kind == "metaspace" and _BYTE_TOKEN.fullmatch(tok):
                byte_ids.add(i)
            canon.append(canonical(tok, kind))
        lookup: dict[str, int] = {}
        for i, s in enumerate(canon):
            if s and i not in byte_ids:
                lookup.setdefault(s, i)
        for i in sorted(byte_ids):
            lookup.setdefault(canon[i], i)
        return cls(
            name=name,
            kind=kind,
            canon=canon,
            stripped=[strip_marker(s) for s in canon],
            lookup=lookup,
            special=frozenset(special | {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None}),
            bos_id=tokenizer.bos_token_id,
            eos_id=tokenizer.eos_token_id,
            unk_id=tokenizer.unk_token_id,
        )


def pair_distance(a_stripped: str, b_stripped: str, a_canon: str, b_canon: str) -> int:
    """c(i, j): edit distance of the marker-stripped strings, of the marker-unified ones if one is empty."""
    if a_stripped and b_stripped:
        return Levenshtein.distance(a_stripped, b_stripped)
    return Levenshtein.distance(a_canon, b_canon)


def unique_costs(
    source: TokenTable, source_ids: np.ndarray, pivot: TokenTable, pivot_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """c over the unique token pairs of one sequence (rapidfuzz, vectorised): c(i, j) = U[rows[i], cols[j]]."""
    us, rows = np.unique(source_ids, return_inverse=True)
    up, cols = np.unique(pivot_ids, return_inverse=True)
    a = [source.stripped[i] for i in us]
    b = [pivot.stripped[i] for i in up]
    unique = process.cdist(a, b, scorer=Levenshtein.distance, dtype=np.int32, workers=1)
    a_canon = [source.canon[i] for i in us]
    b_canon = [pivot.canon[i] for i in up]
    for r in (r for r, s in enumerate(a) if not s):
        unique[r, :] = process.cdist([a_canon[r]], b_canon, scorer=Levenshtein.distance, dtype=np.int32)[0]
    for c in (c for c, s in enumerate(b) if not s):
        unique[:, c] = process.cdist(a_canon, [b_canon[c]], scorer=Levenshtein.distance, dtype=np.int32)[:, 0]
    return unique, rows.ravel().astype(np.int64), cols.ravel().astype(np.int64)


def cost_matrix(source: TokenTable, source_ids: np.ndarray, pivot: TokenTable, pivot_ids: np.ndarray) -> np.ndarray:
    """The dense [source, pivot] cost matrix (for inspection and tests; the DP reads `unique_costs`)."""
    unique, rows, cols = unique_costs(source, source_ids, pivot, pivot_ids)
    return np.take(np.take(unique, rows, axis=0), cols, axis=1)


@numba.njit(cache=True)
def _mined_path(unique: np.ndarray, rows: np.ndarray, cols: np.ndarray, inf: int) -> tuple[np.ndarray, np.ndarray]:
    """D[0,0] = 0, borders inf, D[i,j] = c(i,j) + min(up, left, diag), c(i,j) = unique[rows[i], cols[j]];
    backtrack from (m, n), ties broken diagonal first, then up (source), then left (pivot)."""
    m, n = len(rows), len(cols)
    d = np.empty((m + 1, n + 1), dtype=unique.dtype)
    d[0, :] = inf
    d[:, 0] = inf
    d[0, 0] = 0
    for i in range(1, m + 1):
        r = rows[i - 1]
        for j in range(1, n + 1):
            d[i, j] = unique[r, cols[j - 1]] + min(d[i - 1, j - 1], d[i - 1, j], d[i, j - 1])
    src = np.empty(m + n, dtype=np.int32)
    piv = np.empty(m + n, dtype=np.int32)
    i, j, k = m, n, 0
    while True:
        src[k] = i - 1
        piv[k] = j - 1
        k += 1
        if i == 1 and j == 1:
            break
        diag, up, left = d[i - 1, j - 1], d[i - 1, j], d[i, j - 1]
        if diag <= up and diag <= left:
            i -= 1
            j -= 1
        elif up <= left:
            i -= 1
        else:
            j -= 1
    return src[:k][::-1].copy(), piv[:k][::-1].copy()


@dataclass(frozen=True)
class Alignment:
    """For pivot position j, the source positions `src[ptr[j]:ptr[j+1]]` (ascending) aligned to it."""

    src: np.ndarray  # int32 [L]
    ptr: np.ndarray  # int64 [n + 1]

    def __len__(self) -> int:
        return len(self.ptr) - 1

    def __getitem__(self, j: int) -> np.ndarray:
        return self.src[self.ptr[j] : self.ptr[j + 1]]

    def lists(self) -> list[list[int]]:
        return [self[j].tolist() for j in range(len(self))]

    def pivot_positions(self) -> np.ndarray:
        """The pivot position of every entry of `src`: with `src`, the aligned (pivot, source) pairs."""
        return np.repeat(np.arange(len(self), dtype=np.int32), np.diff(self.ptr))

    @classmethod
    def from_pairs(cls, piv: np.ndarray, src: np.ndarray, n: int) -> Alignment:
        """From (pivot, source) position pairs sorted by pivot, then source."""
        ptr = np.zeros(n + 1, dtype=np.int64)
        ptr[1:] = np.cumsum(np.bincount(piv, minlength=n))
        return cls(src=np.asarray(src, dtype=np.int32), ptr=ptr)


def _mined(unique: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> Alignment:
    m, n = len(rows), len(cols)
    if m == 0 or n == 0:
        return Alignment(src=np.zeros(0, np.int32), ptr=np.zeros(n + 1, np.int64))
    bound = int(unique.max(initial=0)) * (m + n + 1)
    dtype, inf = (np.int32, 2**30) if bound < 2**30 else (np.int64, 2**62)
    src, piv = _mined_path(np.ascontiguousarray(unique, dtype=dtype), rows, cols, inf)
    return Alignment.from_pairs(piv, src, n)


def mined_from_cost(cost: np.ndarray) -> Alignment:
    """MinED alignment for a dense [source, pivot] cost matrix."""
    m, n = cost.shape
    return _mined(cost, np.arange(m, dtype=np.int64), np.arange(n, dtype=np.int64))


def align_mined(source: TokenTable, source_ids: np.ndarray, pivot: TokenTable, pivot_ids: np.ndarray) -> Alignment:
    """MinED (docs/method.md): the DP over c(i, j) for every source position i and pivot position j."""
    return _mined(*unique_costs(source, source_ids, pivot, pivot_ids))


def align_offsets(pivot_offsets: np.ndarray, source_offsets: np.ndarray) -> Alignment:
    """Pivot token j -> the source tokens whose character spans overlap its span.

    Both span lists are sorted, so the two pointers of a merge are two vectorised binary searches:
    lo = first source token ending after the start, hi = first source token starting at or after the end.

    A pivot token that overlaps none (an empty span) gets the source token covering, or next after,
    its start, so every pivot position has at least one source position, as with the DP.
    """
    n, m = len(pivot_offsets), len(source_offsets)
    if n == 0 or m == 0:
        return Alignment(src=np.zeros(0, np.int32), ptr=np.zeros(n + 1, np.int64))
    s_start = np.maximum.accumulate(source_offsets[:, 0])
    s_end = np.maximum.accumulate(source_offsets[:, 1])
    lo = np.minimum(np.searchsorted(s_end, pivot_offsets[:, 0], side="right"), m - 1)
    hi = np.maximum(np.searchsorted(s_start, pivot_offsets[:, 1], side="left"), lo + 1)
    counts = hi - lo
    ptr = np.zeros(n + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(counts)
    src = np.arange(ptr[-1], dtype=np.int64) - np.repeat(ptr[:-1] - lo, counts)
    return Alignment(src=src.astype(np.int32), ptr=ptr)


def agreement(a: Alignment, b: Alignment) -> int:
    """How many pivot positions have identical source-position lists in both alignments (vectorised)."""
    count_a, count_b = np.diff(a.ptr), np.diff(b.ptr)
    same = np.flatnonzero(count_a == count_b)
    counts = count_a[same]
    owner = np.repeat(np.arange(len(same)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    differs = a.src[a.ptr[same][owner] + within] != b.src[b.ptr[same][owner] + within]
    return int(len(same) - np.count_nonzero(np.bincount(owner[differs], minlength=len(same))))

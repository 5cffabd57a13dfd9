"""Compact top-K rows: one fixed-size bit record per response token, 32 bytes at K = 10, V <= 152,064.

Plain int32 ids + fp16 values cost 60 B a row (the release stores ~100 B plus padding); at millions of
rows per model that is most of the pipeline's disk and I/O. A row (K ids, their log-probabilities,
the gold token's CE) is packed as consecutive bit fields (least significant bit first):

  ids     Elias-Fano code (Elias 1974; Fano 1971) of the K ids sorted ascending: each id's low
          l = floor(log2(V / K)) bits verbatim, its high part as a set bit at position high + rank in
          a bitmap of K + ((V - 1) >> l) bits. 158 bits at V = 152,064, K = 10 (fixed width: 180).
  top     which of the sorted ids has the largest log-probability: ceil(log2 K) bits.
  gaps    the other K - 1 entries as d = logp_top - logp >= 0, 7 bits each on the fixed table
          `GAP_LEVELS`: uniform in u = exp(-d / 2) (step 1/112) while that step is under one nat,
          then one-nat steps to ~25 nats; larger gaps are clamped (such entries weigh < e^-25).
  logp    -logp_top as float16 without its (always +) sign bit: 15 bits.
  ce      the gold token's CE as float16 without its sign bit: 15 bits.

Why sqrt-probability: the KL of a quantised distribution is ~ 2 * sum_j (du_j)^2 / Z, the same for
every entry whatever its probability, so uniform steps in u spend the bits where the KL is.
KL(stored || exact) over the renormalised top-K stays under 1e-3 nats per row, ~3e-4 at worst on
sharp, flat and random rows (tests/extract/test_codec.py); top-1 log-probability and CE carry
float16's relative error (~5e-4). The decoder returns each row in descending log-probability
order; entries whose quantised values tie keep id order. Sequence CE is computed from the exact
values before quantisation.

Encoding runs in torch on the device that computed the rows (numpy on one core packed ~100K rows/s,
slower than a small model's forward on a GPU); decoding runs in numpy on the CPU as a store is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

GAP_BITS = 7
FP_BITS = 15  # float16 magnitude: the sign of -logp and CE is always +


def gap_levels(bits: int = GAP_BITS, u_step: float = 1 / 112, tail_step: float = 1.0) -> np.ndarray:
    """The decoded gap value of each code: sqrt-probability steps, then `tail_step` nats."""
    levels = [0.0]
    while len(levels) < 2**bits:
        u = np.exp(-levels[-1] / 2) - u_step
        nxt = -2 * np.log(u) if u > 0 else np.inf
        levels.append(min(nxt, levels[-1] + tail_step))
    return np.asarray(levels)


GAP_LEVELS = gap_levels()


def _to_bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """[N, m] non-negative ints -> [N, m * width] bits (uint8), least significant first."""
    shifts = torch.arange(width, device=values.device)
    return ((values.long()[..., None] >> shifts) & 1).to(torch.uint8).reshape(len(values), -1)


def _pack(bits: torch.Tensor) -> torch.Tensor:
    """[N, B] bits -> [N, ceil(B / 8)] bytes, little bit order (numpy.packbits(..., bitorder="little"))."""
    bits = torch.nn.functional.pad(bits, (0, -bits.shape[1] % 8)).reshape(len(bits), -1, 8)
    return (bits << torch.arange(8, device=bits.device, dtype=torch.uint8)).sum(-1, dtype=torch.uint8)


def _half_magnitude(x: torch.Tensor) -> torch.Tensor:
    """[N] values >= 0 -> [N, 1] float16 bit patterns without the sign bit."""
    return (x.clamp_min(0).to(torch.float16).view(torch.int16).long() & 0x7FFF)[:, None]


@dataclass(frozen=True)
class TopKCodec:
    """Encoder/decoder of [N, K] top-K rows for a vocabulary of `vocab` ids (a store's `meta.codec`)."""

    vocab: int
    k: int

    @cached_property
    def low_bits(self) -> int:
        return max(0, int(np.floor(np.log2(max(self.vocab / self.k, 1)))))

    @cached_property
    def high_bits(self) -> int:
        return self.k + ((self.vocab - 1) >> self.low_bits)

    @cached_property
    def top_bits(self) -> int:
        return int(np.ceil(np.log2(self.k))) if self.k > 1 else 0

    @cached_property
    def row_bits(self) -> int:
        return self.k * self.low_bits + self.high_bits + self.top_bits + (self.k - 1) * GAP_BITS + 2 * FP_BITS

    @property
    def row_bytes(self) -> int:
        return (self.row_bits + 7) // 8

    def encode(self, ids: torch.Tensor, logp: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
        """ids [N, K] (distinct, in [0, vocab)), logp [N, K], ce [N] -> codes uint8 [N, row_bytes].

        Runs on the tensors' device.
        """
        n, k = ids.shape
        if k != self.k:
            raise ValueError(f"rows have {k} ids, the codec was made for K = {self.k}")
        ids, order = torch.sort(ids.long(), dim=1, stable=True)
        logp = logp.float().gather(1, order)
        rows = torch.arange(n, device=ids.device)
        top = logp.argmax(1)
        top_lp = logp[rows, top]
        rest = torch.arange(k, device=ids.device)[None] != top[:, None]
        gaps = (top_lp[:, None] - logp)[rest].reshape(n, k - 1).nan_to_num(nan=torch.inf)
        levels = torch.as_tensor(GAP_LEVELS, dtype=torch.float32, device=ids.device)
        codes = torch.searchsorted((levels[1:] + levels[:-1]) / 2, gaps.contiguous())
        bitmap = torch.zeros((n, self.high_bits), dtype=torch.uint8, device=ids.device)
        bitmap[rows[:, None], (ids >> self.low_bits) + torch.arange(k, device=ids.device)] = 1
        fields = [
            _to_bits(ids & ((1 << self.low_bits) - 1), self.low_bits),
            bitmap,
            _to_bits(top[:, None], self.top_bits),
            _to_bits(codes, GAP_BITS),
            _to_bits(_half_magnitude(-top_lp), FP_BITS),
            _to_bits(_half_magnitude(ce.float()), FP_BITS),
        ]
        return _pack(torch.cat(fields, dim=1))

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """codes [N, row_bytes] -> ids int32 [N, K], logp float32 [N, K] descending, ce float32 [N].

        numpy, on the CPU: readers decode a shard at a time (~300K rows/s on one core).
        """
        n, k = len(codes), self.k
        bits = np.unpackbits(codes, axis=1, count=self.row_bits, bitorder="little")
        cuts = np.cumsum([k * self.low_bits, self.high_bits, self.top_bits, (k - 1) * GAP_BITS, FP_BITS])
        low, bitmap, top, gaps, top_lp, ce = np.split(bits, cuts, axis=1)
        high = np.nonzero(bitmap)[1].reshape(n, k) - np.arange(k)
        ids = (high << self.low_bits) | _np_from_bits(low, self.low_bits) if self.low_bits else high
        top = _np_from_bits(top, self.top_bits)[:, 0] if self.top_bits else np.zeros(n, np.int64)
        d = np.zeros((n, k))
        d[np.arange(k)[None] != top[:, None]] = GAP_LEVELS[_np_from_bits(gaps, GAP_BITS)].ravel()
        logp = (-_np_half_value(top_lp)[:, None] - d).astype(np.float32)
        order = np.argsort(-logp, axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, 1).astype(np.int32)
        return ids, np.take_along_axis(logp, order, 1), _np_half_value(ce)


def _np_from_bits(bits: np.ndarray, width: int) -> np.ndarray:
    b = bits.reshape(len(bits), -1, width).astype(np.int64)
    return (b << np.arange(width)).sum(-1)


def _np_half_value(bits: np.ndarray) -> np.ndarray:
    return _np_from_bits(bits, FP_BITS)[:, 0].astype(np.uint16).view(np.float16).astype(np.float32)


def topk_kl(stored_ids: np.ndarray, stored: np.ndarray, exact_ids: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """KL(stored || exact) per row, in nats, between the top-K distributions renormalised (fuse at T = 1)."""
    a, b = np.argsort(stored_ids, 1), np.argsort(exact_ids, 1)
    if not np.array_equal(np.take_along_axis(stored_ids, a, 1), np.take_along_axis(exact_ids, b, 1)):
        raise ValueError("the stored rows hold other ids than the exact ones")
    stored = np.take_along_axis(stored.astype(np.float64), a, 1)
    exact = np.take_along_axis(exact.astype(np.float64), b, 1)
    p = np.exp(stored - stored.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(exact - exact.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(1)

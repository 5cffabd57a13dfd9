"""Triton kernels of fusecli/extract/onepass.py: one read of each logits chunk (CUDA).

`_tiles` runs one program per (row, tile of BLOCK columns): it loads the tile once and writes its max,
its fp32 sum of exp(x - max), its K largest (value, id), and, in the tile holding the gold id, the
gold logit. Top-K inside a tile is K rounds of one integer max over keys that pack the value's
sortable bits above the column (reversed), so a round finds value and id together and ties go to the
lowest id; 16-bit logits fit a 32-bit key, fp32 logits (soft-capped models) take 64 bits.
`_merge` runs one program per row over the tiles' T * K candidates and T partial sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tiles(
    logits_ptr, stride, gold_ptr, vocab, val_ptr, id_ptr, max_ptr, sum_ptr, gold_logit_ptr, n_tiles,
    K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr,
):
    row = tl.program_id(0)
    tile = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    col = tile * BLOCK + offs
    x = tl.load(logits_ptr + row.to(tl.int64) * stride + col, mask=col < vocab, other=float("-inf"))
    xf = x.to(tl.float32)
    m = tl.max(xf, 0)
    s = tl.sum(tl.exp(xf - m), 0)
    out = row.to(tl.int64) * n_tiles + tile
    tl.store(max_ptr + out, m)
    tl.store(sum_ptr + out, tl.where(m == float("-inf"), 0.0, s))
    g = tl.load(gold_ptr + row) - tile * BLOCK
    if (g >= 0) & (g < BLOCK):
        tl.store(gold_logit_ptr + row, tl.sum(tl.where(offs == g, xf, 0.0), 0))

    if WIDE:  # fp32 logits: the value's 32 sortable bits, then the reversed column
        bits = xf.to(tl.int32, bitcast=True)
        key = ((bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64) << 32) | (BLOCK - 1 - offs).to(tl.int64)
        lowest = tl.full([BLOCK], -9223372036854775807 - 1, tl.int64)
    else:  # bf16 / fp16 logits: 16 sortable bits, then the reversed column (BLOCK <= 65536)
        bits = x.to(tl.int16, bitcast=True).to(tl.int32)
        key = ((bits ^ ((bits >> 15) & 0x7FFF)) << 16) | (BLOCK - 1 - offs)
        lowest = tl.full([BLOCK], -2147483647 - 1, tl.int32)
    kk = tl.arange(0, KP)
    vals = tl.full([KP], float("-inf"), tl.float32)
    ids = tl.zeros([KP], tl.int32)
    for j in tl.static_range(K):
        best = tl.max(key, 0)
        key = tl.where(key == best, lowest, key)
        if WIDE:
            srt = (best >> 32).to(tl.int32)
            local = BLOCK - 1 - (best & 0xFFFFFFFF).to(tl.int32)
            value = (srt ^ ((srt >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
        else:
            srt = best >> 16
            local = BLOCK - 1 - (best & 0xFFFF)
            value = (srt ^ ((srt >> 15) & 0x7FFF)).to(tl.int16).to(x.dtype, bitcast=True).to(tl.float32)
        vals = tl.where(kk == j, value, vals)
        ids = tl.where(kk == j, tile * BLOCK + local, ids)
    tl.store(val_ptr + out * K + kk, vals, mask=kk < K)
    tl.store(id_ptr + out * K + kk, ids, mask=kk < K)


@triton.jit
def _merge(
    val_ptr, id_ptr, max_ptr, sum_ptr, gold_logit_ptr, out_id_ptr, out_lp_ptr, out_ce_ptr, n_tiles,
    K: tl.constexpr, KP: tl.constexpr, CP: tl.constexpr, TP: tl.constexpr,
):
    row = tl.program_id(0)
    t = tl.arange(0, TP)
    m = tl.load(max_ptr + row.to(tl.int64) * n_tiles + t, mask=t < n_tiles, other=float("-inf"))
    s = tl.load(sum_ptr + row.to(tl.int64) * n_tiles + t, mask=t < n_tiles, other=0.0)
    top = tl.max(m, 0)
    lse = top + tl.log(tl.sum(tl.where(m == float("-inf"), 0.0, s * tl.exp(m - top)), 0))
    tl.store(out_ce_ptr + row, lse - tl.load(gold_logit_ptr + row))

    c = tl.arange(0, CP)
    inside = c < n_tiles * K
    v = tl.load(val_ptr + row.to(tl.int64) * n_tiles * K + c, mask=inside, other=float("-inf"))
    i = tl.load(id_ptr + row.to(tl.int64) * n_tiles * K + c, mask=inside, other=0x7FFFFFFF)
    bits = v.to(tl.int32, bitcast=True)
    key = ((bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64) << 32) | (0x7FFFFFFF - i).to(tl.int64)
    lowest = tl.full([CP], -9223372036854775807 - 1, tl.int64)
    kk = tl.arange(0, KP)
    lps = tl.full([KP], float("-inf"), tl.float32)
    ids = tl.zeros([KP], tl.int64)
    for j in tl.static_range(K):
        best = tl.max(key, 0)
        key = tl.where(key == best, lowest, key)
        srt = (best >> 32).to(tl.int32)
        value = (srt ^ ((srt >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
        lps = tl.where(kk == j, value - lse, lps)
        ids = tl.where(kk == j, 0x7FFFFFFF - (best & 0xFFFFFFFF), ids)
    tl.store(out_lp_ptr + row.to(tl.int64) * K + kk, lps, mask=kk < K)
    tl.store(out_id_ptr + row.to(tl.int64) * K + kk, ids, mask=kk < K)


def triton_row_stats(
    logits: torch.Tensor, gold: torch.Tensor, k: int, block: int, num_warps: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`onepass_row_stats` on the logits' device: two launches, the logits read once."""
    n, vocab = logits.shape
    if logits.element_size() not in (2, 4):
        raise ValueError(f"one-pass top-K takes 16- or 32-bit logits, not {logits.dtype}")
    if not 0 < k <= vocab:
        raise ValueError(f"top-K of {k} over a vocabulary of {vocab}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    block = max(min(block, triton.next_power_of_2(vocab)), triton.next_power_of_2(k), 16)
    tiles = triton.cdiv(vocab, block)
    dev = logits.device
    top_id = torch.empty((n, k), dtype=torch.int64, device=dev)
    top_lp = torch.empty((n, k), dtype=torch.float32, device=dev)
    ce = torch.empty(n, dtype=torch.float32, device=dev)
    if n == 0:
        return top_id, top_lp, ce
    cand_val = torch.empty((n, tiles, k), dtype=torch.float32, device=dev)
    cand_id = torch.empty((n, tiles, k), dtype=torch.int32, device=dev)
    tile_max = torch.empty((n, tiles), dtype=torch.float32, device=dev)
    tile_sum = torch.empty((n, tiles), dtype=torch.float32, device=dev)
    gold_logit = torch.full((n,), torch.nan, dtype=torch.float32, device=dev)  # an id outside [0, V): NaN CE
    kp = triton.next_power_of_2(k)
    _tiles[(n, tiles)](
        logits, logits.stride(0), gold.to(dev), vocab, cand_val, cand_id, tile_max, tile_sum, gold_logit, tiles,
        K=k, KP=kp, BLOCK=block, WIDE=logits.element_size() == 4, num_warps=num_warps,
    )
    _merge[(n,)](
        cand_val, cand_id, tile_max, tile_sum, gold_logit, top_id, top_lp, ce, tiles,
        K=k, KP=kp, CP=triton.next_power_of_2(tiles * k), TP=triton.next_power_of_2(tiles), num_warps=4,
    )
    return top_id, top_lp, ce


@triton.jit
def _rows(
    logits_ptr, stride, gold_ptr, vocab, out_id_ptr, out_lp_ptr, out_ce_ptr,
    K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program per row, tile after tile: a running top-K whose K-th key is the bar a tile must pass,
    so after the first tiles most tiles cost one max and one sum (no per-tile candidates)."""
    row = tl.program_id(0)
    base = logits_ptr + row.to(tl.int64) * stride
    offs = tl.arange(0, BLOCK)
    kk = tl.arange(0, KP)
    lowest = tl.full([BLOCK], -9223372036854775807 - 1, tl.int64)
    top = tl.where(kk < K, -9223372036854775807 - 1, 9223372036854775807).to(tl.int64)  # lanes >= K never leave
    bar = tl.min(top, 0)
    run_max = float("-inf")
    run_sum = 0.0
    for start in range(0, vocab, BLOCK):
        col = start + offs
        xf = tl.load(base + col, mask=col < vocab, other=float("-inf")).to(tl.float32)
        bits = xf.to(tl.int32, bitcast=True)
        key = ((bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64) << 32) | (0x7FFFFFFF - col).to(tl.int64)
        key = tl.where(col < vocab, key, lowest)
        best = tl.max(key, 0)
        srt = (best >> 32).to(tl.int32)
        new = tl.maximum(run_max, (srt ^ ((srt >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True))
        scale = tl.where(run_max == float("-inf"), 0.0, tl.exp(run_max - new))
        part = tl.where(new == float("-inf"), 0.0, tl.sum(tl.exp(xf - new), 0))
        run_sum = run_sum * scale + part
        run_max = new
        while best > bar:
            slot = tl.min(tl.where(top == bar, kk, KP), 0)
            top = tl.where(kk == slot, best, top)
            bar = tl.min(top, 0)
            key = tl.where(key == best, lowest, key)
            best = tl.max(key, 0)
    lse = run_max + tl.log(run_sum)
    tl.store(out_ce_ptr + row, lse - tl.load(base + tl.load(gold_ptr + row)).to(tl.float32))
    top = tl.where(kk < K, top, -9223372036854775807 - 1)
    lps = tl.full([KP], float("-inf"), tl.float32)
    ids = tl.zeros([KP], tl.int64)
    for j in tl.static_range(K):
        best = tl.max(top, 0)
        top = tl.where(top == best, -9223372036854775807 - 1, top)
        srt = (best >> 32).to(tl.int32)
        lps = tl.where(kk == j, (srt ^ ((srt >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True) - lse, lps)
        ids = tl.where(kk == j, 0x7FFFFFFF - (best & 0xFFFFFFFF), ids)
    tl.store(out_lp_ptr + row.to(tl.int64) * K + kk, lps, mask=kk < K)
    tl.store(out_id_ptr + row.to(tl.int64) * K + kk, ids, mask=kk < K)


def rowloop_row_stats(
    logits: torch.Tensor, gold: torch.Tensor, k: int, block: int, num_warps: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same outputs from one program per row (`_rows`): one launch, no candidate buffers."""
    n, vocab = logits.shape
    if not 0 < k <= vocab:
        raise ValueError(f"top-K of {k} over a vocabulary of {vocab}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    dev = logits.device
    top_id = torch.empty((n, k), dtype=torch.int64, device=dev)
    top_lp = torch.empty((n, k), dtype=torch.float32, device=dev)
    ce = torch.empty(n, dtype=torch.float32, device=dev)
    if n:
        block = max(min(block, triton.next_power_of_2(vocab)), 16)
        _rows[(n,)](logits, logits.stride(0), gold.to(dev), vocab, top_id, top_lp, ce,
                    K=k, KP=triton.next_power_of_2(k), BLOCK=block, num_warps=num_warps)
    return top_id, top_lp, ce

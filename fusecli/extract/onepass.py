"""Top-K, log-sum-exp and the gold token's logit from one read of a logits chunk.

Why: the compiled torch path (fusecli/extract/topk.py `row_stats`) reads each [rows, V] chunk twice,
once for the fused log-normaliser/CE pass and again in torch.topk's radix select, which makes several
passes of its own; at a 152K vocabulary that traffic rivals the LM head's matrix product
(docs/benchmarks.md, "Extraction"). Here each chunk is read once, in tiles of `block` columns:

  1. per tile: its max m_t, s_t = sum exp(x - m_t) in fp32, and its K largest (value, id);
  2. per row: the K largest of the tiles' candidates, lse = M + log sum_t s_t exp(m_t - M), M = max m_t.

Order is (value descending, id ascending): every entry gets one integer key (the value's bits made
sortable, then the id reversed), so ties go to the lowest id and the result is deterministic; the
values, hence the stored rows, are those of the plain path. On CUDA both steps are Triton kernels
(fusecli/extract/onepass_kernel.py); elsewhere the same steps run in torch, which is the kernels'
readable reference (tests/extract/test_onepass.py checks both against plain log_softmax + topk).
"""

from __future__ import annotations

import torch

from fusecli.errors import FusecliError

BLOCK = 4096  # columns per tile: 38 tiles at a 152K vocabulary (see docs/benchmarks.md for the sweep)


def onepass_row_stats(
    logits: torch.Tensor, gold: torch.Tensor, k: int, block: int = BLOCK
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top-K ids int64 [N, K], their log-probabilities fp32 [N, K], CE of `gold` fp32 [N]) of logits [N, V].

    Same outputs as `row_stats` (to fp32 rounding of the log-normaliser); ties in value go to the lowest id.
    """
    if logits.is_cuda:
        try:
            from fusecli.extract.onepass_kernel import triton_row_stats
        except ImportError:
            raise FusecliError(
                "extract.onepass needs triton (torch's CUDA wheels bring it): install it or set extract.onepass: false"
            ) from None
        return triton_row_stats(logits, gold, k, block)
    return tiled_row_stats(logits, gold, k, block)


def sortable(values: torch.Tensor) -> torch.Tensor:
    """fp32 -> int32 in the same order (negative floats have their magnitude bits flipped)."""
    bits = values.float().contiguous().view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def unsortable(keys: torch.Tensor) -> torch.Tensor:
    """The inverse of `sortable`."""
    return (keys ^ ((keys >> 31) & 0x7FFFFFFF)).view(torch.float32)


def row_keys(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 keys whose order is (value descending, id ascending) when taken largest first; ids < 2**31."""
    return (sortable(values).long() << 32) | (0x7FFFFFFF - ids.long())


def split_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 values, int64 ids) of `row_keys`."""
    return unsortable((keys >> 32).int()), 0x7FFFFFFF - (keys & 0xFFFFFFFF)


def tiled_row_stats(
    logits: torch.Tensor, gold: torch.Tensor, k: int, block: int = BLOCK
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernels' two steps in torch, tile for tile (the CPU path and their reference)."""
    n, v = logits.shape
    tiles = -(-v // block)
    x = torch.nn.functional.pad(logits.float(), (0, tiles * block - v), value=-torch.inf).view(n, tiles, block)
    col = torch.arange(tiles * block, device=x.device).view(1, tiles, block)
    tile_max = x.amax(-1)
    tile_sum = torch.where(tile_max == -torch.inf, 0.0, torch.exp(x - tile_max[..., None]).sum(-1))
    cand = torch.topk(row_keys(x, col.expand_as(x)), min(k, block), dim=-1).values  # step 1: [N, tiles, K]
    top_val, top_id = split_keys(torch.topk(cand.view(n, -1), k, dim=-1).values)  # step 2
    top = tile_max.amax(-1, keepdim=True)
    scaled = torch.where(tile_max == -torch.inf, 0.0, tile_sum * torch.exp(tile_max - top))
    lse = top + torch.log(scaled.sum(-1, keepdim=True))
    gold_logit = x.view(n, -1).gather(1, gold[:, None].to(x.device))
    return top_id, top_val - lse, (lse - gold_logit).squeeze(-1)

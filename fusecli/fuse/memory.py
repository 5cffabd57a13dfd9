"""How many decoder layers to checkpoint: a GPU memory estimate for `fuse.gradient_checkpointing: auto`.

Checkpointing every layer (the Trainer's switch) recomputes the whole forward in backward: a third
more FLOPs for memory a large card may not need. Here the layers are checkpointed only as far as the
estimate below says the card needs, first layers first (transformers keeps one flag per layer).

The estimate, per GPU, in bytes (bf16 autocast over fp32 master weights, flash attention):
- states: fp32 weights + bf16 casts + fp32 gradients + AdamW's two fp32 moments, 18 B per parameter
  without ZeRO; under ZeRO-2 DeepSpeed keeps bf16 weights and gradients (4 B) and partitions the fp32
  master, gradient and moments (16 B) over the ranks; under ZeRO-3 all of it is partitioned;
- a layer kept whole: ACT_H x hidden + ACT_I x intermediate bytes per token (its saved inputs of the
  projections, norms, attention and SwiGLU, bf16 and some fp32), a checkpointed one only its fp32 input;
- the loss's head chunk: fp32 and bf16 logits of `logits_chunk` rows and their gradient.
The coefficients are deliberately generous (docs/benchmarks.md compares them with measured peaks).
"""

from __future__ import annotations

from dataclasses import dataclass

ACT_H = 40  # bytes per token per unit of hidden size, one layer kept for backward
ACT_I = 8  # bytes per token per unit of intermediate size (SwiGLU: gate, up, act, product in bf16)
HEADROOM = 0.9  # share of the card's memory the estimate may fill (allocator fragmentation, workspaces)


@dataclass(frozen=True)
class Shape:
    n_params: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int


def shape_of(model: object) -> Shape:
    cfg = model.config  # type: ignore[attr-defined]
    text = getattr(cfg, "text_config", None) or cfg
    n = sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]
    inter = getattr(text, "intermediate_size", None) or 4 * text.hidden_size
    return Shape(n, text.num_hidden_layers, text.hidden_size, inter, text.vocab_size)


def state_bytes(n_params: int, zero_stage: int, world: int) -> float:
    if zero_stage == 3:
        return 20 * n_params / world
    if zero_stage in (1, 2):
        return 4 * n_params + 16 * n_params / world
    return 18 * n_params


def layer_bytes(shape: Shape, tokens: int, checkpointed: bool) -> float:
    if checkpointed:
        return 4 * shape.hidden * tokens
    return (ACT_H * shape.hidden + ACT_I * shape.intermediate) * tokens


def estimate_bytes(shape: Shape, tokens: int, n_checkpointed: int, zero_stage: int, world: int, chunk: int) -> float:
    """Peak bytes per GPU with the first `n_checkpointed` layers checkpointed."""
    kept = shape.layers - n_checkpointed
    small = n_checkpointed * layer_bytes(shape, tokens, True)
    # The first layers are the checkpointed ones, so backward has freed every kept layer before it
    # recomputes them, one at a time: the peak is the end of forward or one recomputed layer.
    acts = small + max(kept, 1 if n_checkpointed else 0) * layer_bytes(shape, tokens, False)
    head = 14 * min(chunk, tokens) * shape.vocab  # bf16 + fp32 logits and the fp32 gradient
    return state_bytes(shape.n_params, zero_stage, world) + acts + head


def layers_to_checkpoint(
    shape: Shape, tokens: int, memory_bytes: float, zero_stage: int = 0, world: int = 1, chunk: int = 2048
) -> int:
    """The fewest layers to checkpoint for the estimate to fit in HEADROOM of the card (all if none does)."""
    budget = HEADROOM * memory_bytes
    for n in range(shape.layers + 1):
        if estimate_bytes(shape, tokens, n, zero_stage, world, chunk) <= budget:
            return n
    return shape.layers

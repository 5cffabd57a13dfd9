"""Fusion functions: how the teachers' distributions of one sequence become one target (a registry).

Each function takes the teachers' sequence CEs (index 0 is the pivot itself) and returns per-teacher
weights for that sequence; the target is sum_k w_k q_k, kept sparse as concatenated (ids, probs).
Adding a function is one registered entry plus a test. Three switches act around the function:
`apply_gate` drops incompetent teachers before it runs (fuse.gate), and two controls replace whatever the
teachers would have taught: `reference_targets` (fuse.teacher: reference) and `pivot_only` (fuse.teacher:
pivot, self-distillation).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

FusionFn = Callable[[np.ndarray], np.ndarray]
FUSION_FUNCTIONS: dict[str, FusionFn] = {}


def register(name: str) -> Callable[[FusionFn], FusionFn]:
    def deco(fn: FusionFn) -> FusionFn:
        FUSION_FUNCTIONS[name] = fn
        return fn

    return deco


def teacher_probs(logprobs: np.ndarray, temperature: float) -> np.ndarray:
    """q = softmax(z_topK / T) over the K stored ids (docs/method.md stage 4); -inf padding gets 0."""
    z = logprobs / temperature
    with np.errstate(invalid="ignore"):
        z = z - np.max(z, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        e = np.exp(z)
        return np.nan_to_num(e / e.sum(axis=-1, keepdims=True))


@register("mince")
def min_ce(seq_ce: np.ndarray) -> np.ndarray:
    """MinCE (FuseChat): the whole sequence takes the teacher with the largest r = exp(-CE).

    Ties go to the lowest index (the pivot), so a source must be strictly better to be chosen.
    """
    ce = np.where(np.isfinite(seq_ce), seq_ce, np.inf)
    w = np.zeros(len(ce))
    w[int(np.argmin(ce))] = 1.0
    return w


@register("avgce")
def avg_ce(seq_ce: np.ndarray) -> np.ndarray:
    """AvgCE (FuseLLM's variant): weights softmax(r_k) with r_k = exp(-CE_k); missing teachers get 0."""
    r = np.where(np.isfinite(seq_ce), np.exp(-seq_ce), -np.inf)
    z = np.exp(r - r.max())
    return z / z.sum()


def apply_gate(seq_ce: np.ndarray, gate: float | None) -> np.ndarray:
    """The teacher-competence gate: a teacher whose sequence CE exceeds `gate` nats is dropped (CE -> inf).

    None is the paper (every teacher competes). A sequence whose teachers are all dropped gets no fusion term.
    """
    if gate is None:
        return seq_ce
    return np.where(seq_ce > gate, np.inf, seq_ce)


def reference_targets(gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference one-hot as a sparse target: ids [R, 1] = the gold tokens, probs [R, 1] = 1.

    Its fusion CE equals the SFT CE, so a row with this target trains exactly as plain SFT.
    """
    return gold.astype(np.int64)[:, None], np.ones((len(gold), 1), dtype=np.float32)


def pivot_only(seq_ce: np.ndarray) -> np.ndarray:
    """The self-distillation control's weights: the pivot (teacher 0) alone, as if no source were locked.

    `seq_ce` is after the gate: a gated pivot leaves no teacher (all-zero weights: the reference one-hot), as
    in a run without sources, even where a source would have been competent.
    """
    w = np.zeros(len(seq_ce))
    w[0] = 1.0 if np.isfinite(seq_ce[0]) else 0.0
    return w


def fuse_targets(weights: np.ndarray, ids: list[np.ndarray], probs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the teachers with non-zero weight: ids [R, sum K], probs [R, sum K] scaled by w_k.

    Repeated ids across teachers are kept as separate columns: the loss is linear in q, so this equals
    summing them, without a dense |V| target.
    """
    keep = [k for k in range(len(weights)) if weights[k] > 0]
    out_ids = np.concatenate([ids[k] for k in keep], axis=1)
    out_p = np.concatenate([weights[k] * probs[k] for k in keep], axis=1)
    return out_ids, out_p

"""Fusion functions: how the teachers' distributions of one sequence become one target (a registry).

Each function takes the teachers' sequence CEs (index 0 is the pivot itself) and returns per-teacher
weights for that sequence; the target is sum_k w_k q_k, kept sparse as concatenated (ids, probs).
Adding a function is one registered entry plus a test.
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


def fuse_targets(weights: np.ndarray, ids: list[np.ndarray], probs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the teachers with non-zero weight: ids [R, sum K], probs [R, sum K] scaled by w_k.

    Repeated ids across teachers are kept as separate columns: the loss is linear in q, so this equals
    summing them, without a dense |V| target.
    """
    keep = [k for k in range(len(weights)) if weights[k] > 0]
    out_ids = np.concatenate([ids[k] for k in keep], axis=1)
    out_p = np.concatenate([weights[k] * probs[k] for k in keep], axis=1)
    return out_ids, out_p

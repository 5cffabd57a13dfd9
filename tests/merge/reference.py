"""Plain NumPy versions of the merge formulas (docs/method.md, stage 5), written independently of
fusecli's torch code. Task vectors are formed in float32, as fusecli does, so that selections
(top-k by magnitude or variance) see the same values; the arithmetic is done in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

Reference = Callable[[np.ndarray, list[np.ndarray], str], np.ndarray]


def task_vectors(base: np.ndarray, models: list[np.ndarray]) -> np.ndarray:
    return np.stack([m.astype(np.float32) - base.astype(np.float32) for m in models]).astype(np.float64)


def column(values: np.ndarray | list[float], ndim: int) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, *([1] * (ndim - 1)))


def agreement(d: np.ndarray) -> np.ndarray:
    elected = np.where(d.sum(axis=0) >= 0, 1.0, -1.0)
    return np.sign(d) == elected


def denominator(x: np.ndarray) -> np.ndarray:
    return np.where(x == 0, 1.0, x)


def top_k(score: np.ndarray, k: int) -> np.ndarray:
    if k <= 0:
        return np.zeros(score.shape, dtype=bool)
    if k >= score.size:
        return np.ones(score.shape, dtype=bool)
    threshold = np.sort(score.ravel())[::-1][k - 1]
    return score >= threshold


def sce(base: np.ndarray, models: list[np.ndarray], tau: float, variant: str) -> tuple[np.ndarray, np.ndarray]:
    d = task_vectors(base, models)
    if tau >= 1:
        mask = np.ones(d.shape[1:], dtype=bool)
    else:
        var = d.var(axis=0)
        mask = top_k(var, int(tau * np.count_nonzero(var)))
    if variant == "sparse":
        d = d * mask
    energy = ((d * mask) ** 2).reshape(len(models), -1).mean(axis=1)
    eta = np.full(len(models), 1 / len(models)) if energy.sum() == 0 else energy / energy.sum()
    w = column(eta, d.ndim) * agreement(d)
    return base + (w * d).sum(axis=0) / denominator(w.sum(axis=0)), eta


def varm(base: np.ndarray, models: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    energy = (task_vectors(base, models) ** 2).reshape(len(models), -1).mean(axis=1)
    w = np.full(len(models), 1 / len(models)) if energy.sum() == 0 else energy / energy.sum()
    thetas = np.stack(models).astype(np.float64)
    return (column(w, thetas.ndim) * thetas).sum(axis=0), w


def linear(models: list[np.ndarray], weights: list[float], normalize: bool) -> np.ndarray:
    thetas = np.stack(models).astype(np.float64)
    merged = (column(weights, thetas.ndim) * thetas).sum(axis=0)
    return merged / denominator(np.sum(weights)) if normalize else merged


def generalized(base: np.ndarray, d: np.ndarray, weights: list[float], consensus: bool, normalize: bool) -> np.ndarray:
    w = column(weights, d.ndim)
    weighted = d * w
    if consensus:
        e = agreement(weighted)
        mixed, divisor = (weighted * e).sum(axis=0), (w * e).sum(axis=0)
    else:
        mixed, divisor = weighted.sum(axis=0), w.sum()
    return base + (mixed / denominator(divisor) if normalize else mixed)


def ties(base: np.ndarray, models: list[np.ndarray], weights: list[float], density: float) -> np.ndarray:
    d = task_vectors(base, models)
    k = max(1, int(density * d[0].size))
    trimmed = np.stack([di * top_k(np.abs(di), k) for di in d])
    return generalized(base, trimmed, weights, consensus=True, normalize=True)


def compare_with_reference(
    out: dict[str, np.ndarray], base: dict[str, np.ndarray], models: list[dict[str, np.ndarray]], ref: Reference
) -> None:
    """Every output tensor equals the reference (up to float32 rounding)."""
    assert set(out) == set(base)
    for name, b in base.items():
        expected = ref(b, [m[name][: b.shape[0]] for m in models], name)
        assert out[name].dtype == b.dtype, name
        np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-7, err_msg=name)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".safetensors"}

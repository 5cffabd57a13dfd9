"""The report's PNGs, drawn with matplotlib's Agg backend (no display needed, same bytes on CI)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fusecli.report.data import CURVES, Coefficients  # noqa: E402

DPI = 110


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def score_bars(scores: dict[str, dict[str, dict]], metric: str, title: str, path: Path) -> Path:
    """Grouped bars: one group per domain, one bar per model; a missing score leaves a gap."""
    models = list(scores)
    domains = sorted({d for s in scores.values() for d in s})
    width = 0.8 / max(len(models), 1)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(models), 2)))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + len(domains) * (0.9 + 0.16 * len(models))), 4.2))
    x = np.arange(len(domains))
    for i, model in enumerate(models):
        values = [scores[model].get(d, {}).get(metric) for d in domains]
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x - 0.4 + (i + 0.5) * width, heights, width, label=model, color=colors[i])
    ax.set_xticks(x, domains)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=1 + len(models) // 12, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def training_curves(curves: dict[str, dict[str, tuple[list[float], list[float]]]], path: Path) -> Path:
    """One subplot per dvclive series (loss, SFT loss, fusion loss), one line per training run."""
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4), squeeze=False)
    for ax, name in zip(axes[0], CURVES, strict=True):
        for run, series in curves.items():
            if name in series:
                steps, values = series[name]
                ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=run)
        ax.set_title(name)
        ax.set_xlabel("logged step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def coefficient_heatmap(method: str, c: Coefficients, path: Path) -> Path:
    """Rows: embeddings, layers, head; columns: sources; cell: the mean merge coefficient."""
    values = np.asarray(c.values, dtype=float)
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(c.sources), 1.2 + 0.32 * len(c.rows)))
    image = ax.imshow(values, cmap="viridis", aspect="auto")  # the data's range: differences are the point
    ax.set_xticks(range(len(c.sources)), c.sources, rotation=30, ha="right")
    ax.set_yticks(range(len(c.rows)), c.rows)
    if values.size <= 400:
        for (r, s), v in np.ndenumerate(values):
            ax.text(s, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_title(f"{method}: mean {c.kind} per layer and source")
    fig.colorbar(image, ax=ax, fraction=0.05)
    return _save(fig, path)

"""Replies cut at `extract.max_length`, counted: per row, and as the share of response tokens lost.

A dialogue longer than max_length tokens loses the end of its last reply and that reply's end-of-turn token,
so the fused model learns those replies without their ending (and learns to stop less often). `dataset.max_chars`
bounds characters, not tokens, so it does not prevent this. The extract stage counts the cut rows into its
store's manifest summary and warns; the report shows the counts of every model (each has its own tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusecli.store import MANIFEST

if TYPE_CHECKING:
    from fusecli.data.render import Tokenized

KEYS = ("cut_rows", "response_tokens", "response_tokens_cut")


def count(items: Sequence[Tokenized], rows: Sequence[int]) -> dict[str, Any]:
    """Of `rows`: the ones with response tokens past max_length, and response tokens in all and past it."""
    cut = [i for i in rows if items[i].cut]
    return {
        "cut_rows": cut,
        "response_tokens": sum(int(items[i].label_mask.sum()) + items[i].cut for i in rows),
        "response_tokens_cut": sum(items[i].cut for i in cut),
    }


def combine(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The counts of several ranks as one."""
    return {
        "cut_rows": sorted(i for p in parts for i in p.get("cut_rows", [])),
        "response_tokens": sum(p.get("response_tokens", 0) for p in parts),
        "response_tokens_cut": sum(p.get("response_tokens_cut", 0) for p in parts),
    }


def share_cut(summary: dict[str, Any]) -> float:
    return summary["response_tokens_cut"] / max(summary["response_tokens"], 1)


def warning(summary: dict[str, Any], rows: int, max_length: int, ids: Sequence[str] | None = None) -> str | None:
    """One line when rows were cut: how many, the response tokens lost, and the fix; None when none was."""
    cut = summary.get("cut_rows") or []
    if not cut:
        return None
    named = f" (ids {', '.join(ids[i] for i in cut[:10])}{' and more' if len(cut) > 10 else ''})" if ids else ""
    return (f"{len(cut)} of {rows} rows cut at extract.max_length = {max_length}{named}: "
            f"{summary['response_tokens_cut']:,} of {summary['response_tokens']:,} response tokens "
            f"({share_cut(summary):.1%}) lost with their end-of-turn: raise extract.max_length, or lower "
            "dataset.max_chars (`fusecli check` says what fits)")


def read(folder: str | Path) -> dict[str, Any] | None:
    """An extract store's truncation counts, rows and max_length from its manifest; None when it has none
    (not built yet, or built before the counts were kept)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    summary, meta = manifest.get("summary") or {}, manifest.get("meta") or {}
    if not all(k in summary for k in KEYS) or "rows" not in meta:
        return None
    return {**{k: summary[k] for k in KEYS}, "rows": meta["rows"], "max_length": meta.get("max_length")}

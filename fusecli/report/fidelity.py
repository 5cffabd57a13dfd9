"""The report's alignment fidelity section, from each source's align/<slug>/coverage.json.

Coverage alone said 94-96% "mapped" while the aligned rows put the teachers' mass on word pieces that can
never start an answer (issue 23): these tables show where each source's teacher mass lands, so a broken
alignment is visible before anyone reads the scores.
"""

from __future__ import annotations

from typing import Any

from fusecli.align.dist import MAPPED_RULES
from fusecli.align.dist import RULES as ROW_RULES
from fusecli.align.pieces import PIECE_RULES
from fusecli.markdown import table

INTRO = (
    "Per source, from `align/<slug>/coverage.json`: **mapped**, the share of the pivot's response positions "
    "taught by a source row (the others are one-hot on the pivot's gold token); **consistent**, the share of the "
    "teacher mass in those rows that lands on prefix-consistent pivot tokens (a pivot token that starts the "
    "source token's text, or the pivot's special token for a source special token); **dropped**, the share the "
    "map sends to no pivot token; and the pivot's end-of-turn positions taught by the source's own end of turn "
    "(rows, the mean probability they give the pivot's end of turn, the share where it is the most likely token)."
)
SPLIT = (
    "Where the teacher mass is, as `consistent of total` (both shares of all the source's teacher mass): per row "
    "rule (the text the source row follows: turn content or the end of turn) and per class of source token "
    "(exact match in the pivot's vocabulary, the pivot's first piece of it, a longest prefix, special, none)."
)
ORDER = (*ROW_RULES, *PIECE_RULES)  # the align stage's own rule names, in its order
RULES = ("Why positions are one-hot: the share of the pivot's response positions per row rule ("
         + ", ".join(f"`{r}`" for r in MAPPED_RULES) + " are mapped).")


def _fidelity(coverage: dict[str, Any] | None) -> dict[str, Any]:
    found = (coverage or {}).get("fidelity")
    return found if isinstance(found, dict) else {}


def _share(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def consistent_share(coverage: dict[str, Any] | None) -> float | None:
    """The headline figure: the share of teacher mass on prefix-consistent pivot tokens (None: not measured)."""
    return _share(_fidelity(coverage).get("consistent"))


def _count(value: Any) -> str | None:
    """A count as text (markdown.cell would print an int to three decimals)."""
    return str(int(value)) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _of(split: Any) -> str | None:
    """`consistent of total` for one rule's {mass, consistent}, or None (`-`)."""
    if not isinstance(split, dict) or _share(split.get("mass")) is None:
        return None
    consistent = _share(split.get("consistent"))
    return f"{'-' if consistent is None else f'{consistent:.3f}'} of {split['mass']:.3f}"


def _keys(alignment: dict[str, dict[str, Any] | None], get: Any) -> list[str]:
    """The rule names the sources' files have, in the align stage's order (coverage.json's keys are sorted),
    names a newer align stage adds after them."""
    names = {name for coverage in alignment.values() for name in get(coverage) or {}}
    return [n for n in ORDER if n in names] + sorted(names - set(ORDER))


def headline_table(alignment: dict[str, dict[str, Any] | None]) -> list[str]:
    """One row per source: mapped, consistent, dropped and the end-of-turn figures."""
    rows = []
    for slug, coverage in alignment.items():
        f = _fidelity(coverage)
        eot = f.get("end_of_turn") if isinstance(f.get("end_of_turn"), dict) else {}
        rows.append([slug, _share((coverage or {}).get("coverage")), _share(f.get("consistent")),
                     _share(f.get("dropped")), _count(eot.get("rows")), _share(eot.get("mass_on_end_of_turn")),
                     _share(eot.get("top_is_end_of_turn"))])
    header = ["source", "mapped", "consistent", "dropped", "end-of-turn rows", "P(end of turn)",
              "top = end of turn"]
    return table(header, rows)


def split_table(alignment: dict[str, dict[str, Any] | None]) -> list[str]:
    """Per source, `consistent of total` per row rule and per piece rule."""
    by_row = _keys(alignment, lambda c: _fidelity(c).get("by_row_rule"))
    by_piece = _keys(alignment, lambda c: _fidelity(c).get("by_piece_rule"))
    rows = []
    for slug, coverage in alignment.items():
        f = _fidelity(coverage)
        rows.append([slug, *(_of((f.get("by_row_rule") or {}).get(n)) for n in by_row),
                     *(_of((f.get("by_piece_rule") or {}).get(n)) for n in by_piece)])
    header = ["source", *(f"row: {n}" for n in by_row), *(f"piece: {n}" for n in by_piece)]
    return table(header, rows)


def rules_table(alignment: dict[str, dict[str, Any] | None]) -> list[str]:
    """Per source, the response positions and the share of them under each row rule."""
    names = _keys(alignment, lambda c: (c or {}).get("rules"))
    rows = []
    for slug, coverage in alignment.items():
        counts = (coverage or {}).get("rules") or {}
        total = sum(int(v) for v in counts.values())
        rows.append([slug, _count(total) if counts else None,
                     *(int(counts.get(n, 0)) / total if total else None for n in names)])
    return table(["source", "positions", *names], rows)


def fidelity_lines(alignment: dict[str, dict[str, Any] | None]) -> list[str]:
    """The section's Markdown lines (no heading)."""
    if not any(_fidelity(c) for c in alignment.values()):
        return ["No alignment fidelity found (align/<slug>/coverage.json from the current align stage).", ""]
    lines = [INTRO, ""] + headline_table(alignment) + ["", SPLIT, ""] + split_table(alignment) + [""]
    if any((c or {}).get("rules") for c in alignment.values()):
        lines += [RULES, ""] + rules_table(alignment) + [""]
    return lines

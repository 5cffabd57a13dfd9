"""How much of what a source says survives the alignment (coverage.json `fidelity`, the report).

For every source row the align stage uses, the teacher's probability mass (exp of its stored top-K
log-probabilities) is split by where the map sends each token: to a prefix-consistent pivot token (one
that starts the same text, or a special token for a special token), to another pivot token (the paper's
maps can: `Archery` -> `rchery`), or nowhere (dropped). It is counted per row rule (content, end of turn)
and per class of source token (PIECE_RULES: exact match, first piece, longest prefix, special, none), so a
figure names where mass is lost. At end-of-turn rows it also counts the mass on the pivot's own end of turn,
over all sequences and over those whose source sequence CE is below the pivot's (the ones MinCE gives the
source): off its domain a source often does not stop where the reference does, and is not chosen there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fusecli.align.dist import RULES
from fusecli.align.pieces import PIECE_RULES, is_prefix_consistent
from fusecli.align.tokens import TokenTable

WHOLE_TOKEN_RULES = ("content", "end_of_turn")  # rows mapped token by token (within-token rows: `within_token`)


def consistent_targets(to_pivot: np.ndarray, source: TokenTable, pivot: TokenTable) -> np.ndarray:
    """bool [V_s]: whether the map sends source token s to a prefix-consistent pivot token."""
    return np.array([is_prefix_consistent(source, pivot, s, int(p)) for s, p in enumerate(to_pivot)], dtype=bool)


class Fidelity:
    """Teacher mass of the used source rows: total and prefix-consistent, per (row rule, piece rule)."""

    def __init__(self) -> None:
        self.mass = np.zeros((len(RULES), len(PIECE_RULES)))
        self.consistent = np.zeros_like(self.mass)
        self.dropped = 0.0  # mass on source tokens the map sends nowhere
        # end-of-turn rows, summed P(the pivot's gold end of turn), rows where it is the top pivot token;
        # row 0: every sequence, row 1: sequences the source wins under MinCE
        self.eot = np.zeros((2, 3))
        self.within = np.zeros(3)  # within-token rows, their source mass, the part that continues the prefix

    def add(
        self,
        ids: np.ndarray,
        logprobs: np.ndarray,
        row_rule: np.ndarray,
        gold: np.ndarray,
        state: dict[str, Any],
        source_wins: bool = False,
    ) -> None:
        """Source rows ids/logprobs [R, K] used for pivot gold tokens `gold` [R] under rules `row_rule` [R], of
        one sequence (`source_wins`: its source sequence CE is below the pivot's)."""
        if not len(ids):
            return
        to_pivot, consistent, piece_rule = state["to_pivot"], state["consistent"], state["piece_rule"]
        valid = (ids >= 0) & (ids < len(to_pivot))
        s = np.where(valid, ids, 0).astype(np.int64)
        with np.errstate(under="ignore"):
            mass = np.where(valid, np.exp(logprobs.astype(np.float64)), 0.0)
        rule = np.broadcast_to(row_rule.astype(np.int64)[:, None], ids.shape)
        np.add.at(self.mass, (rule, piece_rule[s]), mass)
        np.add.at(self.consistent, (rule, piece_rule[s]), np.where(consistent[s], mass, 0.0))
        self.dropped += float(np.where(to_pivot[s] < 0, mass, 0.0).sum())
        eot = row_rule == RULES.index("end_of_turn")
        if eot.any():
            on_gold = np.where(valid[eot] & (to_pivot[s[eot]] == gold[eot, None]), mass[eot], 0.0).sum(1)
            best = np.zeros_like(on_gold, dtype=bool)
            for r, (row_ids, row_mass) in enumerate(zip(s[eot], mass[eot], strict=True)):
                by_pivot: dict[int, float] = {}
                for i, m in zip(to_pivot[row_ids].tolist(), row_mass.tolist(), strict=True):
                    if i >= 0:
                        by_pivot[i] = by_pivot.get(i, 0.0) + m
                best[r] = bool(by_pivot) and max(by_pivot, key=by_pivot.__getitem__) == int(gold[eot][r])
            counts = np.array([eot.sum(), on_gold.sum(), best.sum()], dtype=np.float64)
            self.eot[0] += counts
            if source_wins:
                self.eot[1] += counts

    def add_within(self, source_logprobs: np.ndarray, aligned_logprobs: np.ndarray) -> None:
        """Within-token rows [R, K]: the source row's mass and what the conditioning on the prefix kept of it."""
        with np.errstate(under="ignore"):
            total = np.exp(source_logprobs.astype(np.float64)).sum()
            kept = np.exp(aligned_logprobs.astype(np.float64)).sum()
        self.within += [len(source_logprobs), total, kept]

    def merge(self, other: Fidelity) -> None:
        self.mass += other.mass
        self.consistent += other.consistent
        self.dropped += other.dropped
        self.eot += other.eot
        self.within += other.within

    def summary(self) -> dict[str, Any]:
        """Shares of the total teacher mass of the used rows; `consistent` is the headline figure."""
        total = float(self.mass.sum())

        def share(x: float) -> float | None:
            return x / total if total else None

        by_piece = {
            name: {"mass": share(float(self.mass[:, i].sum())), "consistent": share(float(self.consistent[:, i].sum()))}
            for i, name in enumerate(PIECE_RULES)
        }
        by_row = {
            name: {
                "mass": share(float(self.mass[RULES.index(name)].sum())),
                "consistent": share(float(self.consistent[RULES.index(name)].sum())),
            }
            for name in WHOLE_TOKEN_RULES
        }
        return {
            "teacher_mass": total,
            "consistent": share(float(self.consistent.sum())),
            "dropped": share(self.dropped),
            "by_piece_rule": by_piece,
            "by_row_rule": by_row,
            "end_of_turn": _eot(self.eot[0]),
            "end_of_turn_source_wins": _eot(self.eot[1]),
            "within_token": {
                "rows": int(self.within[0]),
                "kept": float(self.within[2] / self.within[1]) if self.within[1] else None,
            },
        }


def _eot(row: np.ndarray) -> dict[str, Any]:
    rows, mass, top = row.tolist()
    return {
        "rows": int(rows),
        "mass_on_end_of_turn": mass / rows if rows else None,
        "top_is_end_of_turn": top / rows if rows else None,
    }

"""Sources that teach nothing: the warning the fuse log and the top of reports/index.md share (issue 23).

A source that (almost) never wins the fusion function's choice leaves its fusion run training the pivot on
its own distributions and the references: `fused:<slug>` is then the SFT baseline under another name, and
every score comparison built on it says nothing about the source. That happened silently with broken
alignments, so both places where a user looks say it, from the same selection.json numbers. Kept free of
numpy and torch so the report stage imports it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIN_SHARE = 0.01  # a source teaching under this share of a run's sequences taught nothing worth training on


@dataclass(frozen=True)
class Taught:
    """How much of a fusion run one source taught: its summed weight over the run's sequences (for MinCE, the
    number of sequences whose teacher it was)."""

    source: str
    sequences: float
    total: int

    @property
    def share(self) -> float:
        return self.sequences / self.total if self.total else 0.0


def taught(selection: dict[str, Any], sources: list[str]) -> list[Taught]:
    """Per source, from a selection.json: the per-domain shares weighted by each domain's sequence count.

    A pair run's file from before `teacher_share` existed has only `source_share`, its one source's share.
    A file without `sequences` cannot be counted: no entries.
    """
    counts = {d: int(n) for d, n in (selection.get("sequences") or {}).items()}
    per_teacher = selection.get("teacher_share") or {}
    out = []
    for slug in sources:
        share = per_teacher.get(slug)
        if share is None and len(sources) == 1:
            share = selection.get("source_share")
        if not counts or not isinstance(share, dict):
            continue
        weighted = sum(float(share.get(d) or 0.0) * n for d, n in counts.items())
        out.append(Taught(slug, weighted, sum(counts.values())))
    return out


CONTROLS = {  # fuse.teacher -> what replaced the chosen teachers' distributions (fusecli/fuse/data.py)
    "reference": "every fused target is the reference one-hot",
    "pivot": "the sources are dropped: every fused target is the pivot's own distribution (self-distillation)",
}


def control_line(run: str, selection: dict[str, Any]) -> str | None:
    """The fuse log's line for a control run (None for a real one): the shares it reports are the selection its
    targets replaced, so a reader must not take them for what the sources taught."""
    teacher = selection.get("teacher")
    if teacher not in CONTROLS:
        return None
    return (f"{run}: control run (fuse.teacher: {teacher}): {CONTROLS[teacher]}; the teacher shares in "
            "selection.json are the selection those targets replaced")


def silent(selection: dict[str, Any], sources: list[str]) -> list[Taught]:
    """The sources that taught under MIN_SHARE of the run; none for a control (`fuse.teacher: reference` or
    `pivot`), whose sources teach nothing whoever was chosen."""
    if selection.get("teacher") in CONTROLS:
        return []
    return [t for t in taught(selection, sources) if t.share < MIN_SHARE]


def warning_line(run: str, t: Taught, selection: dict[str, Any], pair: bool) -> str:
    """One line: what the source taught (counted), what that means for the run's model, and what to check."""
    fn = selection.get("fusion_fn") or "the fusion function"
    never = "the source never won MinCE" if fn == "mince" else f"the source carried almost no {fn} weight"
    outcome = "fused = SFT" if pair else "fuselm learned nothing from it"
    fixes = [f"check align/{t.source}/coverage.json (coverage, fidelity)",
             f"`fusecli inspect-alignment --row ID --slug {t.source}`"]
    if fn == "mince":
        fixes.append("or set fuse.fusion_fn: avgce")
    if selection.get("gate") is not None:
        fixes.append("or raise fuse.gate")
    return (f"{run}: source {t.source} taught {t.sequences:.0f} of {t.total} sequences ({t.share:.1%}, under "
            f"{MIN_SHARE:.0%}): {never}: {outcome}; {', '.join(fixes)}")


def warnings(run: str, selection: dict[str, Any], sources: list[str]) -> list[str]:
    """The warning lines of one fusion run (fuse@<slug>: one source; fuse_all: every source)."""
    pair = len(sources) == 1
    return [warning_line(run, t, selection, pair) for t in silent(selection, sources)]

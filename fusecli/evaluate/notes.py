"""Why a score is missing or covers fewer rows than the domain has: one line per cause, from the row counts
that score_model keeps beside each score (fusecli/evaluate/run.py).

A `-` in a table says nothing about why; these lines do, with the setting that fixes it. The evaluate stage
prints them as warnings and keeps them in eval/metrics.json (`notes`); both reports show them. Models that
share a tokenizer (the pivot and every model trained from it) have the same counts, so a cause is written
once with the models it applies to.
"""

from __future__ import annotations

from collections import defaultdict

from fusecli.evaluate.names import MERGED
from fusecli.evaluate.params import EvalParams


def domain_notes(domain: str, s: dict, params: EvalParams) -> list[str]:
    """The causes for one model's scores in one domain (scores without row counts, from an older run: none)."""
    rows = s.get("rows")
    if not rows:
        return []
    k, length = params.max_new_tokens, params.max_length
    notes = []
    too_long, cut, ce_rows = s.get("em_too_long", 0), s.get("em_answer_cut", 0), s.get("ce_rows", rows)
    if s.get("em") is None and too_long:
        notes.append(f"EM not computed for {domain}: its {too_long} rows have no `answer` and a last reply longer "
                     f"than evaluate.max_new_tokens = {k} tokens: give them a short `answer`, or raise "
                     "evaluate.max_new_tokens")
    elif too_long:
        notes.append(f"EM for {domain} over {s.get('em_rows')} of {rows} rows: {too_long} have no `answer` and a "
                     f"last reply longer than evaluate.max_new_tokens = {k} tokens (left out)")
    if cut:
        notes.append(f"EM for {domain}: {cut} `answer`s are longer than evaluate.max_new_tokens = {k} tokens and "
                     "score as misses: raise evaluate.max_new_tokens")
    if s.get("ce") is None:
        notes.append(f"CE not computed for {domain}: none of its {rows} rows has a response token within "
                     f"evaluate.max_length = {length} tokens: raise evaluate.max_length")
    elif ce_rows < rows:
        notes.append(f"CE for {domain} over {ce_rows} of {rows} rows: the others have no response token within "
                     f"evaluate.max_length = {length} tokens")
    return notes


def metric_notes(scores: dict[str, dict[str, dict]], params: EvalParams) -> list[str]:
    """Every cause over every model (`merged`, an alias, left out), each followed by the models it concerns."""
    models = [m for m in scores if m != MERGED]
    by_note: dict[str, list[str]] = defaultdict(list)
    for model in models:
        for domain, s in sorted(scores[model].items()):
            for note in domain_notes(domain, s, params):
                by_note[note].append(model)
    return [f"{note} ({'every model' if who == models else ', '.join(who)})" for note, who in by_note.items()]

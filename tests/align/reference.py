"""Plain, obviously-correct references for the alignment code, and hand-made token tables."""

from __future__ import annotations

import math

from fusecli.align.tokens import MARKER, TokenTable


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def token_cost(a: str, b: str) -> int:
    """docs/method.md: stripped edit distance; unstripped (markers unified) when a stripped string is empty."""
    sa, sb = a.replace(MARKER, ""), b.replace(MARKER, "")
    return levenshtein(sa, sb) if sa and sb else levenshtein(a, b)


def mined_reference(cost: list[list[int]]) -> list[list[int]]:
    """The MinED DP written out: cost[i][j] for source i, pivot j; per pivot position, its source positions."""
    m, n = len(cost), len(cost[0])
    d = [[math.inf] * (n + 1) for _ in range(m + 1)]
    d[0][0] = 0
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            d[i][j] = cost[i - 1][j - 1] + min(d[i - 1][j], d[i][j - 1], d[i - 1][j - 1])
    i, j, path = m, n, []
    while (i, j) != (0, 0):
        path.append((i - 1, j - 1))
        moves = [(d[i - 1][j - 1], i - 1, j - 1), (d[i - 1][j], i - 1, j), (d[i][j - 1], i, j - 1)]
        best = min(v for v, _, _ in moves)
        _, i, j = next(mv for mv in moves if mv[0] == best)  # ties: diagonal, then up, then left
        if (i, j) != (0, 0) and (i == 0 or j == 0):
            raise AssertionError("the path left the table")
    out: list[list[int]] = [[] for _ in range(n)]
    for si, pj in reversed(path):
        out[pj].append(si)
    return out


def overlap_reference(pivot_spans: list[tuple[int, int]], source_spans: list[tuple[int, int]]) -> list[list[int]]:
    """Source tokens whose spans overlap each pivot span; an empty-handed pivot token takes the first
    source token ending after its start (else the last one)."""
    out = []
    for a, b in pivot_spans:
        hits = [k for k, (c, e) in enumerate(source_spans) if c < b and a < e]
        if not hits:
            after = [k for k, (_, e) in enumerate(source_spans) if e > a]
            hits = [after[0] if after else len(source_spans) - 1]
        out.append(hits)
    return out


def make_table(
    tokens: list[str],
    bos: str | None = None,
    eos: str | None = None,
    unk: str | None = None,
    special: tuple[str, ...] = (),
) -> TokenTable:
    """A TokenTable from canonical token strings (index = id), as `TokenTable.from_tokenizer` would give;
    bos, eos and `special` are special tokens."""
    lookup: dict[str, int] = {}
    for i, t in enumerate(tokens):
        lookup.setdefault(t, i)
    return TokenTable(
        name="hand-made",
        kind="metaspace",
        canon=list(tokens),
        stripped=[t.replace(MARKER, "") for t in tokens],
        lookup=lookup,
        special=frozenset(tokens.index(t) for t in (bos, eos, *special) if t),
        bos_id=tokens.index(bos) if bos else None,
        eos_id=tokens.index(eos) if eos else None,
        unk_id=tokens.index(unk) if unk else None,
    )


def map_row_reference(ids: list[int], logprobs: list[float], to_pivot: list[int], k: int) -> list[tuple[int, float]]:
    """One source top-K row in pivot ids, written out: each source id's probability added to its pivot id
    (ids past the map or mapped to -1 left out); the k largest (pivot id, probability), ties by id."""
    mass: dict[int, float] = {}
    for i, lp in zip(ids, logprobs, strict=True):
        if 0 <= i < len(to_pivot) and to_pivot[i] >= 0 and lp > -math.inf:
            mass[to_pivot[i]] = mass.get(to_pivot[i], 0.0) + math.exp(lp)
    return sorted(mass.items(), key=lambda item: (-item[1], item[0]))[:k]


def pivot_first_pieces(tokenizer, texts: list[str], context: str) -> list[list[int]]:
    """The pivot's own tokenization of each text where it follows `context` (`a` before a word that starts
    with a space, so a sentencepiece tokenizer adds no dummy prefix to it; a newline before one that does
    not): the ids of the tokens that start at or after the text's first character, by their offsets.
    Independent of fusecli: the tokenizer's whole pipeline (normalizer, pre-tokenizer, model) in context."""
    enc = tokenizer([context + t for t in texts], add_special_tokens=False, return_offsets_mapping=True)
    return [
        [i for i, (a, _) in zip(ids, offsets, strict=True) if a >= len(context)]
        for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ]


def fidelity_reference(
    rows, to_pivot, consistent, piece_rule, rules, piece_rules, mapped_rules, within=()
) -> dict:
    """Fidelity.summary() written out as one loop. `rows`: (source ids, logprobs, row rule name, pivot gold,
    source wins) per used source row; `consistent`/`piece_rule`: per source id; `within`: (source logprobs,
    aligned logprobs) per within-token row."""
    mass: dict[tuple[str, str], float] = {}
    good: dict[tuple[str, str], float] = {}
    dropped = 0.0
    eot = {False: [0, 0.0, 0], True: [0, 0.0, 0]}  # every sequence / the source's wins: rows, mass, top
    for ids, logprobs, rule, gold, wins in rows:
        on_pivot: dict[int, float] = {}
        for i, lp in zip(ids, logprobs, strict=True):
            if not 0 <= i < len(to_pivot):
                continue
            m = math.exp(lp)
            key = (rule, piece_rules[piece_rule[i]])
            mass[key] = mass.get(key, 0.0) + m
            good[key] = good.get(key, 0.0) + (m if consistent[i] else 0.0)
            dropped += m if to_pivot[i] < 0 else 0.0
            if to_pivot[i] >= 0:
                on_pivot[to_pivot[i]] = on_pivot.get(to_pivot[i], 0.0) + m
        if rule == "end_of_turn":
            for key in {False, wins}:
                eot[key][0] += 1
                eot[key][1] += on_pivot.get(gold, 0.0)
                eot[key][2] += bool(on_pivot) and max(on_pivot, key=on_pivot.__getitem__) == gold
    total = sum(mass.values())
    within_total = sum(math.exp(x) for src, _ in within for x in src)
    within_kept = sum(math.exp(x) for _, kept in within for x in kept)

    def eot_summary(n: int, m: float, top: int) -> dict:
        return {"rows": n, "mass_on_end_of_turn": m / n if n else None, "top_is_end_of_turn": top / n if n else None}

    def share(x: float) -> float | None:
        return x / total if total else None

    def part(table: dict, pick) -> float:
        return sum(v for k, v in table.items() if pick(k))

    return {
        "teacher_mass": total,
        "consistent": share(sum(good.values())),
        "dropped": share(dropped),
        "by_piece_rule": {
            p: {
                "mass": share(part(mass, lambda k, p=p: k[1] == p)),
                "consistent": share(part(good, lambda k, p=p: k[1] == p)),
            }
            for p in piece_rules
        },
        "by_row_rule": {
            r: {
                "mass": share(part(mass, lambda k, r=r: k[0] == r)),
                "consistent": share(part(good, lambda k, r=r: k[0] == r)),
            }
            for r in mapped_rules
        },
        "end_of_turn": eot_summary(*eot[False]),
        "end_of_turn_source_wins": eot_summary(*eot[True]),
        "within_token": {"rows": len(within), "kept": within_kept / within_total if within_total else None},
    }


def assert_close_tree(got, expected, rel: float = 1e-9, path: str = "") -> None:
    """Nested dicts equal, floats to a relative tolerance."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected), (path, got, expected)
        for key in expected:
            assert_close_tree(got[key], expected[key], rel, f"{path}.{key}")
    elif isinstance(expected, float) and isinstance(got, float):
        assert math.isclose(got, expected, rel_tol=rel, abs_tol=1e-12), (path, got, expected)
    else:
        assert got == expected, (path, got, expected)

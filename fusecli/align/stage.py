"""The align stage: extract/pivot + extract/sources/<slug> -> align/<slug> (docs/method.md, stage 3).

Pass 1 aligns the tokens of every sequence's turn contents (both stores joined on `seq_index`; each
model read the dialogue in its own template), counts the aligned (pivot id, source id) pairs for the
paper's statistics map, and counts which special token each template puts where a turn's content ends
(the source's end of turn -> the pivot's). Then the map distributions use is built (align.dist_map);
pass 2 chooses and maps the source rows (fusecli/align/dist.py) and writes one align record per pivot
sequence, measuring how much teacher mass lands on prefix-consistent pivot tokens (coverage.json).

Sequences only the pivot has (the source's extraction dropped them) get one-hot rows everywhere and
`seq_ce = +inf`, so the source never wins MinCE on them (reward exp(-inf) = 0). When the two
extractions were truncated at different text lengths, only the common text prefix is aligned; the
pivot's response tokens past it get one-hot rows.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress
from safetensors.numpy import save

from fusecli.align.dist import MAPPED_RULES, RULES, Conditioner, Side, align_rows, one_hot_rows, turn_end_tokens
from fusecli.align.fidelity import Fidelity, consistent_targets
from fusecli.align.params import AlignParams
from fusecli.align.pieces import PIECE_RULES, FirstPiece, prefix_map
from fusecli.align.tokens import TokenTable, agreement, align_mined, align_offsets
from fusecli.align.vocab import Cooccurrence, build_vocab_map, direct_map
from fusecli.errors import FusecliError
from fusecli.io import atomic_dir, atomic_write_bytes, atomic_write_json
from fusecli.progress import progress_bar
from fusecli.store import Record, StoreWriter, iter_records, read_manifest
from fusecli.tokenizer import load_tokenizer


def join_stores(pivot_root: Path, source_root: Path) -> Iterator[tuple[Record, Record | None]]:
    """Each pivot record with the source record of the same `seq_index`, or None (both in index order)."""
    source = iter_records(source_root)
    cur = next(source, None)
    last_p = last_s = -1
    for rec in iter_records(pivot_root):
        i = int(rec["seq_index"])
        if i <= last_p:
            raise FusecliError(f"{pivot_root}: seq_index {i} is out of order: rerun its extract stage")
        last_p = i
        while cur is not None and int(cur["seq_index"]) < i:
            cur = next(source, None)
            if cur is not None:
                if int(cur["seq_index"]) <= last_s:
                    raise FusecliError(f"{source_root}: seq_index out of order: rerun its extract stage")
                last_s = int(cur["seq_index"])
        yield rec, (cur if cur is not None and int(cur["seq_index"]) == i else None)


def common_prefix(pivot_offsets: np.ndarray, source_offsets: np.ndarray) -> tuple[int, int]:
    """How many leading tokens of each side lie within the text both tokenizations cover."""
    if len(pivot_offsets) == 0 or len(source_offsets) == 0:
        return 0, 0
    p_end = np.maximum.accumulate(pivot_offsets[:, 1])
    s_end = np.maximum.accumulate(source_offsets[:, 1])
    limit = min(p_end[-1], s_end[-1])
    return int(np.searchsorted(p_end, limit, "right")), int(np.searchsorted(s_end, limit, "right"))


# Worker state: set once per process (spawned pool workers, or this process when workers == 1).
_STATE: dict[str, Any] = {}


def _init(state: dict[str, Any]) -> None:
    _STATE.clear()
    _STATE.update(state)


def content_tokens(offsets: np.ndarray, turns: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, offsets) of the tokens inside the turns' contents, the offsets moved to a coordinate both
    models share: turn k's content starts at sum(lengths[:k]). `lengths` are the common content lengths."""
    idx, moved, base = [], [], 0
    for (_, a, _, _), n in zip(turns.tolist(), lengths.tolist(), strict=False):
        if a >= 0:
            inside = np.flatnonzero((offsets[:, 0] >= a) & (offsets[:, 1] <= a + n) & (offsets[:, 1] > offsets[:, 0]))
            idx.append(inside)
            moved.append(offsets[inside] - a + base)
        base += n
    if not idx:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
    return np.concatenate(idx).astype(np.int64), np.concatenate(moved).astype(np.int64).reshape(-1, 2)


def _common_lengths(p_turns: np.ndarray, s_turns: np.ndarray) -> np.ndarray:
    """Per turn, the content length both renderings share (0 where one template rewrote the content)."""
    n = min(len(p_turns), len(s_turns))
    lp, ls = p_turns[:n, 2] - p_turns[:n, 1], s_turns[:n, 2] - s_turns[:n, 1]
    ok = (p_turns[:n, 1] >= 0) & (s_turns[:n, 1] >= 0) & (lp == ls)
    return np.where(ok, lp, 0)


def _align_tokens(pair: tuple[Record, Record | None]) -> Record:
    """Pass 1 for one sequence: the token alignment of the turn contents, its (pivot id, source id) pairs,
    how many positions agree with the `offsets` aligner, and the (source, pivot) end-of-turn token pairs."""
    p, s = pair
    if s is None:
        empty = np.zeros(0, np.int32)
        return {"paired": 0, "pair_p": empty, "pair_s": empty}
    lengths = _common_lengths(p["turns"], s["turns"])
    p_idx, p_off = content_tokens(p["offsets"], p["turns"], lengths)
    s_idx, s_off = content_tokens(s["offsets"], s["turns"], lengths)
    n_p, n_s = common_prefix(p_off, s_off)
    p_idx, s_idx = p_idx[:n_p], s_idx[:n_s]
    by_offsets = align_offsets(p_off[:n_p], s_off[:n_s])
    if _STATE["method"] == "offsets":
        al, agree = by_offsets, n_p
    else:
        al = align_mined(_STATE["source"], s["input_ids"][s_idx], _STATE["pivot"], p["input_ids"][p_idx])
        agree = agreement(al, by_offsets)
    ends = zip(
        turn_end_tokens(s["input_ids"], s["offsets"], s["turns"]),
        turn_end_tokens(p["input_ids"], p["offsets"], p["turns"]),
        strict=False,
    )
    return {
        "paired": 1,
        "pair_p": p["input_ids"][p_idx][al.pivot_positions()],
        "pair_s": s["input_ids"][s_idx][al.src],
        "agree": agree,
        "n": n_p,
        "ends": [(a, b) for a, b in ends if a >= 0 and b >= 0],
    }


def _align_dists(item: tuple[Record, Record | None]) -> Record:
    """Pass 2 for one sequence: the align record, plus its rule counts and fidelity."""
    p, s = item
    pivot_mask = p["label_mask"].astype(bool)
    fidelity = Fidelity()
    if s is None:
        rows = one_hot_rows(p["input_ids"], pivot_mask, _STATE["k"])
        seq_ce = float("inf")
    else:
        rows = align_rows(
            Side(p["input_ids"], p["offsets"], pivot_mask, p["turns"], _STATE["pivot"].special),
            Side(s["input_ids"], s["offsets"], s["label_mask"].astype(bool), s["turns"], _STATE["source"].special),
            s["topk_ids"],
            s["topk_logprobs"],
            _STATE["to_pivot"],
            _STATE["k"],
            _STATE["conditioner"],
        )
        within = rows.rule == RULES.index("within_token")
        fidelity.add_within(s["topk_logprobs"][rows.source_row[within]], rows.topk_logprobs[within])
        used = (rows.source_row >= 0) & ~within
        fidelity.add(
            s["topk_ids"][rows.source_row[used]],
            s["topk_logprobs"][rows.source_row[used]],
            rows.rule[used],
            p["input_ids"][np.flatnonzero(pivot_mask)[used]],
            _STATE,
            source_wins=float(s["seq_ce"]) < float(p["seq_ce"]),
        )
        seq_ce = float(s["seq_ce"])
    record = {
        "seq_index": int(p["seq_index"]),
        "topk_ids": rows.topk_ids,
        "topk_logprobs": rows.topk_logprobs,
        "mapped": rows.mapped,
        "rule": rows.rule,  # index into fusecli.align.dist.RULES, per pivot response token
        "source_row": rows.source_row.astype(np.int32),  # the source store row used, -1 for one-hot
        "seq_ce": seq_ce,
    }
    return {"record": record, "rules": np.bincount(rows.rule, minlength=len(RULES)), "fidelity": fidelity}


@contextmanager
def _mapper(workers: int, state: dict[str, Any]) -> Iterator[Callable[[Callable, Iterable], Iterator]]:
    """An order-keeping map over a process pool, fed in bounded batches (Pool.imap alone would read the
    whole input ahead of the workers)."""
    if workers == 1:
        _init(state)
        yield map
        return
    with mp.get_context("spawn").Pool(workers, _init, (state,)) as pool:

        def run(fn: Callable, items: Iterable) -> Iterator:
            it = iter(items)
            while batch := list(islice(it, 16 * workers)):
                yield from pool.imap(fn, batch, chunksize=4)

        yield run


TOKEN_FIELDS = ("input_ids", "offsets", "turns")
PIVOT_FIELDS = ("seq_index", "input_ids", "offsets", "turns", "label_mask", "seq_ce")
SOURCE_FIELDS = ("input_ids", "offsets", "turns", "label_mask", "topk_ids", "topk_logprobs", "seq_ce")


def _fields(record: Record, *names: str) -> Record:
    """Only what a worker needs, so a process pool pickles less."""
    return {n: record[n] for n in names}


def _check_store(root: Path, what: str) -> dict[str, Any]:
    manifest = read_manifest(root)
    if manifest["records"] == 0:
        raise FusecliError(f"{root} holds no records: rerun the {what} extract stage")
    return manifest


def _pass1(
    params: AlignParams, state: dict[str, Any], pivot_extract: Path, source_extract: Path, progress: Progress
) -> tuple[Cooccurrence, dict[str, int], Counter]:
    """Align the tokens of every sequence's turn contents; count the aligned id pairs and the end-of-turn
    (source id, pivot id) pairs."""
    cooc = Cooccurrence(state["pivot"].size, state["source"].size)
    counts = {"agree": 0, "aligned": 0, "paired": 0}
    ends: Counter = Counter()
    task = progress.add_task("align tokens", total=read_manifest(pivot_extract)["records"])
    pairs = (
        (_fields(p, *TOKEN_FIELDS), s if s is None else _fields(s, *TOKEN_FIELDS))
        for p, s in join_stores(pivot_extract, source_extract)
    )
    with _mapper(params.workers, state) as pmap:
        for res in pmap(_align_tokens, pairs):
            if res["paired"]:
                cooc.add(res["pair_p"], res["pair_s"])
                counts["agree"] += res["agree"]
                counts["aligned"] += res["n"]
                counts["paired"] += 1
                ends.update(res["ends"])
            progress.advance(task)
    return cooc, counts, ends


def _pass2(
    params: AlignParams,
    state: dict[str, Any],
    pivot_extract: Path,
    source_extract: Path,
    writer: StoreWriter,
    progress: Progress,
) -> tuple[np.ndarray, Fidelity]:
    """Align the distributions of every pivot sequence into `writer`; return the per-rule counts and the
    fidelity of the mapped rows."""
    rules = np.zeros(len(RULES), dtype=np.int64)
    fidelity = Fidelity()
    task = progress.add_task("align distributions", total=read_manifest(pivot_extract)["records"])
    items = (
        (_fields(p, *PIVOT_FIELDS), s if s is None else _fields(s, *SOURCE_FIELDS))
        for p, s in join_stores(pivot_extract, source_extract)
    )

    def records(results: Iterable[Record]) -> Iterator[Record]:
        for res in results:
            rules[:] += res["rules"]
            fidelity.merge(res["fidelity"])
            progress.advance(task)
            yield res["record"]

    with _mapper(params.workers, state) as pmap:
        writer.write_all(records(pmap(_align_dists, items)))
    return rules, fidelity


def end_of_turn_map(ends: Counter, source: TokenTable, pivot: TokenTable) -> dict[int, int]:
    """Each source special token that ends turns -> the pivot special token most often in the same place."""
    best: dict[int, tuple[int, int]] = {}
    for (s, p), n in sorted(ends.items()):
        if s in source.special and p in pivot.special and n > best.get(s, (-1, 0))[1]:
            best[s] = (p, n)
    return {s: p for s, (p, _) in best.items()}


def distribution_map(
    params: AlignParams, vocab_map: np.ndarray, ends: dict[int, int], source: TokenTable, pivot: TokenTable, tok: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(the map distributions use, each source token's PIECE_RULES class), with the end-of-turn pairs."""
    prefix, piece_rule = prefix_map(source, pivot, tok)
    to_pivot = prefix if params.dist_map == "prefix" else direct_map(vocab_map, source, pivot)
    for s, p in ends.items():
        to_pivot[s] = p
        piece_rule[s] = PIECE_RULES.index("special")
    return to_pivot.astype(np.int32), piece_rule


def run(
    params: AlignParams,
    pivot_extract: str | Path,
    source_extract: str | Path,
    pivot_model: str | Path,
    source_model: str | Path,
    out: str | Path,
    trust_remote_code: tuple[bool, bool] = (False, False),
) -> dict[str, Any]:
    """Write align/<slug>: the align store, vocab_map.safetensors and coverage.json; return the coverage.

    `trust_remote_code` is (pivot, source): each model's own setting from models.lock.
    """
    pivot_extract, source_extract = Path(pivot_extract), Path(source_extract)
    total = _check_store(pivot_extract, "pivot")["records"]
    _check_store(source_extract, "source")
    pivot_tok = load_tokenizer(pivot_model, trust_remote_code[0])
    pivot = TokenTable.from_tokenizer(pivot_tok)
    source = TokenTable.from_tokenizer(load_tokenizer(source_model, trust_remote_code[1]))
    state: dict[str, Any] = {"method": params.method, "pivot": pivot, "source": source, "k": params.k}
    meta = {
        "kind": "align",
        "dist_map": params.dist_map,
        "within_token": params.within_token,
        "method": params.method,
        "vocab_map": params.vocab_map,
        "k": params.k,
        "pivot_vocab": pivot.size,
        "source_vocab": source.size,
    }
    with atomic_dir(out) as tmp, progress_bar("seq") as progress:
        cooc, counts, end_pairs = _pass1(params, state, pivot_extract, source_extract, progress)
        vocab_map = build_vocab_map(params.vocab_map, cooc, source, pivot, workers=params.workers)
        ends = end_of_turn_map(end_pairs, source, pivot)
        to_pivot, piece_rule = distribution_map(params, vocab_map, ends, source, pivot, pivot_tok)
        conditioner = Conditioner(source.canon, FirstPiece(pivot, pivot_tok))
        state.update(
            to_pivot=to_pivot,
            piece_rule=piece_rule,
            consistent=consistent_targets(to_pivot, source, pivot),
            conditioner=conditioner if params.within_token == "condition" else None,
        )
        writer = StoreWriter.open(tmp, meta=meta)
        rules, fidelity = _pass2(params, state, pivot_extract, source_extract, writer, progress)
        coverage = _coverage(params, total, counts, rules, cooc, source, pivot, state, fidelity, ends)
        writer.close(summary=coverage)
        atomic_write_json(tmp / "coverage.json", coverage)
        p_ids, s_ids, n = cooc.pairs()
        tensors = {
            "vocab_map": vocab_map,  # the `vocab_map` method's source -> pivot map (the paper's statistics)
            "dist_map": to_pivot,  # what distributions used (align.dist_map), -1: dropped
            "piece_rule": piece_rule,  # per source token, its class in PIECE_RULES
            "cooc_pivot": p_ids,
            "cooc_source": s_ids,
            "cooc_count": n,
        }
        atomic_write_bytes(tmp / "vocab_map.safetensors", save_sorted(tensors, {k: str(v) for k, v in meta.items()}))
    return coverage


def save_sorted(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with the metadata in key order, so the same inputs give the same file.

    `safetensors.save` writes metadata in the order of a Rust hash map seeded per process: the file's
    bytes, and so the DVC hash of align/<slug> and every stage after it, changed from run to run.
    Reordering keeps the header's length, so only the header is rewritten.
    """
    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:
        raise AssertionError("safetensors header grew when sorted")  # same keys and values: cannot happen
    return data[:8] + text.ljust(n) + data[8 + n :]


def _coverage(
    params: AlignParams,
    total: int,
    counts: dict[str, int],
    rules: np.ndarray,
    cooc: Cooccurrence,
    source: TokenTable,
    pivot: TokenTable,
    state: dict[str, Any],
    fidelity: Fidelity,
    ends: dict[int, int],
) -> dict[str, Any]:
    """Share of pivot response positions with a mapped distribution, why the others are one-hot, and how much
    of the teacher mass in the mapped rows lands on prefix-consistent pivot tokens (the fidelity)."""
    positions = int(rules.sum())
    mapped = int(sum(rules[RULES.index(r)] for r in MAPPED_RULES))
    _, s_ids, _ = cooc.pairs()
    piece_rule = state["piece_rule"]
    return {
        "dist_map": params.dist_map,
        "within_token": params.within_token,
        "method": params.method,
        "vocab_map": params.vocab_map,
        "k": params.k,
        "sequences": total,
        "pivot_only_sequences": total - counts["paired"],
        "response_positions": positions,
        "mapped_positions": mapped,
        "coverage": mapped / positions if positions else 0.0,
        "rules": {name: int(rules[i]) for i, name in enumerate(RULES)},
        "fidelity": fidelity.summary(),
        "end_of_turn_map": {source.canon[s]: pivot.canon[p] for s, p in sorted(ends.items())},
        "offsets_agreement": counts["agree"] / counts["aligned"] if counts["aligned"] else None,
        "source_vocab": source.size,
        "source_ids_seen": int(len(np.unique(s_ids))),
        "source_ids_exact_match": int(np.sum(piece_rule == PIECE_RULES.index("exact"))),
        "source_ids_by_piece_rule": {name: int(np.sum(piece_rule == i)) for i, name in enumerate(PIECE_RULES)},
    }

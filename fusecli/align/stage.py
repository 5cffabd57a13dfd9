"""The align stage: extract/pivot + extract/sources/<slug> -> align/<slug> (docs/method.md, stage 3).

Pass 1 aligns the tokens of every sequence (both stores joined on `seq_index`), counts the aligned
(pivot id, source id) pairs and keeps each alignment in a scratch store; the vocabulary map is built
from the counts; pass 2 aligns the distributions and writes one align record per pivot sequence.

Sequences only the pivot has (the source's extraction dropped them) get one-hot rows everywhere and
`seq_ce = +inf`, so the source never wins MinCE on them (reward exp(-inf) = 0). When the two
extractions were truncated at different text lengths, only the common text prefix is aligned; the
pivot's response tokens past it get one-hot rows.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress
from safetensors.numpy import save

from fusecli.align.dist import MAPPED_RULES, RULES, align_rows, one_hot_rows
from fusecli.align.params import AlignParams
from fusecli.align.tokens import Alignment, TokenTable, agreement, align_mined, align_offsets
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


def _align_tokens(pair: tuple[Record, Record | None]) -> Record:
    """Pass 1 for one sequence: the token alignment, its (pivot id, source id) pairs, and how many
    positions agree with the `offsets` aligner."""
    p, s = pair
    if s is None:
        empty = np.zeros(0, np.int32)
        return {"paired": 0, "src": empty, "ptr": np.zeros(1, np.int64), "pair_p": empty, "pair_s": empty}
    n_p, n_s = common_prefix(p["offsets"], s["offsets"])
    by_offsets = align_offsets(p["offsets"][:n_p], s["offsets"][:n_s])
    if _STATE["method"] == "offsets":
        al, agree = by_offsets, n_p
    else:
        al = align_mined(_STATE["source"], s["input_ids"][:n_s], _STATE["pivot"], p["input_ids"][:n_p])
        agree = agreement(al, by_offsets)
    return {
        "paired": 1,
        "src": al.src,
        "ptr": al.ptr,
        "pair_p": p["input_ids"][al.pivot_positions()],
        "pair_s": s["input_ids"][al.src],
        "agree": agree,
        "n": n_p,
    }


def _align_dists(item: tuple[Record, Record | None, Record]) -> Record:
    """Pass 2 for one sequence: the align record, plus its rule counts."""
    p, s, al = item
    pivot_mask = p["label_mask"].astype(bool)
    if s is None:
        rows = one_hot_rows(p["input_ids"], pivot_mask, _STATE["k"])
        seq_ce = float("inf")
    else:
        rows = align_rows(
            p["input_ids"],
            pivot_mask,
            _STATE["pivot"],
            Alignment(src=al["src"], ptr=al["ptr"]),
            s["input_ids"],
            s["label_mask"],
            s["topk_ids"],
            s["topk_logprobs"],
            _STATE["source"],
            _STATE["to_pivot"],
            _STATE["k"],
        )
        seq_ce = float(s["seq_ce"])
    record = {
        "seq_index": int(p["seq_index"]),
        "topk_ids": rows.topk_ids,
        "topk_logprobs": rows.topk_logprobs,
        "mapped": rows.mapped,
        "seq_ce": seq_ce,
    }
    return {"record": record, "rules": np.bincount(rows.rule, minlength=len(RULES))}


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


PIVOT_FIELDS = ("seq_index", "input_ids", "label_mask")
SOURCE_FIELDS = ("input_ids", "label_mask", "topk_ids", "topk_logprobs", "seq_ce")


def _fields(record: Record, *names: str) -> Record:
    """Only what a worker needs, so a process pool pickles less."""
    return {n: record[n] for n in names}


def _check_store(root: Path, what: str) -> dict[str, Any]:
    manifest = read_manifest(root)
    if manifest["records"] == 0:
        raise FusecliError(f"{root} holds no records: rerun the {what} extract stage")
    return manifest


def _pass1(
    params: AlignParams,
    state: dict[str, Any],
    pivot_extract: Path,
    source_extract: Path,
    scratch: Path,
    progress: Progress,
) -> tuple[Cooccurrence, dict[str, int]]:
    """Align the tokens of every sequence into the scratch store; count the aligned id pairs."""
    cooc = Cooccurrence(state["pivot"].size, state["source"].size)
    counts = {"agree": 0, "aligned": 0, "paired": 0}
    task = progress.add_task("align tokens", total=read_manifest(pivot_extract)["records"])
    pairs = (
        (_fields(p, "input_ids", "offsets"), s if s is None else _fields(s, "input_ids", "offsets"))
        for p, s in join_stores(pivot_extract, source_extract)
    )

    def alignments(results: Iterable[Record]) -> Iterator[Record]:
        for res in results:
            if res["paired"]:
                cooc.add(res["pair_p"], res["pair_s"])
                counts["agree"] += res["agree"]
                counts["aligned"] += res["n"]
                counts["paired"] += 1
            progress.advance(task)
            yield {k: res[k] for k in ("paired", "src", "ptr")}

    with _mapper(params.workers, state) as pmap:
        writer = StoreWriter.open(scratch, meta={"kind": "scratch"})
        writer.write_all(alignments(pmap(_align_tokens, pairs)))
        writer.close()
    return cooc, counts


def _pass2(
    params: AlignParams,
    state: dict[str, Any],
    pivot_extract: Path,
    source_extract: Path,
    scratch: Path,
    writer: StoreWriter,
    progress: Progress,
) -> np.ndarray:
    """Align the distributions of every pivot sequence into `writer`; return the per-rule counts."""
    rules = np.zeros(len(RULES), dtype=np.int64)
    task = progress.add_task("align distributions", total=read_manifest(pivot_extract)["records"])
    items = (
        (_fields(p, *PIVOT_FIELDS), s if s is None else _fields(s, *SOURCE_FIELDS), al)
        for (p, s), al in zip(join_stores(pivot_extract, source_extract), iter_records(scratch), strict=True)
    )

    def records(results: Iterable[Record]) -> Iterator[Record]:
        for res in results:
            rules[:] += res["rules"]
            progress.advance(task)
            yield res["record"]

    with _mapper(params.workers, state) as pmap:
        writer.write_all(records(pmap(_align_dists, items)))
    return rules


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
    pivot = TokenTable.from_tokenizer(load_tokenizer(pivot_model, trust_remote_code[0]))
    source = TokenTable.from_tokenizer(load_tokenizer(source_model, trust_remote_code[1]))
    state: dict[str, Any] = {"method": params.method, "pivot": pivot, "source": source, "k": params.k}
    meta = {
        "kind": "align",
        "method": params.method,
        "vocab_map": params.vocab_map,
        "k": params.k,
        "pivot_vocab": pivot.size,
        "source_vocab": source.size,
    }
    with atomic_dir(out) as tmp, progress_bar("seq") as progress:
        scratch = tmp / ".alignments"
        cooc, counts = _pass1(params, state, pivot_extract, source_extract, scratch, progress)
        vocab_map = build_vocab_map(params.vocab_map, cooc, source, pivot, workers=params.workers)
        state["to_pivot"] = direct_map(vocab_map, source, pivot)
        writer = StoreWriter.open(tmp, meta=meta)
        rules = _pass2(params, state, pivot_extract, source_extract, scratch, writer, progress)
        shutil.rmtree(scratch)
        coverage = _coverage(params, total, counts, rules, cooc, source, pivot)
        writer.close(summary=coverage)
        atomic_write_json(tmp / "coverage.json", coverage)
        p_ids, s_ids, n = cooc.pairs()
        tensors = {
            "vocab_map": vocab_map,  # the `vocab_map` method's source -> pivot map
            "direct_map": state["to_pivot"],  # what distributions used: exact match first, else vocab_map
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
) -> dict[str, Any]:
    """Share of pivot response positions with a mapped distribution, and why the others are one-hot."""
    positions = int(rules.sum())
    mapped = int(sum(rules[RULES.index(r)] for r in MAPPED_RULES))
    _, s_ids, _ = cooc.pairs()
    return {
        "method": params.method,
        "vocab_map": params.vocab_map,
        "k": params.k,
        "sequences": total,
        "pivot_only_sequences": total - counts["paired"],
        "response_positions": positions,
        "mapped_positions": mapped,
        "coverage": mapped / positions if positions else 0.0,
        "rules": {name: int(rules[i]) for i, name in enumerate(RULES)},
        "offsets_agreement": counts["agree"] / counts["aligned"] if counts["aligned"] else None,
        "source_vocab": source.size,
        "source_ids_seen": int(len(np.unique(s_ids))),
        "source_ids_exact_match": sum(1 for c in source.canon if c and c in pivot.lookup),
    }

"""`fusecli inspect-alignment`: how one text's pivot and source tokens align (stage 3, for debugging), and
the teacher rows of one dataset row of a finished workspace.

With `--row`, the stores say what each source taught at each of the row's pivot response positions: the
source's own top tokens (extract/sources/<slug>), the aligned row the pivot trains on (align/<slug>) and the
row rule that chose it. A broken map shows up as a teacher row whose tokens are not the source's
(`Archery` -> `rchery`, issue 23); the numbers in coverage.json say how often, this says where.

Registered by the CLI as `app.command("inspect-alignment")(inspect_command)`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fusecli.align.dist import MAPPED_RULES, RULES
from fusecli.errors import FusecliError
from fusecli.lock import read_lock
from fusecli.store import MANIFEST, Record, iter_records, read_manifest
from fusecli.tokenizer import load_tokenizer


def _encode(tokenizer: Any, text: str, with_offsets: bool) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=with_offsets)
    except NotImplementedError:
        raise FusecliError(
            f"{tokenizer.name_or_path} gives no character offsets: use --method mined or a fast tokenizer"
        ) from None
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2) if with_offsets else None
    return ids, offsets


def inspect_alignment(
    pivot_dir: Path, source_dir: Path, text: str, method: str = "mined", trust_remote_code: bool = False
) -> dict[str, list]:
    """{"pivot_tokens", "source_tokens", "alignment"}: the token strings and, per pivot position, the
    source positions aligned to it; plus "pivot_text" and "source_text", each token's canonical text."""
    if not text:
        raise FusecliError("the text is empty: pass --text or a non-empty --text-file")
    from fusecli.align.tokens import TokenTable, align_mined, align_offsets  # numba: on use

    pivot_tok = load_tokenizer(pivot_dir, trust_remote_code)
    source_tok = load_tokenizer(source_dir, trust_remote_code)
    pivot, source = TokenTable.from_tokenizer(pivot_tok), TokenTable.from_tokenizer(source_tok)
    p_ids, p_off = _encode(pivot_tok, text, method == "offsets")
    s_ids, s_off = _encode(source_tok, text, method == "offsets")
    if len(p_ids) == 0 or len(s_ids) == 0:
        raise FusecliError("a tokenizer produced no tokens for this text: pass text with visible characters")
    if method == "offsets":
        al = align_offsets(p_off, s_off)
    else:
        al = align_mined(source, s_ids, pivot, p_ids)
    return {
        "pivot_tokens": pivot_tok.convert_ids_to_tokens(p_ids.tolist()),
        "source_tokens": source_tok.convert_ids_to_tokens(s_ids.tolist()),
        "alignment": al.lists(),
        "pivot_text": [pivot.canon[i] for i in p_ids],
        "source_text": [source.canon[i] for i in s_ids],
    }


def _show(token: str) -> str:
    return escape(json.dumps(token, ensure_ascii=False)[1:-1])


def _table(result: dict[str, list], method: str) -> Table:
    """Tokens as canonical text (`▁` a space in either vocabulary), the raw token beside it when different."""
    src, src_text = result["source_tokens"], result["source_text"]
    title = f"{len(result['pivot_tokens'])} pivot tokens, {len(src)} source tokens ({method}; ▁ = space)"
    table = Table(title=title)
    for name in ("#", "pivot token", "source positions", "source tokens"):
        table.add_column(name)

    def show(raw: str, text: str) -> str:
        return _show(text) if raw == text else f"{_show(text)} [dim]{_show(raw)}[/dim]"

    rows = zip(result["pivot_tokens"], result["pivot_text"], result["alignment"], strict=True)
    for j, (raw, text, positions) in enumerate(rows):
        pieces = " | ".join(show(src[i], src_text[i]) for i in positions)
        table.add_row(str(j), show(raw, text), ", ".join(map(str, positions)), pieces)
    return table




@dataclass(frozen=True)
class RowStores:
    """Where one source's teacher rows come from, in a workspace `dvc repro` has run."""

    pivot: Path  # extract/pivot
    source: Path  # extract/sources/<slug>
    align: Path  # align/<slug>, with vocab_map.safetensors (the map the rows used)

    @classmethod
    def of(cls, root: Path, slug: str) -> RowStores:
        return cls(root / "extract" / "pivot", root / "extract" / "sources" / slug, root / "align" / slug)

    def check(self) -> None:
        """Every store complete, before any tokenizer loads: a missing one is the common case (not run yet)."""
        for path in (self.pivot / MANIFEST, self.source / MANIFEST, self.align / MANIFEST):
            if not path.is_file():
                raise FusecliError(f"{path} not found: run `dvc repro` first")
        for root in (self.pivot, self.source, self.align):
            read_manifest(root)  # an interrupted run: its own one-line error


def find_row(data: Path, row: str) -> tuple[int, str, str]:
    """(seq_index, id, domain) of the dataset row `row` names: its id, else its index (the stores' seq_index)."""
    import polars as pl  # here, so the other commands start without it

    if not data.is_file():
        raise FusecliError(f"{data} not found: run `dvc repro` first")
    columns = [c for c in ("id", "domain") if c in pl.read_parquet_schema(data)]
    df = pl.read_parquet(data, columns=columns or None)
    ids = [str(i) for i in df["id"]] if "id" in columns else [str(i) for i in range(df.height)]
    if row in ids:
        index = ids.index(row)
    elif row.isdigit() and int(row) < df.height:
        index = int(row)
    else:
        raise FusecliError(f"row {row!r} is not in {data}: pass an id of its `id` column or an index 0-{df.height - 1}")
    domain = str(df["domain"][index]) if "domain" in columns else "-"
    return index, ids[index], domain


def record_at(root: Path, index: int) -> Record | None:
    """The store's record of seq_index `index`, or None. Stores are in seq_index order (the align stage
    checks it), so reading stops once past it."""
    for rec in iter_records(root):
        if int(rec["seq_index"]) >= index:
            return rec if int(rec["seq_index"]) == index else None
    return None


def top_tokens(ids: np.ndarray, logprobs: np.ndarray, table: Any, n: int) -> list[tuple[str, float]]:
    """The row's first `n` tokens (stored by descending probability) as (canonical text, probability)."""
    out = []
    for i, lp in zip(ids.tolist(), logprobs.tolist(), strict=True):
        if i >= 0 and len(out) < n:
            out.append((table.canon[i] if i < table.size else f"<id {i}>", math.exp(lp)))
    return out


def teacher_rows(stores: RowStores, index: int, pivot: Any, source: Any, top: int) -> dict[str, Any]:
    """Per pivot response position of sequence `index`: the pivot token, the row rule, the source's own top
    tokens and the aligned row's, as the align stage recorded them; plus both sequence CEs (MinCE's choice)."""
    p = record_at(stores.pivot, index)
    if p is None:
        raise FusecliError(f"row {index} is not in {stores.pivot}: its extract stage left it out (see its warnings)")
    s, a = record_at(stores.source, index), record_at(stores.align, index)
    if a is None:
        raise FusecliError(f"row {index} is not in {stores.align}: run `dvc repro` first")
    if "rule" not in a:
        raise FusecliError(f"{stores.align} was written before align records kept their rules: run `dvc repro` first")
    rows = []
    for r, t in enumerate(np.flatnonzero(p["label_mask"]).tolist()):
        j = int(a["source_row"][r])
        own = [] if s is None or j < 0 else top_tokens(s["topk_ids"][j], s["topk_logprobs"][j], source, top)
        rows.append({"position": t, "pivot_token": pivot.canon[int(p["input_ids"][t])], "rule": RULES[a["rule"][r]],
                     "source": own, "aligned": top_tokens(a["topk_ids"][r], a["topk_logprobs"][r], pivot, top)})
    return {"seq_ce": {"pivot": float(p["seq_ce"]), "source": None if s is None else float(s["seq_ce"])}, "rows": rows}


def _sources(locked: dict[str, Any], slugs: list[str], lock_path: Path) -> list[str]:
    """The sources asked for (default: every locked one), each in the lock."""
    if not locked:
        raise FusecliError(f"{lock_path} has no sources: add one with fusecli add-source")
    for slug in slugs:
        if slug not in locked:
            raise FusecliError(f"no source {slug!r} in {lock_path}: pass one of {', '.join(sorted(locked))}")
    return slugs or sorted(locked)


def inspect_row(root: Path, lock_path: Path, row: str, slugs: list[str], data: Path, top: int) -> dict[str, Any]:
    """{"row", "seq_index", "domain", "sources": {slug: teacher_rows}} for the dataset row `row` of the
    workspace at `root`; every source of models.lock unless `slugs` names some."""
    from fusecli.align.tokens import TokenTable  # numba: on use

    lock = read_lock(lock_path)
    stores = {slug: RowStores.of(root, slug) for slug in _sources(lock.sources, slugs, lock_path)}
    for found in stores.values():
        found.check()
    index, rid, domain = find_row(data, row)
    pivot = TokenTable.from_tokenizer(load_tokenizer(lock.pivot.folder(root), lock.pivot.trust_remote_code))
    out: dict[str, Any] = {"row": rid, "seq_index": index, "domain": domain, "sources": {}}
    for slug, found in stores.items():
        entry = lock.sources[slug]
        source = TokenTable.from_tokenizer(load_tokenizer(entry.folder(root), entry.trust_remote_code))
        out["sources"][slug] = teacher_rows(found, index, pivot, source, top)
    return out


def _tokens(pairs: list[tuple[str, float]]) -> str:
    return "  ".join(f"{_show(text)} [dim]{p:.3f}[/dim]" for text, p in pairs) or "[dim]-[/dim]"


def _rows_table(result: dict[str, Any], slug: str) -> Table:
    """One line per pivot response position; one-hot rows (the source taught nothing there) dimmed."""
    found = result["sources"][slug]
    ce = found["seq_ce"]
    source_ce = "none (no record)" if ce["source"] is None else f"{ce['source']:.3f}"
    title = (f"row {result['row']} (#{result['seq_index']}, {result['domain']}), source {slug}: sequence CE "
             f"pivot {ce['pivot']:.3f}, source {source_ce} (MinCE takes the lower; ▁ = space)")
    table = Table(title=title)
    for name in ("#", "pivot token", "rule", f"{slug}'s own top tokens", "aligned row (pivot tokens)"):
        table.add_column(name)
    for r in found["rows"]:
        rule = r["rule"] if r["rule"] in MAPPED_RULES else f"[dim]{r['rule']}[/dim]"
        table.add_row(str(r["position"]), _show(r["pivot_token"]), rule, _tokens(r["source"]), _tokens(r["aligned"]))
    return table


def _print_rows(result: dict[str, Any], json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(result, ensure_ascii=False))
        return
    console = Console()
    for slug in result["sources"]:
        console.print(_rows_table(result, slug))


def inspect_command(
    ctx: typer.Context,
    pivot: Annotated[Path | None, typer.Option("--pivot", help="the pivot's tokenizer (or model) folder")] = None,
    source: Annotated[Path | None, typer.Option("--source", help="the source's tokenizer (or model) folder")] = None,
    text: Annotated[str | None, typer.Option("--text", help="the text to tokenize")] = None,
    text_file: Annotated[Path | None, typer.Option("--text-file", help="read the text from this file")] = None,
    method: Annotated[Literal["mined", "offsets"], typer.Option("--method", help="token aligner")] = "mined",
    row: Annotated[str | None, typer.Option(
        "--row", metavar="ID", help="a dataset row of the workspace (its id, or its index in --data): what each "
        "source taught at its response tokens, from the extract and align stores")] = None,
    slug: Annotated[list[str] | None, typer.Option(
        "--slug", metavar="SLUG",
        help="with --row: this source only (a models.lock slug; repeatable; default: every source)")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="with --row: tokens shown per distribution")] = 3,
    data: Annotated[Path, typer.Option("--data", help="with --row: the dataset, in the workspace")] = Path(
        "data/train.parquet"),
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
) -> None:
    """Show both tokenizations of a text and which source positions align to each pivot position; or, with
    --row, the teacher rows of a dataset row: the source's own top tokens and the aligned row, per position."""
    if row is not None:
        if any(v is not None for v in (pivot, source, text, text_file)):
            raise FusecliError("--row reads the workspace's stores and models.lock: drop --pivot, --source, --text")
        ws = ctx.find_root().obj
        _print_rows(inspect_row(ws.root, ws.lock, row, list(slug or []), ws.root / data, top), json_out)
        return
    if pivot is None or source is None:
        raise FusecliError("pass --pivot and --source (tokenizer folders) with --text, or --row ID in a workspace")
    if (text is None) == (text_file is None):
        raise FusecliError("pass exactly one of --text and --text-file")
    if text_file is not None:
        if not text_file.is_file():
            raise FusecliError(f"{text_file} not found: pass an existing --text-file")
        text = text_file.read_text(encoding="utf-8")
    result = inspect_alignment(pivot, source, text or "", method, trust_remote_code)
    if json_out:
        keys = ("pivot_tokens", "source_tokens", "alignment")
        typer.echo(json.dumps({k: result[k] for k in keys}, ensure_ascii=False))
    else:
        Console().print(_table(result, method))

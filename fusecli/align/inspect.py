"""`fusecli inspect-alignment`: how one text's pivot and source tokens align (stage 3, for debugging).

Registered by the CLI as `app.command("inspect-alignment")(inspect_command)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fusecli.errors import FusecliError
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


def inspect_command(
    pivot: Annotated[Path, typer.Option("--pivot", help="the pivot's tokenizer (or model) folder")],
    source: Annotated[Path, typer.Option("--source", help="the source's tokenizer (or model) folder")],
    text: Annotated[str | None, typer.Option("--text", help="the text to tokenize")] = None,
    text_file: Annotated[Path | None, typer.Option("--text-file", help="read the text from this file")] = None,
    method: Annotated[Literal["mined", "offsets"], typer.Option("--method", help="token aligner")] = "mined",
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
) -> None:
    """Show both tokenizations of a text and which source positions align to each pivot position."""
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

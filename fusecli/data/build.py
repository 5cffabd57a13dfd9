"""Stage 1 (docs/method.md): assemble the fusion dataset from local chat sources.

Sources are local JSONL / JSON / parquet files in ShareGPT form (`conversations` of `from`/`value`) or
OpenAI form (`messages` of `role`/`content`), or `demo` for the shipped country Q&A. Every source is
normalised to `messages`, filtered by length, deduplicated across sources (before splitting, so no
dialogue is in both splits), split into train / eval per domain, and sampled, all from a fixed seed.
The output is `train.parquet` and `eval.parquet` with the columns of docs/architecture.md; the row
order of each file is the `seq_index` every store uses.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from fusecli.errors import FusecliError
from fusecli.io import atomic_write_bytes

Message = dict[str, str]

# ShareGPT speaker names seen in public dumps -> OpenAI roles.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}
ROLES = ("system", "user", "assistant")
SPLITS = {"train": "train", "eval": "eval", "validation": "eval", "test": "eval"}
SCHEMA = {
    "id": pl.String,
    "domain": pl.String,
    "messages": pl.String,
    "answer": pl.String,
    "answers": pl.List(pl.String),  # every accepted answer of a question with several (None: `answer` only)
    "exclude": pl.List(pl.String),  # answers the question rules out ("... besides X"); see evaluate.banned_starts
}
DEMO_DIALOGUES = "demo/dialogues.jsonl"  # `path: demo`: written by the build_demo stage


@dataclass(frozen=True)
class SourceParams:
    path: str  # a .jsonl / .json / .parquet file, or "demo" for the shipped demo Q&A
    name: str | None = None  # id prefix and default domain; default: the file's stem
    domain: str | None = None  # overrides every row's `domain`
    count: int | None = None  # training rows sampled from this source (seeded); None: all
    eval_count: int | None = None  # evaluation rows kept from this source; None: all
    eval: int | float | None = None  # held out per domain, a count or a share; None: dataset.eval (if not a file)


@dataclass(frozen=True)
class DatasetParams:
    sources: tuple[SourceParams, ...] = (SourceParams(path="demo"),)
    seed: int = 0
    max_chars: int = 8000  # of all message contents of one row
    long_rows: Literal["split", "truncate", "drop"] = "split"
    dedup: bool = True
    bad_rows: Literal["error", "skip"] = "error"  # skip: drop rows with no reply, tool calls or null content
    train_domains: tuple[str, ...] | None = None  # None: every domain
    eval_domains: tuple[str, ...] | None = None  # None: every domain
    # The held-out split, for rows without their own `split`: a share per domain (0.2), a count per
    # domain (25), or a file of evaluation rows (every row of it; the sources then train on all of theirs).
    # No default here: params.yaml holds it.
    eval: int | float | str = field(kw_only=True)

    def validate(self) -> None:
        if not self.sources:
            raise FusecliError("dataset.sources is empty: list at least one source (or `path: demo`)")
        names = [source_name(s) for s in [*self.sources, *([eval_source(self)] if eval_file(self) else [])]]
        if len(set(names)) != len(names):
            raise FusecliError(f"dataset.sources (and the dataset.eval file) have duplicate names {names}: "
                               "set `name` on each source")
        check_holdout(self.eval, "dataset.eval", file_ok=True)
        for s in self.sources:
            check_holdout(s.eval, f"dataset source {source_name(s)}: eval", file_ok=False)
        for s in self.sources:
            for key in ("count", "eval_count"):
                value = getattr(s, key)
                if value is not None and value < 0:
                    raise FusecliError(f"dataset source {source_name(s)}: {key} must be >= 0")
        if self.max_chars < 1:
            raise FusecliError("dataset.max_chars must be >= 1")


@dataclass
class Row:
    id: str
    domain: str
    messages: list[Message]
    answer: str | None
    split: str | None  # "train" / "eval" when the source fixes it, else None
    answers: list[str] | None = None  # every accepted answer, when a question has several
    exclude: list[str] | None = None  # answers the question rules out


@dataclass
class SourceStats:
    read: int = 0
    too_long: int = 0
    pieces: int = 0  # extra rows made by splitting long dialogues
    duplicates: int = 0
    domain_filtered: int = 0
    bad: dict[str, int] = field(default_factory=dict)  # skipped rows by reason (dataset.bad_rows: skip)
    bad_ids: list[str] = field(default_factory=list)  # the first few skipped rows
    train: int = 0
    eval: int = 0
    notes: list[str] = field(default_factory=list)


def check_holdout(value: int | float | str | None, where: str, file_ok: bool) -> None:
    """A count (a whole number >= 0), a share in [0, 1), or (`file_ok`) a file path."""
    if value is None or isinstance(value, int):
        if value is not None and value < 0:
            raise FusecliError(f"{where} = {value} must be >= 0 (a count of rows per domain)")
        return
    if isinstance(value, str):
        if not file_ok or not value.strip():
            raise FusecliError(f"{where} = {value!r}: give a share (0.2) or a count per domain (25)")
        return
    if not 0 <= value < 1:
        raise FusecliError(f"{where} = {value}: a share must be in [0, 1), a count a whole number (25)")


def eval_file(params: DatasetParams) -> str | None:
    """The file `dataset.eval` names, or None when it is a share or a count."""
    return params.eval if isinstance(params.eval, str) else None


def eval_source(params: DatasetParams) -> SourceParams:
    """The `dataset.eval` file read as a source whose every row is held out (named after the file)."""
    assert isinstance(params.eval, str)
    return SourceParams(path=params.eval)


def source_name(source: SourceParams) -> str:
    return source.name or ("demo" if source.path == "demo" else Path(source.path).stem)


def read_text(path: Path) -> str:
    """A text dataset file as UTF-8 (a leading byte-order mark is dropped); any other encoding is one line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FusecliError(
            f"{path} is not UTF-8 (byte 0x{data[exc.start]:02x} on line {line}): re-save it as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}"
        ) from None


def read_records(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, record) pairs from a JSONL, JSON-array or parquet file, or the demo Q&A."""
    p = Path(DEMO_DIALOGUES if path == "demo" else path)
    if path == "demo" and not p.is_file():
        raise FusecliError(f"{DEMO_DIALOGUES} not found: run `dvc repro build_demo` first (it writes the demo data)")
    if not p.is_file():
        raise FusecliError(f"dataset source {path} not found: fix `path` in params.yaml (relative to the workspace)")
    if p.suffix == ".parquet":
        for i, row in enumerate(pl.read_parquet(p).to_dicts()):
            yield f"{path} row {i}", row
        return
    if p.suffix not in (".jsonl", ".json"):
        raise FusecliError(f"dataset source {path}: unsupported file type; use .jsonl, .json or .parquet")
    text = read_text(p)
    if p.suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FusecliError(f"{path} is not valid JSON (line {exc.lineno}): fix the file") from None
        for i, row in enumerate(records):
            yield f"{path} item {i}", row
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{n}", json.loads(line)
        except json.JSONDecodeError:
            raise FusecliError(f"{path}:{n} is not valid JSON: fix or remove the line") from None


class BadRow(FusecliError):
    """One row that cannot be a training dialogue; `dataset.bad_rows: skip` drops it and counts its reason."""

    def __init__(self, where: str, reason: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}: fix or drop the row, or set dataset.bad_rows: skip")
        self.reason = reason


TOOL_ROLES = ("tool", "function", "ipython")


def _content(value: Any, where: str) -> str:
    """Message content as text; OpenAI's list-of-parts form keeps only its text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text", "") for p in value if isinstance(p, dict) and p.get("type") == "text")
    if value is None:
        raise BadRow(where, "null content", "a message has null content")
    raise BadRow(where, "content not text", f"message content must be a string, got {type(value).__name__}")


def to_messages(record: dict[str, Any], where: str) -> list[Message]:
    """Normalise a ShareGPT or OpenAI record to `[{"role", "content"}]`, ending with an assistant turn."""
    if not isinstance(record, dict):
        raise BadRow(where, "not an object", "expected a JSON object per row")
    turns = record.get("messages")
    if turns is None and record.get("conversations") is not None:
        turns = record["conversations"]
    if isinstance(turns, str):  # a parquet column holding JSON text
        turns = json.loads(turns)
    if not isinstance(turns, list):
        raise BadRow(where, "no messages", "row has no `messages` or `conversations` list (ShareGPT or OpenAI form)")
    messages = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"]})
    for turn in turns:
        if not isinstance(turn, dict):
            raise BadRow(where, "turn not an object", "every turn must be an object")
        if turn.get("role") in TOOL_ROLES or turn.get("tool_calls") or turn.get("function_call"):
            raise BadRow(where, "tool call", "a turn is a tool call or result, which a chat template cannot render")
        if "role" in turn:
            role, content = turn["role"], turn.get("content")
        else:
            speaker = str(turn.get("from", "")).lower()
            if speaker not in SHAREGPT_ROLES:
                known = ", ".join(sorted(SHAREGPT_ROLES))
                raise BadRow(where, "unknown role", f"unknown ShareGPT speaker {turn.get('from')!r} (known: {known})")
            role, content = SHAREGPT_ROLES[speaker], turn.get("value")
        if role not in ROLES:
            raise BadRow(where, "unknown role", f"unknown role {role!r} (known: {', '.join(ROLES)})")
        messages.append({"role": role, "content": _content(content, where)})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()  # trailing prompts have no response to learn from
    if not messages:
        raise BadRow(where, "no assistant reply", "row has no assistant turn: every dialogue needs an assistant reply")
    for k, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            # an empty reply would teach the model to end its turn at once
            raise BadRow(where, "empty reply", f"message {k} is an empty or whitespace-only assistant reply")
    return messages


def chars(messages: list[Message]) -> int:
    return sum(len(m["content"]) for m in messages)


def fit_length(messages: list[Message], max_chars: int, mode: str) -> list[list[Message]]:
    """Pieces of a dialogue within `max_chars`: whole exchanges, each piece ending with an assistant turn.

    "split" packs consecutive exchanges into as many pieces as needed (the paper splits long
    dialogues to fit the context), "truncate" keeps the first piece, "drop" keeps nothing. Every piece
    repeats the system message; an exchange that alone exceeds the limit is dropped.
    """
    if chars(messages) <= max_chars:
        return [messages]
    if mode == "drop":
        return []
    system = [m for m in messages[:1] if m["role"] == "system"]
    exchanges: list[list[Message]] = []
    for m in messages[len(system) :]:
        if not exchanges or (m["role"] != "assistant" and exchanges[-1][-1]["role"] == "assistant"):
            exchanges.append([])
        exchanges[-1].append(m)
    budget = max_chars - chars(system)
    pieces: list[list[Message]] = []
    current: list[Message] = []
    for ex in exchanges:
        if chars(ex) > budget:
            if current:
                pieces.append(current)
            current = []
            continue
        if chars(current) + chars(ex) > budget:
            pieces.append(current)
            current = []
        current = current + ex
    if current:
        pieces.append(current)
    pieces = [system + p for p in pieces if any(m["role"] == "assistant" for m in p)]
    return pieces[:1] if mode == "truncate" else pieces


BAD_IDS_SHOWN = 5


def bad_rows_note(stats: SourceStats) -> str | None:
    """`skipped 3 bad rows (no assistant reply 2, tool call 1; first: r4, r7, 12)` for the summary line."""
    if not stats.bad:
        return None
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(stats.bad.items()))
    return f"skipped {sum(stats.bad.values())} bad rows ({reasons}; first: {', '.join(stats.bad_ids)})"


def read_source(source: SourceParams, params: DatasetParams, seen: set[str], stats: SourceStats) -> list[Row]:
    """Every usable row of one source, normalised, length-fitted and deduplicated against `seen`."""
    name = source_name(source)
    rows = []
    for where, record in read_records(source.path):
        stats.read += 1
        try:
            messages = to_messages(record, where)
        except BadRow as exc:
            if params.bad_rows == "error":
                raise
            stats.bad[exc.reason] = stats.bad.get(exc.reason, 0) + 1
            if len(stats.bad_ids) < BAD_IDS_SHOWN:
                row_id = record.get("id") if isinstance(record, dict) else None
                stats.bad_ids.append(str(row_id) if row_id is not None else where)
            continue
        raw_id = record.get("id")
        if raw_id is None:
            raw_id = hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
        domain = source.domain or record.get("domain") or name
        split = record.get("split")
        if split is not None:
            if str(split) not in SPLITS:
                raise FusecliError(f"{where}: split {split!r} is not one of {sorted(SPLITS)}")
            split = SPLITS[str(split)]
        answer = record.get("answer")
        answers, exclude = record.get("answers"), record.get("exclude")
        for key, value in (("answers", answers), ("exclude", exclude)):
            if value is not None and (not isinstance(value, list) or not all(isinstance(a, str) for a in value)):
                raise FusecliError(f"{where}: `{key}` must be a list of strings or absent")
        pieces = fit_length(messages, params.max_chars, params.long_rows)
        if not pieces:
            stats.too_long += 1
        stats.pieces += max(0, len(pieces) - 1)
        for k, piece in enumerate(pieces):
            key = json.dumps(piece, sort_keys=True, ensure_ascii=False)
            if params.dedup and key in seen:
                stats.duplicates += 1
                continue
            seen.add(key)
            rows.append(
                Row(
                    id=f"{name}:{raw_id}" + (f"#{k}" if len(pieces) > 1 else ""),
                    domain=str(domain),
                    messages=piece,
                    # the gold answer belongs to the dialogue's last turn, so only its last piece keeps it
                    answer=str(answer) if answer is not None and k == len(pieces) - 1 else None,
                    split=split,
                    answers=answers if k == len(pieces) - 1 else None,
                    exclude=exclude if k == len(pieces) - 1 else None,
                )
            )
    return rows


def split_rows(
    rows: list[Row], holdout: int | float, rng: random.Random, notes: list[str] | None = None
) -> tuple[list[Row], list[Row]]:
    """Rows with a fixed split keep it; the others go to eval per domain, seeded: `holdout` rows of each
    domain (an int), or that share of them (a float; at least one of a domain with two rows or more).
    A domain always keeps one row for training; a count cut down to that is noted in `notes`."""
    train = [r for r in rows if r.split == "train"]
    held = [r for r in rows if r.split == "eval"]
    by_domain: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.split is None:
            by_domain[r.domain].append(r)
    for domain in sorted(by_domain):
        group = by_domain[domain]
        if isinstance(holdout, int):
            n_eval = min(holdout, max(len(group) - 1, 0))
            if n_eval < holdout and notes is not None:
                notes.append(f"domain {domain}: eval {holdout} of {len(group)} rows, held out {n_eval} "
                             "(one kept for training)")
        else:
            n_eval = round(holdout * len(group))
            if holdout > 0 and len(group) > 1:
                n_eval = max(1, n_eval)
        picked = set(rng.sample(range(len(group)), n_eval))
        held.extend(r for i, r in enumerate(group) if i in picked)
        train.extend(r for i, r in enumerate(group) if i not in picked)
    return train, held


def sample(rows: list[Row], count: int | None, rng: random.Random) -> list[Row]:
    """At most `count` rows, chosen by `rng`, in their original order."""
    if count is None or count >= len(rows):
        return rows
    keep = set(rng.sample(range(len(rows)), count))
    return [r for i, r in enumerate(rows) if i in keep]


def build_dataset(
    params: DatasetParams, log: Callable[[str], None] = print
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, SourceStats]]:
    """Train and eval frames (train shuffled by the seed, eval in source order) and per-source stats."""
    seen: set[str] = set()
    train: list[Row] = []
    held: list[Row] = []
    all_stats: dict[str, SourceStats] = {}
    # The eval file is read first: a training row that repeats one of its dialogues is a duplicate, dropped.
    sources = ([eval_source(params)] if eval_file(params) else []) + list(params.sources)
    default = 0 if eval_file(params) else params.eval
    for source in sources:
        name = source_name(source)
        stats = all_stats[name] = SourceStats()
        # A string seed is hashed with SHA-512 by `random`: stable across runs and PYTHONHASHSEED.
        rng = random.Random(f"{params.seed}:{name}")
        rows = read_source(source, params, seen, stats)
        if source.path == eval_file(params):
            for r in rows:
                r.split = "eval"
        holdout = default if source.eval is None else source.eval
        assert not isinstance(holdout, str)
        tr, ev = split_rows(rows, holdout, rng, stats.notes)
        n = len(tr) + len(ev)
        if params.train_domains is not None:
            tr = [r for r in tr if r.domain in params.train_domains]
        if params.eval_domains is not None:
            ev = [r for r in ev if r.domain in params.eval_domains]
        stats.domain_filtered = n - len(tr) - len(ev)
        for what, count, pool in (("count", source.count, tr), ("eval_count", source.eval_count, ev)):
            if count is not None and count > len(pool):
                stats.notes.append(f"{what} {count} > {len(pool)} rows available: took all")
        tr, ev = sample(tr, source.count, rng), sample(ev, source.eval_count, rng)
        if note := bad_rows_note(stats):
            stats.notes.append(note)
        stats.train, stats.eval = len(tr), len(ev)
        log(
            f"{name}: read {stats.read}, too long {stats.too_long}, split pieces +{stats.pieces}, "
            f"duplicates {stats.duplicates}, domain-filtered {stats.domain_filtered} -> "
            f"train {stats.train}, eval {stats.eval}" + "".join(f"; {note}" for note in stats.notes)
        )
        train.extend(tr)
        held.extend(ev)
    if not train:
        raise FusecliError("dataset has no training rows after filtering: check sources, count and train_domains")
    if not held:
        raise FusecliError("dataset has no evaluation rows: raise dataset.eval (a share or a count per domain), "
                           "or check eval_domains")
    ids = [r.id for r in train + held]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise FusecliError(f"dataset row id {dup!r} is not unique: give the source's rows unique `id`s")
    random.Random(f"{params.seed}:shuffle").shuffle(train)
    return frame(train), frame(held), all_stats


def frame(rows: list[Row]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [r.id for r in rows],
            "domain": [r.domain for r in rows],
            "messages": [json.dumps(r.messages, ensure_ascii=False) for r in rows],
            "answer": [r.answer for r in rows],
            "answers": [r.answers for r in rows],
            "exclude": [r.exclude for r in rows],
        },
        schema=SCHEMA,
    )


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    df.write_parquet(buf)
    atomic_write_bytes(path, buf.getvalue())


def run(params: DatasetParams, out: str | Path, log: Callable[[str], None] = print) -> None:
    """Build the dataset and write `out/train.parquet` and `out/eval.parquet` atomically."""
    train, held, _ = build_dataset(params, log)
    out = Path(out)
    write_parquet(train, out / "train.parquet")
    write_parquet(held, out / "eval.parquet")
    log(f"wrote {out}/train.parquet ({len(train)} rows: {per_domain(train)}) and {out}/eval.parquet "
        f"({len(held)} rows: {per_domain(held)})")


def per_domain(df: pl.DataFrame) -> str:
    """`crops 12, sports 9`: the rows of each domain, for the stage's summary line."""
    return ", ".join(f"{d} {n}" for d, n in df.group_by("domain").len().sort("domain").iter_rows())

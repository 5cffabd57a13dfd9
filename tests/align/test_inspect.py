import json
import shutil
from collections import Counter

import numpy as np
import polars as pl
import pytest
import typer
from typer.testing import CliRunner

import fusecli.align.inspect as inspect_module
from fusecli.align.params import AlignParams
from fusecli.align.stage import run as align_stage
from fusecli.cli import app as fusecli_app
from fusecli.data.render import render, tokenize
from fusecli.lock import Lock, ModelEntry, dump_lock
from fusecli.store import StoreWriter, iter_records
from tests.params import section

from .conftest import CORPUS

TEXT = "The capital of France is Paris.\nCafé 你好"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return fusecli_app  # its error handler prints a FusecliError as one `error:` line


def _run(app, tokenizer_dirs, *args: str):
    base = ["inspect-alignment", "--pivot", str(tokenizer_dirs["byte"]), "--source", str(tokenizer_dirs["meta"])]
    return CliRunner().invoke(app, [*base, *args])


@pytest.mark.parametrize("method", ["mined", "offsets"])
def test_json_output(app, tokenizer_dirs, tokenizers, method):
    result = _run(app, tokenizer_dirs, "--text", TEXT, "--method", method, "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert list(got) == ["pivot_tokens", "source_tokens", "alignment"]
    pivot_ids = tokenizers["byte"](TEXT, add_special_tokens=False)["input_ids"]
    assert got["pivot_tokens"] == tokenizers["byte"].convert_ids_to_tokens(pivot_ids)
    assert len(got["alignment"]) == len(got["pivot_tokens"])
    assert all(p and all(0 <= i < len(got["source_tokens"]) for i in p) for p in got["alignment"])
    assert got["alignment"][0] == [0] and got["alignment"][-1][-1] == len(got["source_tokens"]) - 1


def test_table_output_and_text_file(app, tokenizer_dirs, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("Paris\n", encoding="utf-8")
    result = _run(app, tokenizer_dirs, "--text-file", str(path))
    assert result.exit_code == 0, result.output
    assert "pivot token" in result.stdout and "Paris" in result.stdout and "\\n" in result.stdout


class _NoStrings:
    """A tokenizer whose ids cannot be turned into token strings one at a time."""

    name_or_path = "no-strings"
    bos_token_id = eos_token_id = unk_token_id = None

    def __len__(self):
        return 1

    def get_vocab(self):
        return {"a": 0}

    def convert_ids_to_tokens(self, ids):
        raise NotImplementedError("no per-id decoding")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--text", ""], "the text is empty"),
        ([], "exactly one of --text and --text-file"),
        (["--text", "a", "--text-file", "x.txt"], "exactly one of"),
        (["--text-file", "missing.txt"], "missing.txt not found"),
    ],
)
def test_bad_input_is_one_error_line(app, tokenizer_dirs, args, match):
    result = _run(app, tokenizer_dirs, *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and match in result.stderr and result.stderr.count("\n") == 1


def test_missing_tokenizer(app, tmp_path):
    args = ["inspect-alignment", "--source", str(tmp_path), "--text", "a"]
    result = CliRunner().invoke(app, [*args, "--pivot", str(tmp_path / "nope")])
    assert result.exit_code == 1 and result.stderr.startswith("error: tokenizer folder")
    result = CliRunner().invoke(app, [*args, "--pivot", str(tmp_path)])
    assert result.exit_code == 1 and result.stderr.startswith("error: cannot load a tokenizer")
    assert result.stderr.count("\n") == 1


def test_tokenizer_that_cannot_convert_single_ids(app, tokenizer_dirs, monkeypatch):
    monkeypatch.setattr(inspect_module, "load_tokenizer", lambda path, trust_remote_code=False: _NoStrings())
    result = _run(app, tokenizer_dirs, "--text", "a")
    assert result.exit_code == 1 and "cannot turn single ids into token strings" in result.stderr


# --row: the teacher rows of one dataset row of a finished workspace, read back from its stores

K = 4
SLUG = "meta-src"


def dialogues() -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": CORPUS[i]}, {"role": "assistant", "content": CORPUS[(i + 3) % len(CORPUS)]}]
            for i in range(5)]


def write_extract(root, tok, drop=(), seed=0):
    """An extract store as the extract stage writes it (each model in its own template, turns kept); each row's
    top-1 is the gold token it predicts."""
    rng = np.random.default_rng(seed)
    records = []
    for i, msgs in enumerate(dialogues()):
        if i in drop:
            continue
        t = tokenize(tok, render(tok, msgs))
        gold = t.input_ids[t.label_mask]
        others = rng.integers(0, len(tok) - 5, size=(len(gold), K - 1))
        others = np.where(others == gold[:, None], (others + 1) % (len(tok) - 5), others)
        lp = np.sort(np.log(rng.dirichlet(np.ones(K), size=len(gold))), axis=1)[:, ::-1]
        records.append({"seq_index": i, "input_ids": t.input_ids.astype(np.int32),
                        "offsets": t.offsets.astype(np.int32), "label_mask": t.label_mask.astype(np.uint8),
                        "turns": t.turns.astype(np.int32),
                        "topk_ids": np.concatenate([gold[:, None], others], axis=1).astype(np.int32),
                        "topk_logprobs": lp.astype(np.float32), "seq_ce": float(rng.random())})
    writer = StoreWriter.open(root, {"k": K}, shard_size=2)
    writer.write_all(records)
    writer.close()
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizers, tokenizer_dirs):
    """What `dvc repro` leaves for inspect-alignment: data, models.lock, both extract stores (the source
    without row 2) and align/<slug> made by the align stage itself."""
    ws = tmp_path_factory.mktemp("ws")
    (ws / "data").mkdir()
    ids = [f"demo:row-{i}" for i in range(len(dialogues()))]
    pl.DataFrame({"id": ids, "domain": ["crop", "sport"] * 2 + ["crop"],
                  "messages": [json.dumps(m) for m in dialogues()]}).write_parquet(ws / "data/train.parquet")
    entry = dict(origin="local", repo=None, revision=None, content_hash="sha256:" + "0" * 64, architecture="x",
                 vocab_size=1, dtype="float32", chat_template_hash=None, trust_remote_code=False, allow_pickle=False)
    lock = Lock(pivot=ModelEntry(name="p", path=str(tokenizer_dirs["byte"]), **entry),
                sources={SLUG: ModelEntry(name=SLUG, path=str(tokenizer_dirs["meta"]), **entry)})
    (ws / "models.lock").write_text(dump_lock(lock))
    pivot = write_extract(ws / "extract/pivot", tokenizers["byte"], seed=1)
    source = write_extract(ws / f"extract/sources/{SLUG}", tokenizers["meta"], drop={2}, seed=2)
    coverage = align_stage(section(AlignParams, "align", k=K), pivot, source, tokenizer_dirs["byte"],
                           tokenizer_dirs["meta"], ws / "align" / SLUG)
    return {"root": ws, "ids": ids, "coverage": coverage}


def _rows(workspace, *args):
    return CliRunner().invoke(fusecli_app, ["--workspace", str(workspace["root"]), "inspect-alignment", *args])


def _shown(ids, logprobs, table, n=3):
    """A stored row as the JSON shows it: [canonical text, probability] of its first n tokens."""
    pairs = zip(ids.tolist(), logprobs.tolist(), strict=True)
    return [[table.canon[i], pytest.approx(float(np.exp(lp)), abs=1e-6)] for i, lp in pairs if i >= 0][:n]


def test_every_row_reads_back_its_stores(workspace, tables):
    """Per row (by id or index): the aligned row is the align store's, the source's own row is an extract row
    whose top-1 starts where the pivot token starts, and the rules add up to coverage.json's counts."""
    counts = Counter()
    aligned = {int(r["seq_index"]): r for r in iter_records(workspace["root"] / "align" / SLUG)}
    pivot = {int(r["seq_index"]): r for r in iter_records(workspace["root"] / "extract/pivot")}
    for i, rid in enumerate(workspace["ids"]):
        result = _rows(workspace, "--row", rid if i % 2 else str(i), "--json", "--top", "3")
        assert result.exit_code == 0, result.output
        got = json.loads(result.stdout)
        assert (got["row"], got["seq_index"]) == (rid, i) and list(got["sources"]) == [SLUG]
        found = got["sources"][SLUG]
        resp = np.flatnonzero(pivot[i]["label_mask"])
        assert [r["position"] for r in found["rows"]] == resp.tolist()
        for r, row in enumerate(found["rows"]):
            counts[row["rule"]] += 1
            assert row["pivot_token"] == tables["byte"].canon[pivot[i]["input_ids"][resp[r]]]
            assert row["aligned"] == _shown(aligned[i]["topk_ids"][r], aligned[i]["topk_logprobs"][r], tables["byte"])
            if row["rule"] == "content":  # the source read the same text: its next token starts the same text
                own, piece = row["source"][0][0].replace("▁", " "), row["pivot_token"].replace("▁", " ")
                assert own.startswith(piece) or piece.startswith(own), (own, piece)
            elif row["rule"] == "end_of_turn":
                assert row["source"][0][0] == row["pivot_token"] == "<|im_end|>"
            elif row["rule"] == "within_token":  # the source row at the start of the token the pivot reads into
                assert row["source"] and row["aligned"]
            else:
                assert row["source"] == [] and len(row["aligned"]) == 1 and row["aligned"][0][0] == row["pivot_token"]
        if i == 2:  # not in the source's store
            assert found["seq_ce"]["source"] is None and {r["rule"] for r in found["rows"]} == {"no_source"}
    assert counts == Counter({k: v for k, v in workspace["coverage"]["rules"].items() if v})
    assert counts["content"] and counts["end_of_turn"]


def test_the_table_shows_each_position(workspace):
    result = _rows(workspace, "--row", workspace["ids"][0], "--top", "2")
    assert result.exit_code == 0, result.output
    assert f"row {workspace['ids'][0]} (#0, crop), source {SLUG}" in " ".join(result.stdout.split())
    for word in ("pivot token", "content", "end_of_turn", "<|im_end|>"):
        assert word in result.stdout


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--row", "nope"], "row 'nope' is not in"),
        (["--row", "99"], "an index 0-4"),
        (["--row", "0", "--slug", "other"], "no source 'other' in"),
        (["--row", "0", "--text", "a"], "--row reads the workspace"),
        (["--text", "a"], "pass --pivot and --source"),
    ],
)
def test_bad_row_input_is_one_error_line(workspace, args, match):
    result = _rows(workspace, *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and match in result.stderr and result.stderr.count("\n") == 1


def test_a_workspace_before_dvc_repro_says_so(workspace, tmp_path):
    shutil.copytree(workspace["root"], tmp_path / "ws")
    shutil.rmtree(tmp_path / "ws/align")
    result = CliRunner().invoke(fusecli_app, ["--workspace", str(tmp_path / "ws"), "inspect-alignment", "--row", "0"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    missing = tmp_path / "ws/align" / SLUG / "manifest.json"
    assert result.stderr.startswith(f"error: {missing} not found: run `dvc repro` first")
    (tmp_path / "ws/data/train.parquet").unlink()
    shutil.copytree(workspace["root"] / "align", tmp_path / "ws/align")
    result = CliRunner().invoke(fusecli_app, ["--workspace", str(tmp_path / "ws"), "inspect-alignment", "--row", "0"])
    assert result.exit_code == 1 and "train.parquet not found: run `dvc repro` first" in result.stderr

import json

import pytest
import typer
from typer.testing import CliRunner

import fusecli.align.inspect as inspect_module
from fusecli.cli import app as fusecli_app

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

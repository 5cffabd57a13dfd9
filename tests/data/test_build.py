import dataclasses
import json
import re
import runpy
from pathlib import Path

import polars as pl
import pytest
import yaml

from fusecli.config import from_dict
from fusecli.data.build import DatasetParams, build_dataset, fit_length, to_messages
from fusecli.errors import FusecliError

STAGE = Path(__file__).resolve().parents[2] / "stages" / "build_dataset.py"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sharegpt(i: int, domain: str | None = None) -> dict:
    row = {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
    return {**row, "domain": domain} if domain else row


def openai(i: int) -> dict:
    return {
        "id": f"m{i}",
        "messages": [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"r{i}"}],
    }


def params(**kw) -> DatasetParams:
    return from_dict(DatasetParams, {"eval": 0.1, **kw}, "dataset")


def run_stage(tmp_path: Path, section: dict) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dataset": {"eval": 0.1, **section}}))
    main = runpy.run_path(str(STAGE))["main"]
    # no dvc.yaml in tmp_path: outside a DVC workspace there are no deps to keep in step with the sources
    main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "data"), "--dvc-yaml",
          str(tmp_path / "dvc.yaml")])
    return tmp_path / "data"


def test_stage_writes_the_documented_columns(tmp_path):
    src = write_jsonl(tmp_path / "chat.jsonl", [sharegpt(i) for i in range(20)])
    out = run_stage(tmp_path, {"sources": [{"path": src}], "eval": 0.2})
    train, held = pl.read_parquet(out / "train.parquet"), pl.read_parquet(out / "eval.parquet")
    assert train.columns == held.columns == ["id", "domain", "messages", "answer", "answers", "exclude"]
    assert (len(train), len(held)) == (16, 4)
    assert set(train["domain"]) == {"chat"} and train["answer"].null_count() == 16
    messages = json.loads(train["messages"][0])
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert not set(train["id"]) & set(held["id"])


def test_sharegpt_and_messages_mix_dedup_and_count(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [sharegpt(i, "math") for i in range(10)] + [sharegpt(0, "math")])
    b_rows = [openai(i) for i in range(30)]
    pl.DataFrame(
        {"id": [r["id"] for r in b_rows], "messages": [json.dumps(r["messages"]) for r in b_rows]}
    ).write_parquet(tmp_path / "b.parquet")
    # the same dialogue as a.jsonl's first row, in OpenAI form: a cross-source duplicate
    c = write_jsonl(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}]}],
    )
    p = params(
        sources=[{"path": a}, {"path": str(tmp_path / "b.parquet"), "count": 5, "domain": "chat"}, {"path": c}],
        eval=0.1,
        seed=3,
    )
    train, held, stats = build_dataset(p, log=lambda s: None)
    assert stats["a"].duplicates == 1 and stats["c"].duplicates == 1
    assert (stats["a"].train, stats["a"].eval) == (9, 1)
    assert stats["b"].train == 5 and stats["b"].eval == 3
    assert set(train["domain"]) == {"math", "chat"}
    assert any(i.startswith("b:m") for i in train["id"])
    again = build_dataset(p, log=lambda s: None)
    assert again[0].equals(train) and again[1].equals(held)


def test_demo_reads_the_world_file_and_keeps_its_splits(tmp_path, monkeypatch):
    from fusecli.demo.qa import dataset_rows

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FusecliError, match="build_demo"):
        build_dataset(params(sources=[{"path": "demo"}]), log=lambda s: None)
    (tmp_path / "demo").mkdir()
    rows = dataset_rows(0, 3, 30)
    (tmp_path / "demo" / "dialogues.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, held, _ = build_dataset(params(sources=[{"path": "demo"}], train_domains=["crop"]), log=lambda s: None)
    assert set(train["domain"]) == {"crop"} and len(set(held["domain"])) == 4
    assert all(i.endswith("-eval") for i in held["id"]) and not any(i.endswith("-eval") for i in train["id"])
    assert held["answer"].null_count() == 0
    by_id = {r["id"]: r for r in rows}
    for rid, answers, exclude in held.select("id", "answers", "exclude").iter_rows():
        source = by_id[rid.split(":", 1)[1]]
        assert answers == source["answers"] and exclude == source["exclude"]


def test_long_dialogues_split_truncate_drop():
    long = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "x" * 40},
        {"role": "assistant", "content": "y" * 40},
        {"role": "user", "content": "x" * 40},
        {"role": "assistant", "content": "y" * 40},
    ]
    pieces = fit_length(long, 100, "split")
    assert len(pieces) == 2 and all(p[0]["role"] == "system" and p[-1]["role"] == "assistant" for p in pieces)
    assert fit_length(long, 100, "truncate") == pieces[:1]
    assert fit_length(long, 100, "drop") == []
    assert fit_length(long, 1000, "drop") == [long]


def test_trailing_prompts_are_dropped_and_roles_mapped():
    msgs = to_messages(
        {
            "system": "be brief",
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "hello"},
                {"from": "human", "value": "bye"},
            ],
        },
        "x",
    )
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]


@pytest.mark.parametrize(
    ("rows", "section", "needle"),
    [
        ([{"conversations": [{"from": "human", "value": "q"}]}], {}, "no assistant turn"),
        ([{"conversations": [{"from": "robot", "value": "q"}]}], {}, "unknown ShareGPT speaker"),
        ([{"text": "plain"}], {}, "no `messages` or `conversations`"),
        ([sharegpt(i) for i in range(5)], {"train_domains": ["other"]}, "no training rows"),
        ([sharegpt(i) for i in range(5)], {"long_rows": "drop", "max_chars": 2}, "no training rows"),
        ([sharegpt(i) for i in range(5)], {"eval": 1.5}, "dataset.eval = 1.5: a share must be in [0, 1)"),
        ([sharegpt(i) for i in range(5)], {"shuffle": True}, "unknown key 'shuffle'"),
    ],
)
def test_errors_are_one_line_and_exit_1(tmp_path, capsys, rows, section, needle):
    src = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(SystemExit) as exc:
        run_stage(tmp_path, {"sources": [{"path": src}], **section})
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err
    assert not (tmp_path / "data" / "train.parquet").exists()


def test_missing_source_and_bad_json(tmp_path):
    with pytest.raises(FusecliError, match="not found"):
        build_dataset(params(sources=[{"path": str(tmp_path / "nope.jsonl")}]))
    (tmp_path / "bad.jsonl").write_text('{"messages": [}\n')
    with pytest.raises(FusecliError, match="bad.jsonl:1 is not valid JSON"):
        build_dataset(params(sources=[{"path": str(tmp_path / "bad.jsonl")}]))


IMPERFECT = [
    {"id": "noreply", "messages": [{"role": "user", "content": "hello?"}]},
    {"id": "tool", "messages": [{"role": "user", "content": "weather?"},
                                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
                                {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]},
    {"id": "null", "messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "ok"}]},
    {"id": "noreply2", "conversations": [{"from": "human", "value": "anyone?"}]},
]


def test_one_imperfect_row_is_an_error_by_default_that_names_the_skip_setting(tmp_path, capsys):
    src = write_jsonl(tmp_path / "chat.jsonl", [openai(i) for i in range(10)] + IMPERFECT[2:3])
    with pytest.raises(SystemExit):
        run_stage(tmp_path, {"sources": [{"path": src}]})
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "a message has null content" in err and "set dataset.bad_rows: skip" in err


def test_skip_drops_imperfect_rows_and_counts_them_by_reason(tmp_path, capsys):
    rows = [openai(i) for i in range(10)]
    src = write_jsonl(tmp_path / "chat.jsonl", rows[:3] + IMPERFECT + rows[3:])
    out = run_stage(tmp_path, {"sources": [{"path": src}], "bad_rows": "skip", "eval": 0.2})
    n = pl.read_parquet(out / "train.parquet").height + pl.read_parquet(out / "eval.parquet").height
    assert n == 10
    summary = capsys.readouterr().out
    assert ("skipped 4 bad rows (no assistant reply 2, null content 1, tool call 1; "
            "first: noreply, tool, null, noreply2)") in summary


EMPTY_REPLY = {"id": "blank", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " \n"}]}


def test_an_empty_reply_is_a_bad_row_named_with_the_fix(tmp_path, capsys):
    src = write_jsonl(tmp_path / "chat.jsonl", [openai(i) for i in range(5)] + [EMPTY_REPLY])
    with pytest.raises(SystemExit) as exc:
        run_stage(tmp_path, {"sources": [{"path": src}]})
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert f"{src}:6: message 1 is an empty or whitespace-only assistant reply" in err
    assert "set dataset.bad_rows: skip" in err


def test_skip_counts_empty_replies_also_in_an_earlier_turn(tmp_path, capsys):
    earlier = {"id": "early", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""},
                                           {"role": "user", "content": "b"}, {"role": "assistant", "content": "ok"}]}
    src = write_jsonl(tmp_path / "chat.jsonl", [openai(i) for i in range(10)] + [EMPTY_REPLY, earlier])
    out = run_stage(tmp_path, {"sources": [{"path": src}], "bad_rows": "skip"})
    assert pl.read_parquet(out / "train.parquet").height + pl.read_parquet(out / "eval.parquet").height == 10
    assert "skipped 2 bad rows (empty reply 2; first: blank, early)" in capsys.readouterr().out


def by_domain(df: pl.DataFrame) -> dict[str, int]:
    return dict(df.group_by("domain").len().iter_rows())


def test_eval_as_a_count_per_domain(tmp_path, capsys):
    rows = [sharegpt(i, "math") for i in range(13)] + [sharegpt(100 + i, "code") for i in range(13)]
    rows += [sharegpt(200 + i, "tiny") for i in range(3)]
    train, held, stats = build_dataset(params(sources=[{"path": write_jsonl(tmp_path / "c.jsonl", rows)}], eval=5),
                                       log=lambda s: None)
    assert by_domain(held) == {"math": 5, "code": 5, "tiny": 2}  # a domain keeps one row for training
    assert by_domain(train) == {"math": 8, "code": 8, "tiny": 1}
    assert "domain tiny: eval 5 of 3 rows, held out 2 (one kept for training)" in stats["c"].notes
    # a share: round(0.1 * 13) = 1 per domain, as before
    _, held, _ = build_dataset(params(sources=[{"path": str(tmp_path / "c.jsonl")}], eval=0.1), log=lambda s: None)
    assert by_domain(held) == {"math": 1, "code": 1, "tiny": 1}
    # a source's own `eval` overrides dataset.eval
    _, held, _ = build_dataset(params(sources=[{"path": str(tmp_path / "c.jsonl"), "eval": 0.5}], eval=5),
                               log=lambda s: None)
    assert by_domain(held) == {"math": 6, "code": 6, "tiny": 2}


def test_eval_as_a_file_holds_out_its_rows_and_drops_their_copies_from_training(tmp_path, capsys):
    from fusecli.data.deps import dataset_files

    train_rows = [openai(i) for i in range(10)]
    src = write_jsonl(tmp_path / "chat.jsonl", train_rows)
    held_rows = [{"domain": "chat", **openai(100 + i)} for i in range(4)] + [train_rows[0]]
    ev = write_jsonl(tmp_path / "held.jsonl", held_rows)
    p = params(sources=[{"path": src}], eval=ev)
    train, held, stats = build_dataset(p, log=print)
    assert held.height == 5 and set(held["id"]) == {f"held:m{100 + i}" for i in range(4)} | {"held:m0"}
    assert train.height == 9 and "chat:m0" not in set(train["id"])  # the eval row's copy is not trained on
    assert stats["chat"].duplicates == 1
    assert dataset_files(p) == [src, ev]  # a DVC dependency of build_dataset, like the sources
    out = capsys.readouterr().out
    assert "held: read 5" in out and "train 0, eval 5" in out


@pytest.mark.parametrize(("value", "needle"), [
    (-1, "dataset.eval = -1 must be >= 0"),
    (True, "dataset.eval = True has the wrong type"),
    ("", "give a share (0.2) or a count per domain (25)"),
])
def test_bad_eval_values_are_one_line_errors(value, needle):
    with pytest.raises(FusecliError, match=re.escape(needle)):
        params(sources=[{"path": "x.jsonl"}], eval=value)


def test_eval_is_read_from_params_yaml_only(tmp_path):
    with pytest.raises(FusecliError, match=re.escape("dataset.eval is missing: add it to params.yaml")):
        from_dict(DatasetParams, {"sources": [{"path": "x.jsonl"}]}, "dataset")
    fields = {f.name: f for f in dataclasses.fields(DatasetParams)}
    assert fields["eval"].default is dataclasses.MISSING  # the default lives in params.yaml, once
    assert isinstance(yaml.safe_load((STAGE.parents[1] / "params.yaml").read_text())["dataset"]["eval"], float)


def test_an_eval_file_named_like_a_source_is_refused():
    with pytest.raises(FusecliError, match=r"duplicate names \['chat', 'chat'\]: set `name` on each source"):
        params(sources=[{"path": "a/chat.jsonl"}], eval="b/chat.jsonl")
    assert params(sources=[{"path": "a/chat.jsonl", "name": "train"}], eval="b/chat.jsonl").eval == "b/chat.jsonl"

"""End to end: the evaluate stage's entry point with `evaluate.backend: judge`, graded by a real
OpenAI-compatible server that the test starts, `transformers serve` (transformers' own), on CPU, offline.

Two tiny judges behind the one server (it loads the model a request names, a local folder included):
`noisy`, the test suite's random tiny chat model, whose replies hold no rating (missing, never 0), and
`stamp`, a tiny model wired to reply "[[A]][[7]]" to anything (every layer's output zeroed, so the next
token depends on the current one only), whose replies parse as a rating and a verdict. Their grades say
nothing about the answers: the test checks the protocol, the parsing, the aggregation and the metrics.
Both have a context of CONTEXT tokens, which the judge prompts fit (about 1,000 tokens of these tiny
tokenizers); `short` has the suite's usual 256, which they do not: the server refuses them (HTTP 400).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from fusecli.cli import app
from fusecli.evaluate.judge.context import prompt_tokens
from fusecli.evaluate.judge.grade import parse_rating, parse_verdict
from fusecli.evaluate.judge.prompts import single_messages
from fusecli.evaluate.judge.questions import read_questions
from fusecli.models import load_tokenizer
from tests.tiny import TEXTS, tiny_config, write_dataset, write_model

pytestmark = pytest.mark.slow  # a judge server and the evaluate stage, end to end: make test, not make test-fast

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
QUESTIONS = ROOT / "fusecli/evaluate/judge/data/demo_questions.jsonl"
STAMP = ("[[A]]", "[[7]]")
KEY_VAR, KEY = "FUSECLI_E2E_JUDGE_KEY", "sk-e2e-never-written-4f1c9b"
POSTS = 'POST /v1/chat/completions HTTP/1.1" 200'
CONTEXT = 4096  # the test judges' context (max_position_embeddings)


def write_stamp_judge(path: Path) -> Path:
    """A chat model that replies "[[A]][[7]]" to any conversation: its layers add nothing to the residual
    stream, so the logits at a position are the lm_head of the current token's embedding; the embeddings of
    the generation prompt's last token and of the two stamp tokens are basis vectors, which the lm_head maps
    to the next token of the chain prompt -> [[A]] -> [[7]] -> end of turn."""
    from transformers import AutoModelForCausalLM

    from fusecli.demo.tokenizers import train_tokenizer
    from fusecli.models import load_tokenizer

    train_tokenizer(TEXTS * 4, 300).save_pretrained(path)
    tok = load_tokenizer(path)  # as the server loads it
    tok.add_tokens(list(STAMP))
    tok.save_pretrained(path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False)
    chain = [tok(prompt, add_special_tokens=False)["input_ids"][-1], *tok.convert_tokens_to_ids(list(STAMP)),
             tok.eos_token_id]
    cfg = tiny_config("qwen2", len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      max_position_embeddings=CONTEXT)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for i, (current, following) in enumerate(zip(chain, chain[1:], strict=False)):
            model.model.embed_tokens.weight[current] = torch.eye(cfg.hidden_size)[i]
            model.lm_head.weight[following, i] = 10.0
    model.generation_config.do_sample = False
    model.save_pretrained(path, safe_serialization=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    log: Path
    judges: dict[str, Path]

    def posts(self) -> int:
        """Chat completions the server answered (its access log)."""
        return self.log.read_text(errors="replace").count(POSTS)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge-server")
    judges = {"noisy": write_model(root / "noisy", "llama", 290, seed=7, max_position_embeddings=CONTEXT),
              "stamp": write_stamp_judge(root / "stamp"), "short": write_model(root / "short", "llama", 290, seed=7)}
    port, log = free_port(), root / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "transformers"), "serve", "--device", "cpu", "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "info"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Server(f"http://127.0.0.1:{port}/v1", log, judges)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A pinned workspace (a Qwen2 pivot and a Llama source), every trained model a copy of the pivot."""
    root = tmp_path_factory.mktemp("judge-ws") / "ws"
    write_model(root / "local/qwen", "qwen2", 300)
    write_model(root / "local/llama", "llama", 280, seed=1)
    (root / "data").mkdir()
    write_dataset(root / "data/eval.parquet", 6)
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for args in (["set-pivot", "local/qwen"], ["add-source", "local/llama"]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    (slug,) = yaml.safe_load((root / "models.lock").read_text())["sources"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    trained = ["baseline/sft", f"fused/{slug}", "fused_all", "imf/sft", "imf/dpo"]
    for folder in [*trained, *(f"merged/{m}" for m in params["merge"]["methods"])]:
        shutil.copytree(root / "local/qwen", root / folder)
    return root


def evaluate(ws: Path, judge: dict, env: dict | None = None) -> subprocess.CompletedProcess:
    """stages/evaluate.py as dvc.yaml runs it, with test-sized settings and `judge` over evaluate.judge."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["evaluate"].update(batch_size=8, max_new_tokens=4, max_length=64, device="cpu", dtype="float32",
                              backend="judge")
    params["evaluate"]["judge"].update(questions=str(QUESTIONS), max_new_tokens=8, max_tokens=12, concurrency=2,
                                       timeout=60.0, retries=0, **judge)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run([sys.executable, str(ROOT / "stages/evaluate.py"), "--params", "params.yaml", "--lock",
                           "models.lock", "--data", "data/eval.parquet", "--out", "eval"],
                          cwd=ws, capture_output=True, text=True, env={**os.environ, **(env or {})})


def records_of(ws: Path) -> list[dict]:
    return [json.loads(line) for line in (ws / "eval/judgments.jsonl").read_text().splitlines()]


def recompute(records: list[dict]) -> dict:
    """The judge block, recomputed plainly from the recorded ratings."""
    ratings: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        ratings[r["model"]][r["category"]].append(r["rating"])
        ratings[r["model"]]["overall"].append(r["rating"])
    out: dict = {}
    for model, cats in ratings.items():
        for cat, values in cats.items():
            graded = [v for v in values if v is not None]
            out.setdefault(model, {})[cat] = {"score": sum(graded) / len(graded) if graded else None,
                                              "graded": len(graded), "missing": len(values) - len(graded)}
    return out


@pytest.fixture(scope="module")
def judged(ws, server):
    """The first run: the noisy judge, 1-10 grading only, the key from the environment, every prompt counted
    with the judge's tokenizer (they fit its context)."""
    before = server.posts()
    models = ["pivot", f"source:{slug_of(ws)}", "merged:sce"]
    noisy = str(server.judges["noisy"])
    proc = evaluate(ws, {"base_url": server.url, "model": noisy, "api_key_env": KEY_VAR, "models": models,
                         "pairwise": None, "context": CONTEXT, "tokenizer": noisy}, {KEY_VAR: KEY})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, server.posts() - before, models


def slug_of(ws: Path) -> str:
    return next(iter(yaml.safe_load((ws / "models.lock").read_text())["sources"]))


def test_every_turn_of_every_model_is_judged_by_the_server(judged, ws, server):
    proc, posts, models = judged
    questions = read_questions(QUESTIONS)
    records = records_of(ws)
    turns = sum(len(q.turns) for q in questions)
    assert posts == len(records) == len(models) * turns  # each request reached the server, each reply is recorded
    assert {(r["model"], r["question_id"], r["turn"]) for r in records} == {
        (m, q.question_id, t + 1) for m in models for q in questions for t in range(len(q.turns))}
    assert all(r["kind"] == "single" and r["judge"] == str(server.judges["noisy"]) for r in records)

    # the recorded reply is the server's: the same request, sent again by hand, gets the same greedy reply
    from openai import OpenAI

    client = OpenAI(base_url=server.url, api_key="unused")
    by_q = {q.question_id: q for q in questions}
    answers = defaultdict(dict)
    for r in records:
        answers[(r["model"], r["question_id"])][r["turn"]] = r["answer"]
    for r in (records[0], records[-1]):
        conversation = answers[(r["model"], r["question_id"])]
        messages = single_messages(by_q[r["question_id"]], [conversation[t] for t in sorted(conversation)],
                                   r["turn"] - 1)
        again = client.chat.completions.create(model=str(server.judges["noisy"]), messages=messages,
                                               temperature=0.0, max_tokens=12)
        assert again.choices[0].message.content == r["reply"]


def test_ratings_parse_missing_ones_are_counted_and_left_out(judged, ws):
    records = records_of(ws)
    assert all(r["rating"] == parse_rating(r["reply"]) for r in records)
    missing = sum(r["rating"] is None for r in records)
    assert missing > 0  # the random judge's replies hold no rating
    metrics = json.loads((ws / "eval/metrics.json").read_text())
    expected = recompute(records)
    assert {m: block for m, block in metrics["judge"].items() if m != "merged"} == expected
    assert metrics["judge"]["merged"] == metrics["judge"]["merged:sce"]  # the alias, as for native scores
    assert sum(b["overall"]["missing"] for m, b in metrics["judge"].items() if m != "merged") == missing
    for scores in expected.values():  # no missing rating counted as 0
        for s in scores.values():
            assert s["score"] is None or s["score"] >= 1


def test_the_judge_block_sits_beside_the_native_scores(judged, ws):
    metrics = json.loads((ws / "eval/metrics.json").read_text())
    assert {"pivot", "sft_baseline", "merged", "merged:sce"} <= set(metrics["models"])
    assert all({"em", "ce"} <= set(domain) for domain in metrics["models"]["pivot"].values())
    assert set(metrics["judge"]["pivot"]) == {q.category for q in read_questions(QUESTIONS)} | {"overall"}
    report = (ws / "eval/report.md").read_text()
    assert "## LLM judge: mean rating 1-10" in report
    assert "| model | knowledge | math | writing | overall | missing |" in report


def test_the_key_is_never_written(judged, ws):
    proc = judged[0]
    assert KEY not in proc.stdout + proc.stderr
    for path in ws.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_a_second_judge_regrades_without_regenerating_and_pairwise_cancels_position_bias(judged, ws, server):
    answers_before = {(r["model"], r["question_id"], r["turn"]): r["answer"] for r in records_of(ws)}
    cache = ws / ".fusecli/cache/judge-answers"
    cached = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    before = server.posts()
    models = judged[2]
    stamp = str(server.judges["stamp"])
    proc = evaluate(ws, {"base_url": server.url, "model": stamp, "api_key_env": None, "models": models,
                         "pairwise": "sft_baseline", "context": CONTEXT, "tokenizer": stamp})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == cached  # sft_baseline: the pivot's files
    records = records_of(ws)
    singles = [r for r in records if r["kind"] == "single"]
    pairs = [r for r in records if r["kind"] == "pairwise"]
    turns = sum(len(q.turns) for q in read_questions(QUESTIONS))
    assert server.posts() - before == len(records) == len(models) * turns * 3  # 1-10, then both orders
    assert {(r["model"], r["question_id"], r["turn"]): r["answer"] for r in singles} == answers_before
    assert all(r["reply"] == "".join(STAMP) and r["rating"] == 7.0 for r in singles)
    assert all(r["verdict"] == parse_verdict(r["reply"]) == "A" for r in pairs)
    metrics = json.loads((ws / "eval/metrics.json").read_text())
    assert metrics["judge"] == {**recompute(singles), "merged": metrics["judge"]["merged:sce"]}
    assert metrics["judge"]["pivot"]["overall"] == {"score": 7.0, "graded": turns, "missing": 0}
    # "A" whichever model is shown first: inconsistent verdicts, so every pair is a tie
    assert set(metrics["judge_pairwise"]) == {*models, "merged"}
    for scores in metrics["judge_pairwise"].values():
        assert scores["overall"] == {"win_rate": 0.5, "wins": 0, "ties": turns, "losses": 0, "missing": 0}


def test_endpoint_and_key_errors_are_one_line(judged, ws, server):
    unchecked = {"base_url": server.url, "api_key_env": None, "pairwise": None, "context": None, "tokenizer": None}
    unknown = evaluate(ws, {**unchecked, "model": str(ws / "no-such-judge")})
    unset = evaluate(ws, {**unchecked, "model": str(server.judges["stamp"]), "api_key_env": KEY_VAR}, {KEY_VAR: ""})
    short = str(server.judges["short"])
    before = server.log.read_text(errors="replace").count("POST /v1/chat/completions")
    too_long = evaluate(ws, {**unchecked, "model": short, "context": 256, "tokenizer": short})
    assert server.log.read_text(errors="replace").count("POST /v1/chat/completions") == before  # nothing sent
    refused = evaluate(ws, {**unchecked, "model": short})  # not checked: the server's 400, with its reason
    for proc, words in ((unknown, f"refused the request for model '{ws / 'no-such-judge'}'"),
                        (unset, f"evaluate.judge.api_key_env names {KEY_VAR}, which is not set"),
                        (too_long, "judge prompts do not fit the judge's context: the longest (model "),
                        (too_long, "over evaluate.judge.context = 256: serve a judge with a longer context"),
                        (refused, "(HTTP 400: The prompt has "),
                        (refused, "tokens, but the model takes at most 256")):
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert words in errors[0], errors[0]


def test_a_prompt_is_counted_as_the_server_counts_it(server):
    """prompt_tokens against `transformers serve`'s own count, which its 400 for a prompt past the context
    states."""
    short = server.judges["short"]
    question = read_questions(QUESTIONS)[-1]  # the one with a reference: the longest prompt
    messages = single_messages(question, ["An answer of a few words."] * len(question.turns), 1)
    body = json.dumps({"model": str(short), "messages": messages, "max_tokens": 4, "temperature": 0.0}).encode()
    request = urllib.request.Request(f"{server.url}/chat/completions", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    detail = refused.value.read().decode()
    counted = re.search(r"The prompt has (\d+) tokens", detail)
    assert refused.value.code == 400 and counted, detail
    assert prompt_tokens(load_tokenizer(short), messages) == int(counted.group(1)) > 256

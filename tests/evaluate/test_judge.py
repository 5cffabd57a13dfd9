"""The judge backend's parts: question files, prompts, rating and verdict parsing, aggregation, settings,
answers (multi-turn, own template, cached) and the endpoint's errors. End to end: test_judge_e2e.py."""

import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

import fusecli.evaluate.judge.answers as answers_module
from fusecli.data.render import prompt_text
from fusecli.errors import FusecliError
from fusecli.evaluate.judge.aggregate import outcome, pairwise_scores, single_scores
from fusecli.evaluate.judge.answers import all_answers, answer_questions
from fusecli.evaluate.judge.backend import plan_judge
from fusecli.evaluate.judge.client import NO_KEY, Judge, api_key
from fusecli.evaluate.judge.context import check_context, prompt_tokens
from fusecli.evaluate.judge.grade import pair_requests, parse_rating, parse_verdict, single_requests
from fusecli.evaluate.judge.prompts import pair_messages, single_messages
from fusecli.evaluate.judge.questions import Question, read_questions
from fusecli.evaluate.params import EvalParams
from fusecli.evaluate.run import EvalModel
from fusecli.models import load_model, load_tokenizer
from tests.params import section
from tests.tiny import write_model

BASE = section(EvalParams, "evaluate", batch_size=4, device="cpu", dtype="float32")
PARAMS = replace(BASE, backend="judge", judge=replace(BASE.judge, max_new_tokens=5))
MATH = Question(4, "math", ("What is 2 + 2?", "And times 3?"), ("4", "12"))
WRITING = Question("w1", "writing", ("Write a haiku.", "Make it sadder."), None)


def judge_params(**changes):
    return replace(PARAMS.judge, **changes)


# --- question files -------------------------------------------------------------------------------------------

def test_the_shipped_demo_question_file_is_mt_bench_shaped():
    questions = read_questions(PARAMS.judge.questions)
    assert len(questions) >= 3 and all(len(q.turns) == 2 for q in questions)
    assert len({q.category for q in questions}) >= 2
    assert any(q.reference and len(q.reference) == len(q.turns) for q in questions)


@pytest.mark.parametrize(("line", "words"), [
    ("{not json", "line 2: Expecting property name"),
    ('{"question_id": 2, "category": "math"}', "line 2: turns is missing"),
    ('{"question_id": 2, "category": "math", "turns": []}', "line 2: turns must be a non-empty list"),
    ('{"question_id": 2, "category": "math", "turns": ["a", ""]}', "line 2: turns must be a non-empty list"),
    ('{"question_id": 2, "category": "math", "turns": ["a"], "reference": "x"}', "line 2: reference must be a list"),
    ('{"question_id": 2, "category": "math", "turns": ["a", "b"], "reference": ["x"]}',
     "line 2: reference has 1 entries, turns has 2"),
    ('{"question_id": 1, "category": "math", "turns": ["a"]}', "line 2: question_id 1 repeats an earlier line"),
    ('{"question_id": "1", "category": "math", "turns": ["a"]}', "line 2: question_id '1' repeats an earlier line"),
    ('{"question_id": 2, "category": "overall", "turns": ["a"]}', "line 2: category must be a non-empty string"),
    ('{"question_id": true, "category": "math", "turns": ["a"]}', "line 2: question_id must be a number"),
    ("[1, 2]", "line 2: not a JSON object"),
])
def test_a_malformed_question_line_is_named(tmp_path, line, words):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "category": "math", "turns": ["a"], "extra": "ignored"}\n' + line + "\n")
    with pytest.raises(FusecliError, match=f"q.jsonl {words}") as err:
        read_questions(path)
    assert "fix the line" in str(err.value)


def test_missing_and_empty_question_files(tmp_path):
    with pytest.raises(FusecliError, match="nope.jsonl not found: set evaluate.judge.questions"):
        read_questions(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(FusecliError, match="empty.jsonl holds no question"):
        read_questions(tmp_path / "empty.jsonl")


# --- parsing --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("reply", "rating"), [
    ("The answer is right. Rating: [[7]]", 7.0),
    ("Mostly right. [[7.5]]", 7.5),
    ("Rating: [7]", 7.0),  # MT-Bench's fallback
    ("[[3]] at first, then [[9]]", 3.0),  # the first one counts
    ("a list [2] then [[8]]", 8.0),  # the double-bracket form wins over an earlier single one
    ("Rating: 11", None),
    ("Rating: [[11]]", None),  # out of 1..10: missing, not clipped
    ("Rating: [[0]]", None),
    ("Rating: [[10]]", 10.0),
    ("I cannot rate this.", None),
    ("", None),
])
def test_parse_rating(reply, rating):
    assert parse_rating(reply) == rating


@pytest.mark.parametrize(("reply", "verdict"), [
    ("A is better: [[A]]", "A"), ("[[B]]", "B"), ("Equal. [[C]]", "tie"), ("A is better", None), ("[A]", None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


# --- aggregation ----------------------------------------------------------------------------------------------

def single(model, category, rating, qid=0, turn=1):
    return {"kind": "single", "model": model, "category": category, "rating": rating, "question_id": qid, "turn": turn}


def test_single_scores_leave_missing_ratings_out_and_count_them():
    records = [single("m", "math", 8.0), single("m", "math", None, turn=2), single("m", "math", 6.0, qid=1),
               single("m", "writing", 3.0, qid=2), single("m", "writing", None, qid=2, turn=2),
               single("n", "writing", None)]
    scores = single_scores(records)
    assert scores["m"] == {"math": {"score": 7.0, "graded": 2, "missing": 1},
                           "writing": {"score": 3.0, "graded": 1, "missing": 1},
                           "overall": {"score": 17.0 / 3, "graded": 3, "missing": 2}}
    assert list(scores["m"]) == ["math", "writing", "overall"]
    assert scores["n"]["writing"] == scores["n"]["overall"] == {"score": None, "graded": 0, "missing": 1}


@pytest.mark.parametrize(("first", "second", "result"), [
    ("A", "B", "win"), ("B", "A", "loss"), ("tie", "tie", "tie"),
    ("A", "A", "tie"), ("B", "B", "tie"), ("A", "tie", "tie"), ("tie", "A", "tie"),  # inconsistent: a tie
    (None, "B", None), ("A", None, None),
])
def test_pairwise_outcome_cancels_position_bias(first, second, result):
    assert outcome(first, second) == result


def pair(model, category, qid, model_is, verdict, turn=1):
    return {"kind": "pairwise", "model": model, "against": "ref", "category": category, "question_id": qid,
            "turn": turn, "model_is": model_is, "verdict": verdict}


def test_pairwise_scores_per_category():
    records = [*(pair("m", "math", 1, s, v) for s, v in (("A", "A"), ("B", "B"))),  # win
               *(pair("m", "math", 2, s, v) for s, v in (("A", "A"), ("B", "A"))),  # A both times: tie
               *(pair("m", "math", 3, s, v) for s, v in (("A", "B"), ("B", "A"))),  # loss
               *(pair("m", "writing", 4, s, v) for s, v in (("A", "A"), ("B", None))),  # missing
               *(pair("m", "writing", 4, s, v, turn=2) for s, v in (("A", "A"), ("B", "B"))),  # win
               single("m", "math", 9.0)]
    scores = pairwise_scores(records)["m"]
    assert scores["math"] == {"win_rate": 0.5, "wins": 1, "ties": 1, "losses": 1, "missing": 0}
    assert scores["writing"] == {"win_rate": 1.0, "wins": 1, "ties": 0, "losses": 0, "missing": 1}
    assert scores["overall"] == {"win_rate": 2.5 / 4, "wins": 2, "ties": 1, "losses": 1, "missing": 1}


# --- prompts and requests -------------------------------------------------------------------------------------

def test_single_prompt_shows_the_conversation_up_to_the_turn_and_the_reference():
    first = single_messages(MATH, ["four", "twelve"], 0)
    assert "[[rating]]" in first[0]["content"] and "reference" in first[0]["content"]
    assert "What is 2 + 2?" in first[1]["content"] and "four" in first[1]["content"]
    assert "twelve" not in first[1]["content"] and "And times 3?" not in first[1]["content"]
    second = single_messages(MATH, ["four", "twelve"], 1)
    assert "last question" in second[0]["content"]
    assert all(s in second[1]["content"] for s in ("four", "twelve", "And times 3?", "12"))
    plain = single_messages(WRITING, ["a", "b"], 0)
    assert "reference" not in plain[0]["content"].lower() and "[Reference]" not in plain[1]["content"]


def test_an_empty_reference_means_none_for_that_turn(tmp_path):
    """The public MT-Bench file has lines like question 103's: a reference for turn 1 only, "" for turn 2."""
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": 103, "category": "reasoning", "turns": ["Why?", "Why not?"],
                                "reference": ["", "Because."]}) + "\n")
    (q,) = read_questions(path)
    assert q.reference == ("", "Because.")
    first, second = single_messages(q, ["x", "y"], 0), single_messages(q, ["x", "y"], 1)
    assert "reference" not in first[0]["content"] and "[Reference]" not in first[1]["content"]
    assert "reference answer is given" in second[0]["content"]
    assert "Reference answer to question 2:\nBecause." in second[1]["content"]
    assert "question 1:" not in second[1]["content"]


def test_requests_one_per_turn_and_both_orders_for_pairs():
    answers = {"m": {"4": ["m1", "m2"], "w1": ["m3", "m4"]}, "ref": {"4": ["r1", "r2"], "w1": ["r3", "r4"]}}
    singles = single_requests([MATH, WRITING], answers)
    assert [(r.record["model"], r.record["question_id"], r.record["turn"], r.record["answer"]) for r in singles] == [
        ("m", 4, 1, "m1"), ("m", 4, 2, "m2"), ("m", "w1", 1, "m3"), ("m", "w1", 2, "m4"),
        ("ref", 4, 1, "r1"), ("ref", 4, 2, "r2"), ("ref", "w1", 1, "r3"), ("ref", "w1", 2, "r4")]
    pairs = pair_requests([MATH], answers, "ref")
    assert [(r.record["model"], r.record["turn"], r.record["model_is"]) for r in pairs] == [
        ("m", 1, "A"), ("m", 1, "B"), ("m", 2, "A"), ("m", 2, "B")]
    assert pairs[0].messages == pair_messages(MATH, ["m1", "m2"], ["r1", "r2"], 0)
    assert pairs[1].messages == pair_messages(MATH, ["r1", "r2"], ["m1", "m2"], 0)
    assert pairs[1].record["answer_a"] == "r1" and pairs[1].record["answer_b"] == "m1"


# --- settings -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "words"), [
    ({"base_url": "localhost:8000/v1"}, "base_url = 'localhost:8000/v1' must start with http"),
    ({"model": " "}, "evaluate.judge.model is empty"),
    ({"models": ()}, "evaluate.judge.models is empty"),
    ({"concurrency": 0}, "concurrency must be >= 1"),
    ({"timeout": 0.0}, "timeout > 0"),
    ({"temperature": -1.0}, "temperature must be >= 0"),
    ({"context": 4096}, "evaluate.judge.context and evaluate.judge.tokenizer go together"),
    ({"tokenizer": "judge-tokenizer"}, "evaluate.judge.context and evaluate.judge.tokenizer go together"),
    ({"context": 64, "max_tokens": 64, "tokenizer": "t"}, "context = 64 leaves no room for a prompt"),
])
def test_bad_judge_settings(changes, words):
    with pytest.raises(FusecliError, match=words):
        judge_params(**changes).validate()


def test_a_key_given_instead_of_its_variable_name_is_refused_without_echoing_it():
    with pytest.raises(FusecliError, match="not a variable name") as err:
        judge_params(api_key_env="sk-proj-abc123").validate()
    assert "sk-proj-abc123" not in str(err.value)


def test_the_key_comes_from_the_named_variable(monkeypatch):
    monkeypatch.delenv("FUSECLI_JUDGE_KEY", raising=False)
    assert api_key(None) == NO_KEY
    with pytest.raises(FusecliError, match="api_key_env names FUSECLI_JUDGE_KEY, which is not set: export"):
        api_key("FUSECLI_JUDGE_KEY")
    monkeypatch.setenv("FUSECLI_JUDGE_KEY", "secret")
    assert api_key("FUSECLI_JUDGE_KEY") == "secret"


def test_plan_checks_names_before_any_work(tmp_path):
    by_name = {n: EvalModel(n, str(tmp_path)) for n in ("pivot", "sft_baseline", "merged:sce", "merged")}
    aliases = {"merged": "merged:sce"}
    plan = plan_judge(PARAMS, by_name, aliases)
    assert [m.name for m in plan.graded] == ["pivot", "sft_baseline", "merged:sce"]  # the alias is not regraded
    for changes, words in (({"models": ("pivot", "fused:x")}, "evaluate.judge.models names 'fused:x'"),
                           ({"pairwise": "nope"}, "evaluate.judge.pairwise names 'nope'"),
                           ({"models": ("pivot",), "pairwise": "pivot"}, "leaves no other model"),
                           ({"questions": str(tmp_path / "q.jsonl")}, "q.jsonl not found"),
                           ({"context": 4096, "tokenizer": str(tmp_path / "tok")},
                            r"evaluate.judge.tokenizer: tokenizer folder \S+tok not found")):
        with pytest.raises(FusecliError, match=words):
            plan_judge(replace(PARAMS, judge=judge_params(**changes)), by_name, aliases)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("body", "shown"), [
    ({"detail": "The prompt has 945 tokens, but the model takes at most 256"},  # transformers serve (FastAPI)
     "(HTTP 400: The prompt has 945 tokens, but the model takes at most 256)"),
    ({"error": {"message": "This model's maximum context length is 4096 tokens.", "type": "BadRequestError"}},
     "(HTTP 400: This model's maximum context length is 4096 tokens.)"),  # OpenAI, vLLM
    ("bad\nrequest sk-stub-key", "(HTTP 400: bad request ***)"),  # plain text, on one line, the key scrubbed
    ("", "(HTTP 400: Error code: 400)"),  # no body: the client's message
])
def test_a_refused_request_shows_the_endpoints_reason(body, shown, monkeypatch):
    """The body of a 400, which the openai client keeps out of its exception's message."""
    payload = (body if isinstance(body, str) else json.dumps(body)).encode()

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(400)
            self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    monkeypatch.setenv("FUSECLI_STUB_KEY", "sk-stub-key")
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse) as stub:
        threading.Thread(target=stub.serve_forever, daemon=True).start()
        try:
            judge = Judge(judge_params(base_url=f"http://127.0.0.1:{stub.server_address[1]}/v1", retries=0,
                                       api_key_env="FUSECLI_STUB_KEY"))
            with pytest.raises(FusecliError) as err:
                judge.reply([{"role": "user", "content": "hi"}])
        finally:
            stub.shutdown()
    assert str(err.value) == (f"the judge at {judge.params.base_url} refused the request for model "
                              f"{judge.params.model!r} {shown}: check evaluate.judge")


def test_an_unreachable_endpoint_is_one_clear_error():
    judge = Judge(judge_params(base_url=f"http://127.0.0.1:{free_port()}/v1", retries=0, timeout=5.0))
    with pytest.raises(FusecliError, match=r"cannot reach the judge at http://127.0.0.1:\d+/v1: start the server"):
        judge.reply([{"role": "user", "content": "hi"}])


# --- answers --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def answerer(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("answerer") / "m", "qwen2", 300, seed=4)


def test_turn_two_sees_the_models_own_turn_one_answer(answerer):
    answers = answer_questions(EvalModel("m", str(answerer)), [MATH, WRITING], PARAMS)
    tok = load_tokenizer(answerer)
    model = load_model(answerer, torch.device("cpu"), torch.float32).eval()

    def greedy(messages):  # one conversation at a time, no batching: the plain reference
        prompt = prompt_text(tok, [*messages, {"role": "assistant", "content": ""}])
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(ids, max_new_tokens=PARAMS.judge.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    for q in (MATH, WRITING):
        first = greedy([{"role": "user", "content": q.turns[0]}])
        second = greedy([{"role": "user", "content": q.turns[0]}, {"role": "assistant", "content": first},
                         {"role": "user", "content": q.turns[1]}])
        assert answers[str(q.question_id)] == [first, second]


def test_a_prompt_past_the_judges_context_stops_before_any_request(answerer):
    """The longest prompt and the reply's max_tokens must fit evaluate.judge.context, counted in the judge's
    chat template: one token more is one line naming the longest prompt and the fix."""
    tok = load_tokenizer(answerer)
    requests = single_requests([MATH, WRITING], {"m": {"4": ["four", "twelve"], "w1": ["A haiku.", "A sad one."]}})
    lengths = [prompt_tokens(tok, r.messages) for r in requests]
    rendered = tok.apply_chat_template(requests[1].messages, add_generation_prompt=True, tokenize=False)
    assert lengths[1] == len(tok(rendered, add_special_tokens=False)["input_ids"])  # the template's tokens, all
    assert max(lengths) == lengths[1]  # MATH's turn 2: two turns and the reference
    fits = judge_params(max_tokens=10, context=lengths[1] + 10, tokenizer=str(answerer))
    check_context(requests, tok, fits)
    with pytest.raises(FusecliError) as err:
        check_context(requests, tok, replace(fits, context=lengths[1] + 9))
    assert str(err.value) == (
        f"1 of 4 judge prompts do not fit the judge's context: the longest (model 'm', question 4, turn 2) has "
        f"{lengths[1]} tokens, plus evaluate.judge.max_tokens = 10 for the reply, over evaluate.judge.context = "
        f"{lengths[1] + 9}: serve a judge with a longer context and raise evaluate.judge.context, or lower "
        "evaluate.judge.max_new_tokens (shorter answers) or max_tokens")
    pairs = pair_requests([MATH], {"m": {"4": ["four", "twelve"]}, "ref": {"4": ["4", "12"]}}, "ref")
    with pytest.raises(FusecliError, match=r"^4 of 4 judge prompts .* \(model 'm', question 4, turn 2, against "):
        check_context(pairs, tok, replace(fits, context=11))
    check_context(pairs, None, replace(fits, context=None, tokenizer=None))  # context unknown: not checked


def test_a_tokenizer_without_a_chat_template_counts_the_messages_alone(answerer):
    tok = load_tokenizer(answerer)
    messages = single_messages(MATH, ["four", "twelve"], 1)
    plain = sum(len(tok(m["content"], add_special_tokens=False)["input_ids"]) for m in messages)
    assert plain < prompt_tokens(tok, messages)
    tok.chat_template = None
    assert prompt_tokens(tok, messages) == plain  # fewer than any template adds: never refused wrongly


def test_answers_are_cached_by_model_questions_and_settings(answerer, tmp_path, monkeypatch):
    questions_file = tmp_path / "q.jsonl"
    questions_file.write_text(json.dumps({"question_id": 1, "category": "c", "turns": ["Hi", "Bye"]}) + "\n")
    params = replace(PARAMS, judge=judge_params(questions=str(questions_file)))
    calls = []
    real = answers_module.answer_questions
    monkeypatch.setattr(answers_module, "answer_questions", lambda m, q, p: calls.append(m.name) or real(m, q, p))
    models = [EvalModel("a", str(answerer)), EvalModel("b", str(answerer))]
    first = all_answers(models, read_questions(questions_file), params, tmp_path / "cache" / "evaluate")
    assert calls == ["a"] and first["a"] == first["b"]  # the same folder's content: answered once
    assert all_answers(models, read_questions(questions_file), params, tmp_path / "cache" / "evaluate") == first
    assert calls == ["a"]
    longer = replace(params, judge=replace(params.judge, max_new_tokens=6))
    all_answers(models, read_questions(questions_file), longer, tmp_path / "cache" / "evaluate")
    questions_file.write_text(json.dumps({"question_id": 1, "category": "c", "turns": ["Hey", "Bye"]}) + "\n")
    all_answers(models, read_questions(questions_file), params, tmp_path / "cache" / "evaluate")
    assert calls == ["a", "a", "a"]  # new settings, then a new question file: answered again
    assert len(list((tmp_path / "cache" / "judge-answers").iterdir())) == 3


def test_report_tables_show_scores_and_missing_counts():
    from fusecli.evaluate.tables import report_markdown

    records = [single("m", "math", 8.0), single("m", "math", None, turn=2), single("m", "writing", 5.0, qid=2),
               *(pair("m", "math", 1, s, v) for s, v in (("A", "A"), ("B", "B")))]
    report = report_markdown({"models": {"m": {"d": {"em": 1.0, "ce": 0.5}}}, "judge": single_scores(records),
                              "judge_pairwise": pairwise_scores(records)})
    assert "| m | 8.000 | 5.000 | 6.500 | 1 of 3 |" in report
    assert "| m | 1.000 | 1.000 | 0 of 1 |" in report


@pytest.mark.slow
def test_editing_the_question_file_reruns_evaluate(tmp_path):
    """dvc.yaml's evaluate stage depends on `${evaluate.judge.questions}`, wherever the file lies."""
    root = Path(__file__).resolve().parents[2]
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("dvc.yaml", "models.lock"):
        shutil.copy(root / name, ws / name)
    for name in ("stages", "fusecli"):
        shutil.copytree(root / name, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["judge"]["questions"] = "mt_bench/question.jsonl"
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (ws / "mt_bench").mkdir()
    (ws / "mt_bench/question.jsonl").write_text(json.dumps({"question_id": 1, "category": "c", "turns": ["Hi"]}) + "\n")
    for folder in ("baseline/sft", "fused", "fused_all", "imf/sft", "imf/dpo", "merged", "data", "eval"):
        (ws / folder).mkdir(parents=True)
        (ws / folder / "x").write_text("stand-in")
    stage = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["evaluate"]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", []) + stage.get("metrics", [])]
    for out in ["data/eval.parquet", *outs]:  # the stage's outputs as dvc.yaml lists them
        (ws / out).write_text("{}")
    dvc = [str(Path(sys.executable).parent / "dvc")]

    def run(*args: str) -> str:
        proc = subprocess.run(dvc + list(args), cwd=ws, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    run("init", "--no-scm", "-q")
    run("commit", "-f", "evaluate")  # record the stage as run, without running it
    assert "up to date" in run("status", "evaluate")
    with (ws / "mt_bench/question.jsonl").open("a") as f:
        f.write(json.dumps({"question_id": 2, "category": "c", "turns": ["Bye"]}) + "\n")
    status = run("status", "evaluate")
    assert "modified:" in status and "mt_bench/question.jsonl" in status


def test_judge_settings_do_not_rescore_native_scores():
    from fusecli.evaluate.stage import native_settings

    other = replace(PARAMS, backend="native", judge=judge_params(model="another", max_new_tokens=9))
    assert native_settings(other) == native_settings(PARAMS)

"""render() and tokenize() (fusecli/data/render.py): each model's own chat template, the assistant spans,
and where each turn's stripped content lies in them (`Rendered.content`, `turns`): the text every model
shares, through which the align stage pairs positions."""

import copy

import numpy as np
import pytest

from fusecli.data.render import render, tokenize
from fusecli.demo.tokenizers import CHAT_TEMPLATE, train_tokenizer
from fusecli.errors import FusecliError
from tests.tiny import TEXTS

GEMMA = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}"
    "\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# No generation prompt: the assistant header is inside the assistant span (older community templates).
VICUNA = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% else %}ASSISTANT: {{ m['content'] }}</s>{% endif %}{% endfor %}"
)
UPPER = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DIALOGUE = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "  Madrid, of course.\n"},
]


@pytest.fixture(scope="module")
def base():
    return train_tokenizer(TEXTS * 4, 300)


def with_template(tok, template: str):
    tok = copy.deepcopy(tok)
    tok.chat_template = template
    return tok


def contents(rendered) -> list[str]:
    return [rendered.text[a:b] for a, b in rendered.content]


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, GEMMA, VICUNA])
def test_content_spans_hold_the_stripped_messages(base, template):
    r = render(with_template(base, template), DIALOGUE)
    assert contents(r) == ["Paris", "Madrid, of course."]
    turns = r.turns
    assert turns.dtype == np.int32 and turns.shape == (2, 4)
    for (a, c, d, b), (span_a, span_b) in zip(turns.tolist(), r.spans, strict=True):
        assert (a, b) == (span_a, span_b) and a <= c <= d <= b


def test_chatml_turns(base):
    r = render(base, DIALOGUE)
    first = r.text.index("Paris")
    assert r.turns[0].tolist() == [first, first, first + 5, first + len("Paris<|im_end|>\n")]
    assert r.text[r.turns[0, 2] : r.turns[0, 3]] == "<|im_end|>\n"  # the end of turn is in the span, not content


def test_a_template_that_rewrites_the_content_has_no_content_span(base):
    r = render(with_template(base, UPPER), DIALOGUE)
    assert r.content == ((-1, -1), (-1, -1)) and r.turns[:, 1:3].tolist() == [[-1, -1], [-1, -1]]


def test_tokenize_keeps_the_turns(base):
    tok = with_template(base, GEMMA)
    r = render(tok, DIALOGUE)
    t = tokenize(tok, r, max_length=12)  # truncation cuts tokens, not turns
    np.testing.assert_array_equal(t.turns, r.turns)


def test_each_template_renders_its_own_markup(base):
    chatml, gemma = render(base, DIALOGUE), render(with_template(base, GEMMA), DIALOGUE)
    assert "<|im_start|>" in chatml.text and "<|im_start|>" not in gemma.text and "<start_of_turn>" in gemma.text
    assert contents(chatml) == contents(gemma)


@pytest.mark.parametrize("answer", ["A", "S", "ASS"])
def test_content_found_in_the_markup_of_the_span_is_not_the_content(base, answer):
    """A template with no generation prompt puts the assistant header inside the span: an answer that also
    occurs in the header (`A` in `ASSISTANT:`, a multiple-choice answer) was located in the header, so the
    align stage paired the pivot's first answer row with the source's row before `ASSISTANT`. The content is
    searched from where the template writes it (a rendering with a sentinel content)."""
    tok = with_template(base, VICUNA)
    r = render(tok, [{"role": "user", "content": "Which one?"}, {"role": "assistant", "content": answer}])
    (a, b), (c, d) = r.spans[0], r.content[0]
    assert r.text[a:b] == f"ASSISTANT: {answer}</s>"
    assert (c - a, d - a) == (11, 11 + len(answer))


def test_no_assistant_turn_is_an_error(base):
    with pytest.raises(FusecliError, match="no assistant turn"):
        render(base, [{"role": "user", "content": "hi"}])


def test_tokenize_counts_the_response_tokens_it_cuts(base):
    tok = with_template(base, GEMMA)
    r = render(tok, DIALOGUE)
    full = tokenize(tok, r)
    assert full.cut == 0
    for n in (5, 12, len(full.input_ids) - 1):
        t = tokenize(tok, r, max_length=n)
        assert t.cut == int(full.label_mask[n:].sum()) > 0  # the response tokens past n, the last reply's end
        assert int(t.label_mask.sum()) + t.cut == int(full.label_mask.sum())

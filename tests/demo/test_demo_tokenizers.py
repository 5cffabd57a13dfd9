import pytest
from transformers import AutoTokenizer, LlamaConfig, Qwen2Config

from fusecli.data.render import prompt_text, render, tokenize
from fusecli.demo.qa import world_facts
from fusecli.demo.tokenizers import IM_END, build_tokenizer

FACTS = world_facts(0, 3, 110)

TEXT = (
    "<|im_start|>user\nWhat is the capital of  Côte d'Ivoire? 2024\n\n<|im_end|>\n"
    "<|im_start|>assistant\nYamoussoukro<|im_end|>\n"
)
DIALOGUE = [
    {"role": "user", "content": "Which city is the capital of Burkina Faso?"},
    {"role": "assistant", "content": "Ouagadougou"},
]


@pytest.fixture(scope="module")
def tokenizers():
    return {
        "qwen2": build_tokenizer("language", 1024, "qwen2", FACTS),
        "llama": build_tokenizer("crop", 512, "gpt2", FACTS),
    }


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_round_trip_offline(tokenizers, tmp_path, arch):
    tok = tokenizers[arch]
    tok.save_pretrained(tmp_path)
    # transformers picks the tokenizer class from the model type (qwen2 -> Qwen2Tokenizer): save a config
    config = Qwen2Config if arch == "qwen2" else LlamaConfig
    config(vocab_size=len(tok)).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    a = tok(TEXT, add_special_tokens=False, return_offsets_mapping=True)
    b = loaded(TEXT, add_special_tokens=False, return_offsets_mapping=True)
    assert a["input_ids"] == b["input_ids"]
    assert a["offset_mapping"] == b["offset_mapping"]
    assert loaded.decode(b["input_ids"]) == TEXT
    assert loaded.eos_token == IM_END and loaded.pad_token_id == 0
    assert loaded.apply_chat_template(DIALOGUE, tokenize=False) == tok.apply_chat_template(DIALOGUE, tokenize=False)


def test_render_masks_exactly_the_answer(tokenizers):
    for tok in tokenizers.values():
        rendered = render(tok, DIALOGUE)
        assert rendered.text.startswith(prompt_text(tok, DIALOGUE))
        t = tokenize(tok, rendered)
        masked = tok.decode(t.input_ids[t.label_mask])
        assert masked == "Ouagadougou<|im_end|>\n"


def test_tokenizers_differ(tokenizers):
    qwen, llama = tokenizers["qwen2"], tokenizers["llama"]
    assert len(qwen) == 1024 and len(llama) == 512
    text = "Name a crop grown in Liechtenstein."
    assert qwen.tokenize(text) != llama.tokenize(text)
    shared = set(qwen.get_vocab()) & set(llama.get_vocab())
    assert any(qwen.convert_tokens_to_ids(s) != llama.convert_tokens_to_ids(s) for s in shared)


def test_tokenizer_training_is_deterministic(tokenizers):
    again = build_tokenizer("crop", 512, "gpt2", FACTS)
    assert again.get_vocab() == tokenizers["llama"].get_vocab()


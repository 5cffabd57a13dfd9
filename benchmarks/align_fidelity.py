"""Where the distribution maps send whole words, on real vocabularies (issue 23): ours against the paper's.

    .venv/bin/python -m benchmarks.align_fidelity --sequences 300

On real English (standard-library docstrings), tokenized by real pivot/source pairs from the `realvocab`
extra (GPT-2 byte-level BPE, Mistral 7B v0.1 SentencePiece, Mistral tekken 131K), for every occurrence of
a source token that is a whole word (`▁` + letters, no letter after it) where the pivot splits the same
word into several tokens, the reference answer is read off the text itself: the pivot token that starts
at the same character (the pivot's own first piece, in context). Each map is scored on those occurrences:
- `prefix` (align.dist_map: prefix, the default): the pivot's first piece by its tokenizer model;
- `paper/mined`, `paper/offsets` (align.dist_map: vocab_map, vocab_map: ms): exact match, else FuseChat's
  statistics map from the co-occurrences of the MinED or the offsets token alignment over the same text.
It also prints the share of all source-token occurrences whose map is prefix-consistent, and the time to
build each map for the whole vocabulary.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks._common import english_paragraphs, load_tokenizer, machine, markdown_table
from fusecli.align.fidelity import consistent_targets
from fusecli.align.pieces import prefix_map
from fusecli.align.tokens import MARKER, TokenTable, align_mined, align_offsets
from fusecli.align.vocab import Cooccurrence, direct_map, ms_map

PAIRS = [("gpt2", "mistral"), ("mistral", "gpt2"), ("mistral", "tekken"), ("tekken", "gpt2")]  # (pivot, source)


def encode(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return np.array(enc["input_ids"], dtype=np.int64), np.array(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)


def word_start(canon: str) -> bool:
    return canon.startswith(MARKER) and canon[1:].isalpha()


def split_words(texts: list[str], tok: dict, tab: dict) -> list[tuple[int, int]]:
    """(source id, the pivot's first piece in context) for each whole-word source token the pivot splits."""
    out = []
    for text in texts:
        (p_ids, p_off), (s_ids, s_off) = encode(tok["pivot"], text), encode(tok["source"], text)
        p_start = {int(a): j for j, (a, _) in enumerate(p_off.tolist())}
        p_end = p_off[:, 1]
        for s, (a, b) in zip(s_ids.tolist(), s_off.tolist(), strict=True):
            j = p_start.get(a)
            if a == 0 or j is None or not word_start(tab["source"].canon[s]) or (b < len(text) and text[b].isalpha()):
                continue  # not a whole word (or the text's first, where sentencepiece adds a `▁` the text lacks)
            if p_end[j] < b:  # the pivot's token at the same start ends earlier: it splits the word
                out.append((s, int(p_ids[j])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sequences", type=int, default=300)
    args = ap.parse_args()
    _, paragraphs = english_paragraphs()
    texts = paragraphs[: args.sequences]
    rows = []
    for pivot_name, source_name in PAIRS:
        tok = {"pivot": load_tokenizer(pivot_name), "source": load_tokenizer(source_name)}
        tab = {k: TokenTable.from_tokenizer(t) for k, t in tok.items()}
        maps, seconds = {}, {}
        t0 = time.perf_counter()
        maps["prefix"] = prefix_map(tab["source"], tab["pivot"], tok["pivot"])[0]
        seconds["prefix"] = time.perf_counter() - t0
        encoded = [(encode(tok["pivot"], t), encode(tok["source"], t)) for t in texts]
        for how in ("mined", "offsets"):
            cooc = Cooccurrence(tab["pivot"].size, tab["source"].size)
            t0 = time.perf_counter()
            for (p_ids, p_off), (s_ids, s_off) in encoded:
                if how == "mined":
                    al = align_mined(tab["source"], s_ids, tab["pivot"], p_ids)
                else:
                    al = align_offsets(p_off, s_off)
                cooc.add(p_ids[al.pivot_positions()], s_ids[al.src])
            maps[f"paper/{how}"] = direct_map(ms_map(cooc, tab["source"], tab["pivot"]), tab["source"], tab["pivot"])
            seconds[f"paper/{how}"] = time.perf_counter() - t0
        split = split_words(texts, tok, tab)
        seen = np.concatenate([s_ids for _, (s_ids, _) in encoded])
        for name, m in maps.items():
            first = np.mean([m[s] == p for s, p in split]) if split else float("nan")
            consistent = consistent_targets(m, tab["source"], tab["pivot"])[seen].mean()
            rows.append([f"{pivot_name} <- {source_name}", name, len(split), f"{first:.3f}", f"{consistent:.3f}",
                         f"{seconds[name]:.2f}"])
    header = ["pivot <- source", "map", "split whole words", "to the pivot's first piece", "prefix-consistent",
              "build s (paper: with the alignment)"]
    print(f"{machine()}; {len(texts)} sequences of real English")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()

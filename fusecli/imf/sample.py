"""sample@<slug>: `n` seeded responses per training prompt from one source, in its own chat template.

The prompt of a dialogue is every message before its last assistant turn (fusecli/data/render.py
`prompt_text`), rendered by the source's own template so no model reads another's markup. Generation is
batched shortest-first with left padding (transformers), or handed to vLLM where it is installed (GPU).
Each batch draws from a generator seeded with (seed, batch start): the same settings give the same text.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import torch

from fusecli.data.render import prompt_text
from fusecli.device import resolve_device, resolve_dtype
from fusecli.errors import FusecliError
from fusecli.imf.params import SampleParams
from fusecli.imf.tables import SAMPLES, write_table
from fusecli.models import load_model, load_tokenizer
from fusecli.progress import progress_bar


def prompts_of(data: str | Path) -> tuple[list[int], list[str], list[list[dict]]]:
    """(row index, row id, prompt messages) of every training row."""
    df = pl.read_parquet(data, columns=["id", "messages"])
    if df.height == 0:
        raise FusecliError(f"{data} holds no training rows: check the dataset section of params.yaml")
    rows, ids, prompts = [], [], []
    for i, (rid, text) in enumerate(df.iter_rows()):
        messages = json.loads(text)
        last = max((j for j, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            continue
        rows.append(i)
        ids.append(rid)
        prompts.append(messages[:last])
    return rows, ids, prompts


@torch.no_grad()
def sample_transformers(path: str, texts: list[str], p: SampleParams, trust_remote_code: bool) -> list[list[str]]:
    """`p.n` sampled replies per prompt text."""
    device = resolve_device(p.device, "imf.sample.device")
    tok = load_tokenizer(path, trust_remote_code)
    model = load_model(path, device, resolve_dtype(p.dtype, device), trust_remote_code).eval()
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: dict[int, list[str]] = {}
    with progress_bar("prompt") as progress:
        task = progress.add_task("sample", total=len(order))
        for s in range(0, len(order), p.batch_size):
            idx = order[s : s + p.batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            torch.manual_seed(p.seed * 1_000_003 + s)  # per batch: a changed batch leaves the others' draws alone
            gen = model.generate(**enc, do_sample=True, temperature=p.temperature, top_p=p.top_p, top_k=0,
                                 max_new_tokens=p.max_new_tokens, num_return_sequences=p.n,
                                 eos_token_id=tok.eos_token_id, pad_token_id=pad)
            replies = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for j, i in enumerate(idx):
                out[i] = [r.strip() for r in replies[j * p.n : (j + 1) * p.n]]
            progress.advance(task, len(idx))
    return [out[i] for i in range(len(texts))]


def sample_vllm(path: str, texts: list[str], p: SampleParams, trust_remote_code: bool) -> list[list[str]]:
    """The same with vLLM (continuous batching on GPU); the prompts go in as token ids, templates included."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise FusecliError("imf.sample.backend = vllm but vllm is not installed: pip install vllm, "
                           "or set imf.sample.backend: transformers") from None
    tok = load_tokenizer(path, trust_remote_code)
    dtype = "auto" if p.dtype == "auto" else p.dtype
    llm = LLM(model=path, seed=p.seed, dtype=dtype, trust_remote_code=trust_remote_code)
    settings = SamplingParams(n=p.n, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_new_tokens,
                              seed=p.seed)
    ids = [{"prompt_token_ids": tok(t, add_special_tokens=False)["input_ids"]} for t in texts]
    return [[c.text.strip() for c in r.outputs] for r in llm.generate(ids, settings)]


SAMPLERS = {"transformers": sample_transformers, "vllm": sample_vllm}


def sample(data: str | Path, source: str, path: str, out: str | Path, p: SampleParams,
           trust_remote_code: bool = False) -> dict:
    """Write `out` (parquet, tables.SAMPLES): `p.n` responses of `source` per training prompt."""
    rows, ids, prompts = prompts_of(data)
    tok = load_tokenizer(path, trust_remote_code)
    texts = [prompt_text(tok, m + [{"role": "assistant", "content": ""}]) for m in prompts]
    replies = SAMPLERS[p.backend](path, texts, p, trust_remote_code)
    records = [
        {"row": r, "id": rid, "source": source, "k": k, "prompt": json.dumps(m), "response": reply}
        for r, rid, m, rs in zip(rows, ids, prompts, replies, strict=True) for k, reply in enumerate(rs)
    ]
    df = pl.DataFrame(records, schema=SAMPLES)
    write_table(df, out)
    return {"prompts": len(rows), "responses": df.height, "empty": int((df["response"] == "").sum())}

"""Dilution (issue 24): what a source that teaches nothing does to the merged model.

In a copy of a finished workspace (`dvc repro` has run and nothing is stale), it writes a randomly initialised
model folder with its own byte-level BPE tokenizer (trained on the workspace's training dialogues) and chat
template, of an architecture of its own (GPT-NeoX by default), pins it with `fusecli add-source` as a user
would, and runs `dvc repro`: DVC runs the new source's extract, align and fuse, and reruns fuse_all, every
merge, evaluate and report. MinCE should almost never choose a random model, so its pair model is the pivot
teaching itself; a merge that keeps what the other pair models learned changes little. Per merged model
(`merged`, the default method, and each `merged:<method>`) it prints every domain's score before and after
and the largest drop; the acceptance of issue 24 is that no domain of `merged` drops by more than 3 points
(`--limit 0.03` of exact match; `--check` exits 1 when it does).

    python -m benchmarks.dilution --workspace /tmp/fusecli-quality-x/seed-0 --out dilution.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import markdown_table
from benchmarks.quality import read_scores, repro, run_logged
from fusecli.errors import FusecliError, fail_cleanly
from fusecli.fuse.selection import taught
from fusecli.io import atomic_write_json

HIGHER_IS_BETTER = {"em": True, "ce": False, "ppl": False}  # a drop is a change for the worse, in score units


def training_lines(workspace: Path, limit: int = 2000) -> list[str]:
    """The message texts of the workspace's training dialogues: what the random source's tokenizer learns."""
    import polars as pl

    path = workspace / "data" / "train.parquet"
    if not path.is_file():
        raise FusecliError(f"{path} is missing: pass --workspace a workspace where `dvc repro` has run")
    lines = []
    for raw in pl.read_parquet(path, columns=["messages"])["messages"].head(limit):
        lines += [m["content"] for m in json.loads(raw)]
    return lines


def write_random_model(out: Path, lines: list[str], arch: str, vocab_size: int, hidden_size: int, layers: int,
                       seed: int) -> Path:
    """A causal LM of `arch` with random weights (seeded) and a byte-level BPE tokenizer of its own trained
    on `lines`, with the ChatML template: a source that loads, renders and aligns like any other, but knows
    nothing."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fusecli.demo.tokenizers import train_tokenizer

    tok = train_tokenizer(lines, vocab_size)
    heads = max(1, hidden_size // 32)
    config = AutoConfig.for_model(arch, vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=layers,
                                  num_attention_heads=heads, num_key_value_heads=heads,
                                  intermediate_size=4 * hidden_size, max_position_embeddings=2048,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                  bos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def drops(before: dict[str, dict], after: dict[str, dict], score: str) -> dict[str, dict[str, Any]]:
    """Per merged model present in both runs: {domain: {before, after, drop}} and the largest drop with its
    domain (drop > 0: worse after; for em, before - after; for ce, after - before)."""
    sign = 1.0 if HIGHER_IS_BETTER.get(score, True) else -1.0
    out = {}
    for model in sorted(m for m in before if m == "merged" or m.startswith("merged:")):
        if model not in after:
            continue
        per = {}
        for domain, values in before[model].items():
            b, a = values.get(score), after[model].get(domain, {}).get(score)
            if domain != "mean" and isinstance(b, int | float) and isinstance(a, int | float):
                per[domain] = {"before": b, "after": a, "drop": sign * (b - a)}
        if per:
            worst = max(per, key=lambda d: per[d]["drop"])
            out[model] = {"domains": per, "max_drop": per[worst]["drop"], "worst": worst}
    return out


def what_it_taught(workspace: Path, slug: str) -> dict[str, float | None]:
    """The random source's share of the sequences of its pair run and of fuse_all (fusecli/fuse/selection.py)."""
    out: dict[str, float | None] = {}
    logs = workspace / "logs"
    for run, path in ((f"fuse@{slug}", logs / "fuse" / slug), ("fuse_all", logs / "fuse_all")):
        try:
            selection = json.loads((path / "selection.json").read_text())
        except (OSError, ValueError):
            out[run] = None
            continue
        if run == "fuse_all" and slug not in (selection.get("teacher_share") or {}):
            out[run] = None  # taught() would read a single-source file's source_share: not this source's
            continue
        out[run] = next((t.share for t in taught(selection, [slug])), None)
    return out


def check_finished(workspace: Path, log: Path) -> None:
    """The workspace must be up to date, or `dvc repro` after add-source would rerun more than the new source."""
    if not (workspace / "eval" / "metrics.json").is_file():
        raise FusecliError(f"{workspace} has no eval/metrics.json: run `dvc repro` there first")
    try:
        run_logged([sys.executable, "-m", "dvc", "status", "--quiet"], workspace, log, "dvc status")
    except FusecliError:
        raise FusecliError(f"{workspace} is not up to date (`dvc status` lists changes): run `dvc repro` there "
                           "first, so the before scores are the workspace's") from None


def report_lines(result: dict[str, dict], score: str, limit: float) -> list[str]:
    """Per merged model: its domains' scores before and after (the change as after - before), the verdict."""
    lines = []
    for model, r in result.items():
        rows = [[d, f"{v['before']:.3f}", f"{v['after']:.3f}", f"{v['after'] - v['before']:+.3f}"]
                for d, v in r["domains"].items()]
        lines += [f"{model} ({score}):", markdown_table(["domain", "before", "after", "change"], rows),
                  f"{model}: largest drop {r['max_drop']:+.3f} ({r['worst']}); issue 24's bar (<= {limit:g}): "
                  + ("met" if r["max_drop"] <= limit else "NOT met"), ""]
    return lines


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True, help="a finished workspace (copied, never changed)")
    ap.add_argument("--workdir", type=Path, help="where the copy goes (default: a temp folder)")
    ap.add_argument("--name", default="random", help="the random source's slug")
    ap.add_argument("--arch", default="gpt_neox", help="its transformers model type (one no other model has)")
    ap.add_argument("--vocab-size", type=int, default=640, help="its tokenizer's vocabulary")
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="its weights' seed")
    ap.add_argument("--score", default="em", help="the score compared (em, ce, ppl)")
    ap.add_argument("--limit", type=float, default=0.03, help="the largest acceptable drop (0.03: 3 points of em)")
    ap.add_argument("--check", action="store_true", help="exit 1 when `merged` drops by more than --limit")
    ap.add_argument("--out", type=Path, default=Path("dilution.json"), help="before/after scores and drops")
    args = ap.parse_args(argv)
    source = args.workspace.resolve()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="fusecli-dilution-"))).resolve()
    ws = workdir / "workspace"
    if ws.exists():
        raise FusecliError(f"{ws} exists: pass another --workdir or remove it")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "dilution.log"
    started = time.time()
    check_finished(source, log)
    before = read_scores(source)
    print(f"copying {source} to {ws}", file=sys.stderr)
    shutil.copytree(source, ws, symlinks=True)
    folder = ws / "models" / args.name
    if folder.exists():
        raise FusecliError(f"{folder} exists in the workspace: pass another --name")
    write_random_model(folder, training_lines(ws), args.arch, args.vocab_size, args.hidden_size, args.layers,
                       args.seed)
    run_logged(["fusecli", "add-source", str(folder), "--name", args.name], ws, log, "fusecli add-source")
    print(f"dvc repro with source {args.name} added (log: {log})", file=sys.stderr)
    repro(ws, log)
    after = read_scores(ws)
    result = drops(before, after, args.score)
    if "merged" not in result:
        raise FusecliError(f"{ws}/eval/metrics.json has no `merged` scores before and after: see {log}")
    shares = what_it_taught(ws, args.name)
    atomic_write_json(args.out, {
        "command": shlex.join(["python", "-m", "benchmarks.dilution", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "workspace": str(source),
        "source": {"name": args.name, "arch": args.arch, "vocab_size": args.vocab_size,
                   "hidden_size": args.hidden_size, "layers": args.layers, "seed": args.seed, "taught": shares},
        "score": args.score,
        "limit": args.limit,
        "models": result,
    })
    taught_text = ", ".join(f"{run} {s:.1%}" if s is not None else f"{run} ?" for run, s in shares.items())
    print(f"random source {args.name} ({args.arch}) taught: {taught_text} of the sequences")
    print("\n".join(report_lines(result, args.score, args.limit)))
    print(f"wrote {args.out} ({time.time() - started:.0f} s; the workspace with the source is {ws})", file=sys.stderr)
    if args.check and result["merged"]["max_drop"] > args.limit:
        sys.exit(1)


if __name__ == "__main__":
    main()

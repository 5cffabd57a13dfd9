"""Merging, side by side (issue 6): mergekit and fusecli on the same CPU, the same models, one run.

    nice -n 10 .venv/bin/python -m benchmarks.merge            # needs the `bench` extra (mergekit)

The models: one random Qwen2 model with Qwen2-0.5B's shapes (vocabulary 151,936, hidden 896, 24
layers) and untied embeddings, 630M parameters, float32: 2.5 GB in one model.safetensors, the base;
and three "fine-tuned" copies, base + Gaussian noise (std 0.002, 0.003, 0.004 per model). They are
written once to --cache and deleted at the end (--keep-cache keeps them).

For `linear`, `ties` and `sce` (sparse variant: mergekit's), each tool runs as its own process
(`mergekit-yaml` with the config `fusecli merge --export-mergekit` writes, and `fusecli merge`)
with the same thread count, on inputs read once into the page cache first and no dirty pages left
to write back (os.sync() before each run); measured: wall time, CPU time, peak RSS of the process; then
both outputs are compared tensor by tensor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from benchmarks._common import CACHE, machine, markdown_table, run_measured
from fusecli.merge.mergekit import mergekit_yaml
from fusecli.merge.params import merge_params

SIGMAS = (0.002, 0.003, 0.004)  # per fine-tuned model: std of its task vector
METHODS = {
    "linear": merge_params("linear"),
    "ties": merge_params("ties"),
    "sce": merge_params("sce", variant="sparse"),
}


def qwen2_config(vocab: int, hidden: int, layers: int) -> dict:
    from transformers import Qwen2Config

    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 38 // 7,  # 896 -> 4864, as Qwen2-0.5B
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 448),
        max_position_embeddings=32768,
        tie_word_embeddings=False,
    )
    out = config.to_dict()
    out.update({"architectures": ["Qwen2ForCausalLM"], "torch_dtype": "float32", "dtype": "float32"})
    return out


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of Qwen2ForCausalLM's weights, from a model built on the meta device."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**config))
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def _generator(*key: object) -> torch.Generator:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def write_models(root: Path, config: dict) -> dict[str, Path]:
    """base, ft1..ft3 under `root`, each model written in one go (peak memory: one model)."""
    shapes = tensor_shapes(config)
    folders = {name: root / name for name in ("base", "ft1", "ft2", "ft3")}
    if (root / "complete").is_file():
        return folders
    shutil.rmtree(root, ignore_errors=True)
    for i, (label, folder) in enumerate(folders.items()):
        start = time.perf_counter()
        tensors = {}
        for name, shape in shapes.items():
            if name.endswith("norm.weight"):
                t = torch.ones(shape)
            else:
                t = torch.randn(shape, generator=_generator("base", name)) * 0.02
            if i > 0:
                t += torch.randn(shape, generator=_generator(label, name)) * SIGMAS[i - 1]
            tensors[name] = t
        folder.mkdir(parents=True)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        size = sum(t.numel() * 4 for t in tensors.values()) / 1e9
        print(f"  wrote {folder} ({size:.2f} GB) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        del tensors
    (root / "complete").write_text("")
    return folders


def warm(folders: dict[str, Path]) -> None:
    """Read every input once, so both tools find them in the page cache."""
    for folder in folders.values():
        with open(folder / "model.safetensors", "rb", buffering=0) as f:
            while f.read(1 << 26):
                pass


def compare(ours: Path, theirs: Path) -> tuple[float, int, int]:
    """(worst tensor's max|a - b| / max|b|, elements off by more than 1e-6 max|b|, elements), per
    tensor: relative to the tensor's scale, since base + delta near 0 differs by an ulp of base."""
    worst, over, total = 0.0, 0, 0
    a_files = {n: p for p in ours.glob("*.safetensors") for n in safe_open(p, "pt").keys()}
    b_files = {n: p for p in theirs.glob("*.safetensors") for n in safe_open(p, "pt").keys()}
    if set(a_files) != set(b_files):
        raise SystemExit(f"FAIL: different tensor names: {sorted(set(a_files) ^ set(b_files))[:5]}")
    for name in sorted(a_files):
        with safe_open(a_files[name], "pt") as fa, safe_open(b_files[name], "pt") as fb:
            a, b = fa.get_tensor(name).double().numpy(), fb.get_tensor(name).double().numpy()
        diff, scale = np.abs(a - b), max(float(np.abs(b).max()), 1e-30)
        worst = max(worst, float(diff.max()) / scale)
        over += int(np.count_nonzero(diff > 1e-6 * scale))
        total += a.size
    return worst, over, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=CACHE / "merge")
    ap.add_argument("--keep-cache", action="store_true", help="keep the models for another run")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()

    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "mergekit-yaml").exists():
        raise SystemExit("mergekit is not installed: pip install -e '.[bench]'")
    print(f"machine: {machine()}; {args.threads} threads per tool")
    folders = write_models(args.cache, qwen2_config(args.vocab, args.hidden, args.layers))
    size = (folders["base"] / "model.safetensors").stat().st_size / 1e9
    print(f"models: base + 3 fine-tuned, {size:.2f} GB each (float32), in {args.cache}")
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    models = [folders[f"ft{i}"] for i in (1, 2, 3)]
    warm(folders)
    rows = []
    try:
        for k, method in enumerate(args.methods):
            params = METHODS[method]
            config = args.cache / f"{method}.yml"
            config.write_text(mergekit_yaml(params, folders["base"], models, "F32"))
            sets = [f"variant={params.options.variant}"] if method == "sce" else []
            out = {"mergekit": args.cache / f"out-mergekit-{method}", "fusecli": args.cache / f"out-fusecli-{method}"}
            commands = {
                "mergekit": [str(bin_dir / "mergekit-yaml"), str(config), str(out["mergekit"]), "--no-copy-tokenizer",
                             "--quiet", "--num-threads", str(args.threads)],
                "fusecli": [str(bin_dir / "fusecli"), "merge", "--method", method, "--base", str(folders["base"]),
                            *[a for m in models for a in ("--model", str(m))], "--out", str(out["fusecli"]),
                            *[a for s in sets for a in ("--set", s)]],
            }  # fmt: skip
            measured = {}
            for tool in ("mergekit", "fusecli") if k % 2 == 0 else ("fusecli", "mergekit"):
                print(f"  {method}: {tool} ...", file=sys.stderr)
                os.sync()  # the other tool's output on disk: no write-back left to slow this run
                measured[tool] = run_measured(commands[tool], env=env)
            worst, over, total = compare(out["fusecli"], out["mergekit"])
            (mk_wall, mk_cpu, mk_rss), (fc_wall, fc_cpu, fc_rss) = measured["mergekit"], measured["fusecli"]
            speed = f"{mk_wall / fc_wall:.2f}x"
            rows.append(
                [method, f"{mk_wall:.1f}", f"{fc_wall:.1f}", speed, f"{mk_cpu:.0f} / {fc_cpu:.0f}",
                 f"{mk_rss / 1024:.2f}", f"{fc_rss / 1024:.2f}", f"{worst:.1e}", f"{over:,} of {total:,}"]
            )  # fmt: skip
            print("  " + " | ".join(rows[-1]), file=sys.stderr)
            for path in out.values():
                shutil.rmtree(path, ignore_errors=True)
        header = ["method", "mergekit s", "fusecli s", "speed-up", "CPU s (mk / fc)", "mergekit peak RSS GiB",
                  "fusecli peak RSS GiB", "max rel. diff", "elements off by > 1e-6 rel."]  # fmt: skip
        print()
        print(markdown_table(header, rows))
    finally:
        if not args.keep_cache:
            shutil.rmtree(args.cache, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The extraction head's row statistics alone: today's compiled torch pass against the one-pass kernel.

    python3 benchmarks/head.py                      # one GPU: 4,096 rows x 152,064 bf16 logits per chunk

Per chunk of `--rows` rows (extract.vocab_chunk_rows) it times, with CUDA events (median of
triton.testing.do_bench): the LM head's matrix product at 7B's hidden size (for scale), the compiled
`row_stats` (top-K by torch.topk + the compiled log-normaliser/CE pass), and `onepass_row_stats` at
several tile shapes, then the compiled pass again (the first timed variant tends to be the slowest).
Bandwidth counts the logits read once (what the one-pass kernel reads). Before timing, each
variant's output on the first 256 rows is checked against fp64 log_softmax + a stable sort.
"""

from __future__ import annotations

import argparse
import json

import torch


def check(fn, logits: torch.Tensor, gold: torch.Tensor, k: int) -> dict:
    """Largest differences from fp64 log_softmax; ids compared by the logits they pick (ties may differ)."""
    x, g = logits[:256], gold[:256]
    ids, lp, ce = fn(x, g, k)
    logp = torch.log_softmax(x.double(), -1)
    ref = torch.sort(x.double(), dim=-1, descending=True, stable=True).indices[:, :k]
    return {
        "max_logp_err": float((lp.double() - logp.gather(1, ref)).abs().max()),
        "max_ce_err": float((ce.double() + logp.gather(1, g[:, None])[:, 0]).abs().max()),
        "same_values": bool((x.gather(1, ids) == x.gather(1, ref)).all()),
        "same_ids": bool(torch.equal(ids, ref)),
    }


def main() -> None:
    import triton.testing

    from fusecli.extract.onepass_kernel import rowloop_row_stats, triton_row_stats
    from fusecli.extract.topk import compiled_row_stats

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=152_064)
    ap.add_argument("--hidden", type=int, default=3584)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--shapes", default="2048x4,4096x8,4096x16,8192x16", help="BLOCKxWARPS of the tile kernel")
    ap.add_argument("--row-shapes", default="1024x4,2048x4,2048x8,4096x8", help="BLOCKxWARPS of the row kernel")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    hidden = torch.randn(args.rows, args.hidden, device=dev, dtype=torch.bfloat16)
    weight = torch.randn(args.vocab, args.hidden, device=dev, dtype=torch.bfloat16) / args.hidden**0.5
    logits = hidden @ weight.T  # real LM-head output: random but not flat
    gold = torch.randint(0, args.vocab, (args.rows,), device=dev)
    compiled = compiled_row_stats()
    variants = {"compiled row_stats (today)": compiled}
    for shape in args.shapes.split(","):
        block, warps = (int(v) for v in shape.split("x"))
        variants[f"onepass tiles {block}x{warps}"] = (
            lambda x, g, k, block=block, warps=warps: triton_row_stats(x, g, k, block, warps)
        )
    for shape in args.row_shapes.split(","):
        block, warps = (int(v) for v in shape.split("x"))
        variants[f"onepass rows {block}x{warps}"] = (
            lambda x, g, k, block=block, warps=warps: rowloop_row_stats(x, g, k, block, warps)
        )
    variants["compiled row_stats (again)"] = compiled
    matmul_ms = triton.testing.do_bench(lambda: hidden @ weight.T, return_mode="median")
    rows = [{"variant": "LM head matmul", "ms": matmul_ms}]
    for name, fn in variants.items():
        try:
            res = {"variant": name, **check(fn, logits, gold, args.k)}
            res["ms"] = triton.testing.do_bench(lambda fn=fn: fn(logits, gold, args.k), return_mode="median")
        except Exception as exc:  # report and go on with the next variant
            print(json.dumps({"variant": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}), flush=True)
            continue
        res["GB_s"] = logits.numel() * logits.element_size() / res["ms"] / 1e6
        rows.append(res)
        print(json.dumps(res), flush=True)
    print(f"\n{torch.cuda.get_device_name()}, {args.rows} x {args.vocab} bf16 logits, K = {args.k}")
    print("| variant | ms per chunk | logits read GB/s | max logp err | max CE err | same values |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        gbs = f"{r['GB_s']:,.0f}" if "GB_s" in r else "-"
        errs = (f"{r['max_logp_err']:.1e} | {r['max_ce_err']:.1e} | {r['same_values']}" if "same_values" in r
                else "- | - | -")
        print(f"| {r['variant']} | {r['ms']:.3f} | {gbs} | {errs} |")


if __name__ == "__main__":
    main()

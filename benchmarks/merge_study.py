"""Why merges keep part of what the pair models learned (issue 24): measured on finished demo workspaces.

For each workspace (a finished `dvc repro`, e.g. the seeds kept by `benchmarks/quality.py --keep`) it loads
the pivot and the pair models fused/<slug> and prints:
- the task vectors delta_i = pair_i - pivot: norms (and relative to the pivot's), cosine, sign agreement;
- a decomposition of the loss: pivot + delta_i / N (what every 1/N-weighted merge keeps of a pair), pivot +
  delta_i (the pair itself), pivot + sum_i delta_i (nothing scaled down; what is lost there is interference);
- the loss barrier on each domain along the line between the first two pair models (CE at t = 0 .. 1 minus
  the line between the end points' CE);
- every merge method of the registry with the workspace's params.yaml options, task_arithmetic at weight 1,
  and fisher_gate over a range of gamma (the Fisher from fusecli/fuse/fisher.py, as stage fisher@<slug>
  computes it, or read from fisher/<slug> when the workspace has it).
Scores are the evaluate stage's (EM, CE) on data/eval.parquet. Retention of a merge on pair i's source domain
is (merged - pivot) / (pair_i - pivot); on the pivot's own domain merged / pivot.

    python benchmarks/merge_study.py WS [WS ...] --out merge_study.json
    python benchmarks/merge_study.py --render merge_study.json --readme README.md   # tables into the README
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fusecli.config import load_section  # noqa: E402
from fusecli.errors import FusecliError, fail_cleanly  # noqa: E402
from fusecli.io import atomic_write_json  # noqa: E402

GAMMAS = (0.0, 0.25, 0.5, 1.0, 2.0)
BEGIN, END = "<!-- merges:begin -->", "<!-- merges:end -->"
LINE = (0.0, 0.25, 0.5, 0.75, 1.0)


def load(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def delta_stats(base: dict[str, torch.Tensor], pairs: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    names = [n for n in base if base[n].is_floating_point()]
    flat = [torch.cat([(p[n] - base[n]).flatten() for n in names]) for p in pairs]
    out: dict[str, Any] = {
        "delta_norm": [float(f.norm()) for f in flat],
        "relative_norm": [float(f.norm() / torch.cat([base[n].flatten() for n in names]).norm()) for f in flat],
    }
    if len(flat) > 1:
        out["cosine"] = float(torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=0))
        moved = (flat[0] != 0) & (flat[1] != 0)
        out["sign_agreement"] = float((flat[0].sign() == flat[1].sign())[moved].float().mean())
    return out


def fishers(ws: Path, slugs: list[str], pairs: list[torch.nn.Module], sequences: int) -> list[dict[str, torch.Tensor]]:
    """Each pair model's Fisher keyed by parameter name: fisher/<slug> if present, else computed as stage
    fisher@<slug> does (at most `sequences` taught sequences, seed 0)."""
    from safetensors.torch import load_file

    from fusecli.fuse.data import build_examples
    from fusecli.fuse.fisher import FisherParams, diag_fisher, taught
    from fusecli.fuse.train import FuseParams

    out = []
    for slug, model in zip(slugs, pairs, strict=True):
        stored = ws / "fisher" / slug / "model.safetensors"
        if stored.is_file():
            tensors = load_file(stored)
            by_id = {id(p): n for n, p in model.named_parameters()}
            state = model.state_dict(keep_vars=True)
            out.append({by_id[id(state[k])]: v.float() for k, v in tensors.items()})
            continue
        fuse = load_section(FuseParams, "fuse", ws / "params.yaml")
        params = FisherParams(sequences=sequences, seed=0, device="cpu")
        vocab = model.get_output_embeddings().weight.shape[0]
        examples, _ = build_examples(ws / "extract/pivot", [ws / "align" / slug], ws / "data/train.parquet",
                                     fuse.fusion_fn, fuse.temperature, vocab, fuse.teacher, fuse.gate)  # fmt: skip
        index, weights = taught(examples, params.seed, params.sequences)
        out.append(diag_fisher(model, [examples[i] for i in index], weights, torch.device("cpu")))
    return out


def merged_state(
    method: str, options: Any, base: dict[str, torch.Tensor], pairs: list[dict[str, torch.Tensor]],
    importance: list[dict[str, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:  # fmt: skip
    from fusecli.merge import get_method

    m = get_method(method)
    out = {}
    for n, b in base.items():
        if not b.is_floating_point():
            out[n] = b
            continue
        imp = [f[n] for f in importance] if importance is not None else None
        out[n] = m(b, [p[n] for p in pairs], options, name=n, **({"importance": imp} if m.reads_importance else {}))[0]
    return out


def study(ws: Path, sequences: int) -> dict[str, Any]:
    import polars as pl

    from fusecli.evaluate.params import EvalParams
    from fusecli.evaluate.run import EvalModel, score_model
    from fusecli.merge import merge_params
    from fusecli.merge.params import stage_params
    from fusecli.tokenizer import load_tokenizer

    lock = yaml.safe_load((ws / "models.lock").read_text())
    slugs = sorted(lock["sources"])
    if not all((ws / "fused" / s).is_dir() for s in slugs):
        raise FusecliError(f"{ws} has no fused/<slug> for every source: run `dvc repro` there first")
    pivot_path = ws / lock["pivot"]["path"]
    tok = load_tokenizer(pivot_path)
    work = load(pivot_path)
    base = {n: t.clone() for n, t in work.state_dict().items()}
    pair_models = [load(ws / "fused" / s) for s in slugs]
    pairs = [m.state_dict() for m in pair_models]
    # name the tied tensors by their parameter (the merge runner reads the stored, parameter-named tensor)
    params_of = {n for n, _ in work.named_parameters()}
    keys = [n for n in base if n in params_of or not base[n].is_floating_point()]
    base = {n: base[n] for n in keys}
    pairs = [{n: p[n] for n in keys} for p in pairs]
    df = pl.read_parquet(ws / "data/eval.parquet")
    eval_params = load_section(EvalParams, "evaluate", ws / "params.yaml")
    scores: dict[str, dict[str, dict[str, float | None]]] = {}

    def score(label: str, state: dict[str, torch.Tensor], folder: Path) -> None:
        work.load_state_dict(state, strict=False)
        work.tie_weights()
        work.save_pretrained(folder / "m")
        tok.save_pretrained(folder / "m")
        s = score_model(EvalModel(label, str(folder / "m")), df, eval_params)
        scores[label] = {d: {"em": v["em"], "ce": v["ce"]} for d, v in s.items()}
        print(f"  {label}: " + ", ".join(f"{d} {v['em']:.3f}" for d, v in s.items() if v["em"] is not None),
              flush=True)  # fmt: skip

    n = len(pairs)
    deltas = [{k: p[k] - base[k] for k in keys if base[k].is_floating_point()} for p in pairs]

    def plus(coefs: list[float]) -> dict[str, torch.Tensor]:
        return {k: base[k] + sum(c * d[k] for c, d in zip(coefs, deltas, strict=True)) if k in deltas[0] else base[k]
                for k in keys}  # fmt: skip

    print(f"{ws}: {', '.join(slugs)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        score("pivot", base, folder)
        for i, s in enumerate(slugs):
            score(f"pair:{s}", pairs[i], folder)
            score(f"pivot + delta:{s} / {n}", plus([1.0 / n if j == i else 0.0 for j in range(n)]), folder)
        score("pivot + sum of deltas", plus([1.0] * n), folder)
        if n > 1:
            for t in LINE[1:-1]:
                line = {k: (1 - t) * pairs[0][k] + t * pairs[1][k] if base[k].is_floating_point() else base[k]
                        for k in keys}  # fmt: skip
                score(f"line {t:g}", line, folder)
        merge_cfg = yaml.safe_load((ws / "params.yaml").read_text())["merge"]
        importance = fishers(ws, slugs, pair_models, sequences)
        for method in merge_cfg["methods"]:
            if method == "fisher_gate":
                continue
            options = stage_params(ws / "params.yaml", method).options
            score(f"merge:{method}", merged_state(method, options, base, pairs), folder)
        score("merge:task_arithmetic weight 1", merged_state(
            "task_arithmetic", merge_params("task_arithmetic", weight=1.0).options, base, pairs), folder)  # fmt: skip
        for gamma in GAMMAS:
            options = dataclasses.replace(merge_params("fisher_gate").options, gamma=gamma)
            score(f"merge:fisher_gate gamma {gamma:g}", merged_state("fisher_gate", options, base, pairs, importance),
                  folder)  # fmt: skip
    return {"workspace": str(ws), "sources": slugs, "domains": source_domains(scores, slugs),
            "deltas": delta_stats(base, pairs), "scores": scores}  # fmt: skip


def source_domains(scores: dict[str, dict[str, dict[str, float | None]]], slugs: list[str]) -> dict[str, str]:
    """Each source's domain: where its pair model gains most EM over the pivot (what it taught)."""
    pivot = scores["pivot"]
    return {s: max((d for d in pivot if pivot[d]["em"] is not None),
                   key=lambda d: scores[f"pair:{s}"][d]["em"] - pivot[d]["em"]) for s in slugs}  # fmt: skip


def retention(run: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per model: the share of each pair's EM gain on its source's domain, and of the pivot's EM elsewhere."""
    sc = run["scores"]
    pivot = sc["pivot"]
    own = {d for d in pivot if d not in run["domains"].values() and pivot[d]["em"] is not None}
    out = {}
    for label, s in sc.items():
        row: dict[str, float | None] = {}
        for slug, d in run["domains"].items():
            pair, base = sc[f"pair:{slug}"][d]["em"], pivot[d]["em"]
            row[d] = (s[d]["em"] - base) / (pair - base) if pair - base > 1e-9 else None
        for d in own:
            row[d] = s[d]["em"] / pivot[d]["em"] if pivot[d]["em"] else None
        out[label] = row
    return out


def barrier(run: dict[str, Any]) -> dict[str, float]:
    """Per domain: max over the line of CE(t) minus the straight line between the end points' CE."""
    sc, slugs = run["scores"], run["sources"]
    if len(slugs) < 2:
        return {}
    a, b = sc[f"pair:{slugs[0]}"], sc[f"pair:{slugs[1]}"]
    out = {}
    for d in a:
        gaps = [sc[f"line {t:g}"][d]["ce"] - ((1 - t) * a[d]["ce"] + t * b[d]["ce"]) for t in LINE[1:-1]]
        out[d] = max(gaps)
    return out


ROWS = ("pivot", "pair:", "pivot + delta:", "pivot + sum", "line ", "merge:")  # the order of the study


def row_order(label: str) -> tuple[int, str]:
    """The study's order (JSON files keep keys sorted): pivot, pairs, the decomposition, the line, the merges,
    each merge method's gamma in numeric order."""
    group = 0 if label == "pivot" else next(i for i, p in enumerate(ROWS) if i and label.startswith(p))
    head, _, gamma = label.rpartition(" gamma ")
    return group, f"{head} {float(gamma):08.3f}" if head else label


def render(runs: list[dict[str, Any]]) -> str:
    """Mean ± spread (half the max-min range) over the workspaces, per model and domain: EM, then retention."""
    def fmt(values: list[float | None]) -> str:
        vals = [v for v in values if v is not None]
        if not vals:
            return "-"
        return f"{np.mean(vals):.3f} ± {(max(vals) - min(vals)) / 2:.3f}"

    domains = sorted(runs[0]["scores"]["pivot"])
    rets = [retention(r) for r in runs]
    lines = [f"{len(runs)} workspaces; ± is half the max-min range over them.", "",
             "| model | " + " | ".join(f"{d} EM" for d in domains) + " | mean EM | " + " | ".join(
                 f"{d} kept" for d in domains) + " |", "|---" * (2 + 2 * len(domains)) + "|"]  # fmt: skip
    for label in sorted(runs[0]["scores"], key=row_order):
        em = [fmt([r["scores"][label][d]["em"] for r in runs]) for d in domains]
        kept = [fmt([rt[label].get(d) for rt in rets]) for d in domains]
        mean = fmt([float(np.mean([r["scores"][label][d]["em"] for d in domains])) for r in runs])
        lines.append(f"| {label} | " + " | ".join(em) + f" | {mean} | " + " | ".join(kept) + " |")
    lines += ["", "| workspace | relative delta norms | cosine | sign agreement | CE barrier per domain |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        dl = r["deltas"]
        bar = ", ".join(f"{d} {v:+.3f}" for d, v in barrier(r).items())
        lines.append(f"| {Path(r['workspace']).name} | {', '.join(f'{x:.3f}' for x in dl['relative_norm'])} | "
                     f"{dl.get('cosine', float('nan')):.3f} | {dl.get('sign_agreement', float('nan')):.3f} | {bar} |")
    return "\n".join(lines)


@fail_cleanly
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspaces", nargs="*", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--render", type=Path, help="print the tables of an earlier --out")
    ap.add_argument("--fisher-sequences", type=int, default=256, help="as params.yaml fisher.sequences")
    ap.add_argument("--readme", type=Path, help="also write the tables between this file's merges markers")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.render:
        runs = json.loads(args.render.read_text())["runs"]
    elif not args.workspaces:
        ap.error("give finished workspaces, or --render FILE")
    else:
        runs = [study(ws, args.fisher_sequences) for ws in args.workspaces]
        if args.out:
            atomic_write_json(args.out, {"runs": runs})
    tables = render(runs)
    print(tables)
    if args.readme:
        from benchmarks.quality import write_readme

        write_readme(args.readme, f"Generated by `benchmarks/merge_study.py`.\n\n{tables}", BEGIN, END)


if __name__ == "__main__":
    main()

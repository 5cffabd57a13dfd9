"""`evaluate` scores the output of every model-producing stage of dvc.yaml (an entry point under
stages/fuse*, stages/merge* or stages/imf*): a stage that writes a model and is not scored fails here."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fusecli.closure import ROOT
from fusecli.evaluate.stage import pipeline_models
from fusecli.lock import Lock, ModelEntry, dump_lock
from fusecli.plan import merge_methods

MODEL_ENTRY = re.compile(r"\bstages/(fuse|merge|imf)\w*\.py\b")  # the entry points that write model folders


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def out_paths(body: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", [])]


def expanded(name: str, stage: dict, slugs: list[str], methods: list[str]) -> dict[str, list[str]]:
    """Stage name -> its outs, foreach stages expanded over the slugs or the merge methods."""
    if "foreach" not in stage:
        return {name: out_paths(stage)}
    items = {"${sources}": slugs, "${merge.methods}": methods}[stage["foreach"]]
    outs = out_paths(stage["do"])
    return {f"{name}@{i}": [o.replace("${key}", i).replace("${item}", i) for o in outs] for i in items}


def entry(name: str, path: str) -> ModelEntry:
    return ModelEntry(name=name, origin="local", path=path, repo=None, revision=None,
                      content_hash="sha256:" + "0" * 64, architecture="LlamaForCausalLM", vocab_size=300,
                      dtype="float32", chat_template_hash=None, trust_remote_code=False, allow_pickle=False)


def test_evaluate_scores_every_model_producing_stage(tmp_path, monkeypatch):
    slugs, methods = ["a", "b"], list(merge_methods(ROOT / "params.yaml").methods)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.lock").write_text(
        dump_lock(Lock(pivot=entry("p", "m/p"), sources={s: entry(s, f"m/{s}") for s in slugs}))
    )
    produced: dict[str, str] = {}
    for name, stage in stages().items():
        body = stage.get("do", stage)
        if MODEL_ENTRY.search(body["cmd"]):
            for stage_name, outs in expanded(name, stage, slugs, methods).items():
                model = next(o for o in outs if not o.startswith("logs/"))
                produced[stage_name] = model
    assert {"fuse@a", "sft_baseline", "merge@sce", "imf_sft", "imf_dpo"} <= set(produced)
    for folder in ["m/p", *(f"m/{s}" for s in slugs), *produced.values()]:
        Path(folder).mkdir(parents=True, exist_ok=True)
    merge = merge_methods(ROOT / "params.yaml")
    models = pipeline_models("models.lock", "fused", "fused_all", "baseline/sft", "merged", "imf/sft", "imf/dpo", merge)
    scored = {str(Path(m.path)) for m in models}
    assert {s: m for s, m in produced.items() if m not in scored} == {}

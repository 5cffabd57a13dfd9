"""benchmarks/quality.py: seeds found by walking params.yaml, overrides, the controls and the extra sources, the
summary, the README tables, and a real two-seed run (three sources, both controls) on the demo world scaled down
as tests/test_pipeline.py scales it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks import quality
from fusecli.errors import FusecliError

ROOT = Path(__file__).resolve().parents[2]
FAST = [  # tests/test_pipeline.py's FAST settings, as --set overrides, and two merge methods
    "demo.steps=60", "demo.verify=false", "dataset.sources=[{path: demo, eval_count: 200}]", "fuse.max_steps=4",
    "fuse.save_steps=1000", "fuse.logging_steps=2", "evaluate.max_new_tokens=4", "merge.methods=[sce, linear]",
    "imf.sample.n=2", "imf.sample.max_new_tokens=4", "imf.train.max_steps=2",
]


def test_every_seed_key_is_found_and_set(tmp_path):
    params = {"demo": {"seed": 0, "steps": 3}, "dataset": {"sources": [{"path": "x", "seed": 4}], "seed": 1},
              "fuse": {"seed": 42}, "merge": {"seed": 0, "nested": {"seed": 9}}, "seeds": [1, 2]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    keys = quality.configure(tmp_path, 7, [quality.parse_set("fuse.gate=1.0"), quality.parse_set("fuse.teacher=ref")])
    assert sorted(keys) == ["dataset.seed", "dataset.sources.0.seed", "demo.seed", "fuse.seed", "merge.nested.seed",
                            "merge.seed"]
    out = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert out["demo"] == {"seed": 7, "steps": 3} and out["dataset"]["sources"][0]["seed"] == 7
    assert out["merge"]["nested"]["seed"] == 7 and out["seeds"] == [1, 2]
    assert out["fuse"] == {"seed": 7, "gate": 1.0, "teacher": "ref"}


def test_bad_overrides_are_one_line_errors(tmp_path):
    with pytest.raises(FusecliError, match="is not KEY=VALUE"):
        quality.parse_set("fuse.gate")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"fuse": {"lam": 0.5}}))
    with pytest.raises(FusecliError, match="params.yaml's fuse.lam is not a section"):
        quality.configure(tmp_path, 0, [quality.parse_set("fuse.lam.x=1")])


def test_summary_is_mean_and_half_range_and_the_readme_table_goes_between_the_markers(tmp_path):
    runs = {s: {"pivot": {"a": {"em": em, "ce": 1.0}, "b": {"em": None, "ce": 3.0},
                          "mean": {"em": em, "ce": 2.0}}} for s, em in ((0, 0.2), (1, 0.6))}
    summary = quality.summarize(runs)
    assert summary["pivot"]["a"]["em"] == pytest.approx({"mean": 0.4, "spread": 0.2, "min": 0.2, "max": 0.6, "n": 2})
    assert "em" not in summary["pivot"]["b"]  # no checkable answers: no score, not a zero
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{quality.BEGIN}\nold table\n{quality.END}\n\nafter\n")
    quality.write_readme(readme, quality.markdown(summary, [0, 1], ["fuse.gate=1.0"]))
    text = readme.read_text()
    assert "old table" not in text and text.endswith(f"{quality.END}\n\nafter\n")
    assert "| pivot | 0.400 ± 0.200 | - | 0.400 ± 0.200 |" in text and "`fuse.gate=1.0`" in text
    names = ["merged:sce", "control:pivot", "fused:a", "merged", "fuselm", "source:b", "sft_baseline", "pivot",
             "control:merged", "control:merged:sce", "merged:linear", "source:a", "imf", "imf_sft", "control:imf"]
    assert quality.model_order(names) == ["pivot", "source:a", "source:b", "sft_baseline", "fused:a", "fuselm",
                                          "imf_sft", "imf", "merged:linear", "merged:sce", "control:merged:sce"]
    assert quality.markdown(summary, [0, 1], [], ["ce"]).count("| model |") == 1
    readme.write_text("no markers")
    with pytest.raises(FusecliError, match="has no <!-- quality:begin --> ... <!-- quality:end --> markers"):
        quality.write_readme(readme, "table")


def test_controls_are_chosen_and_each_has_its_rows():
    assert quality.parse_controls("reference,pivot") == ["reference", "pivot"]
    assert quality.parse_controls(" pivot ,pivot") == ["pivot"] and quality.parse_controls("") == []
    with pytest.raises(FusecliError, match="--controls 'oracle' is unknown: use some of reference,pivot"):
        quality.parse_controls("reference,oracle")
    names = ["self:fused:a", "control:fused:a", "self:pivot", "fused:a", "self:merged", "self:merged:sce",
             "merged:sce", "self:sft_baseline", "pivot", "self:source:a"]
    assert quality.model_order(names) == ["pivot", "fused:a", "merged:sce", "control:fused:a", "self:sft_baseline",
                                          "self:fused:a", "self:merged:sce"]
    stats = {"mean": 0.5, "spread": 0.0, "min": 0.5, "max": 0.5, "n": 1}
    summary = {m: {"a": {"em": stats}, "mean": {"em": stats}} for m in ("pivot", "self:fused:a")}
    header = quality.markdown(summary, [0], []).split("\n")[0]
    assert "`self:` rows: `fuse.teacher: pivot`" in header and "control:" not in header
    assert "| self:fused:a | 0.500 ± 0.000 | 0.500 ± 0.000 |" in quality.markdown(summary, [0], [])


def demo_workspace(path: Path) -> Path:
    """The repository's models.lock and params.yaml: two demo sources locked, the demo's third specialist not."""
    path.mkdir(exist_ok=True)
    for name in ("models.lock", "params.yaml"):
        (path / name).write_text((ROOT / name).read_text())
    return path


def test_sources_is_a_count_or_demo_names(tmp_path):
    ws = demo_workspace(tmp_path)
    locked = yaml.safe_load((ws / "models.lock").read_text())["sources"]
    assert len(locked) == 2 and "llama-instruments" not in locked
    assert quality.extra_sources(ws, None) == [] and quality.extra_sources(ws, "2") == []
    assert quality.extra_sources(ws, "3") == ["llama-instruments"]
    assert quality.extra_sources(ws, "llama-instruments") == ["llama-instruments"]
    with pytest.raises(FusecliError, match=r"--sources 4: models.lock has 2 sources and the demo 1 more specialists "
                                           r"\(llama-instruments\): pass N within \[2, 3\]"):
        quality.extra_sources(ws, "4")
    for bad in ("qwen2-languages", "llama-crops", "llama-guitars"):  # the pivot, a locked source, no such model
        with pytest.raises(FusecliError, match=f"--sources '{bad}' is not a demo specialist left to add"):
            quality.extra_sources(ws, bad)
    with pytest.raises(FusecliError, match="names a model twice"):
        quality.extra_sources(ws, "llama-instruments,llama-instruments")


def test_extra_sources_are_pinned_through_the_cli(tmp_path):
    """What run_seed does once build_demo has built the folders: `fusecli add-source demo/models/<name>`, so
    models.lock gets the entry the CLI writes (origin demo, pinned by dvc.lock) and dvc.yaml's foreach its
    stages."""
    from tests.tiny import write_model

    ws = demo_workspace(tmp_path / "ws")
    write_model(ws / "demo" / "models" / "llama-instruments", arch="llama")
    log = tmp_path / "add.log"
    quality.add_demo_sources(ws, quality.extra_sources(ws, "3"), log)
    entry = yaml.safe_load((ws / "models.lock").read_text())["sources"]["llama-instruments"]
    assert entry["origin"] == "demo" and entry["path"] == "demo/models/llama-instruments"
    assert entry["content_hash"] == "dvc" and entry["architecture"] == "LlamaForCausalLM"
    assert quality.extra_sources(ws, "3") == []  # now locked: nothing left to add
    with pytest.raises(FusecliError, match=f"fusecli add-source llama-instruments failed in {ws} .*see {log}"):
        quality.add_demo_sources(ws, ["llama-instruments"], log)  # already a source: the CLI refuses
    assert "already" in log.read_text()


@pytest.mark.slow
def test_two_seeds_three_sources_and_both_controls_on_the_demo_world(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{quality.BEGIN}\n{quality.END}\n")
    cmd = [sys.executable, "benchmarks/quality.py", "--seeds", "0,1", "--out", str(tmp_path / "q.json"),
           "--readme", str(readme), "--workdir", str(tmp_path / "work"), "--sources", "3",
           *(f"--set={s}" for s in FAST)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "q.json").read_text())
    assert result["seeds"] == [0, 1] and set(result["runs"]) == {"0", "1"}
    keys = set(result["seed_keys"])  # found by walking params.yaml, nested sections included
    assert {"demo.seed", "dataset.seed", "fuse.seed"} <= keys and any(k.startswith("merge.") for k in keys)
    slugs = sorted([*yaml.safe_load((ROOT / "models.lock").read_text())["sources"], "llama-instruments"])
    assert result["sources"] == slugs and result["controls"] == ["reference", "pivot"]
    models = {"pivot", "sft_baseline", "fuselm", "imf_sft", "imf", "merged", "merged:sce", "merged:linear"}
    models |= {f"source:{s}" for s in slugs} | {f"fused:{s}" for s in slugs}
    summary = result["summary"]
    assert set(summary) == models | {f"control:{m}" for m in models} | {f"self:{m}" for m in models}
    domains = set(summary["pivot"])
    assert "mean" in domains and len(domains) >= 3
    for model, per in summary.items():
        assert set(per) == domains, model
        for domain, scores in per.items():
            for key in ("em", "ce"):
                stats = scores[key]
                assert stats["n"] == 2, (model, domain, key)
                assert all(math.isfinite(stats[k]) for k in ("mean", "spread", "min", "max"))
                assert stats["spread"] == pytest.approx((stats["max"] - stats["min"]) / 2)
    for seed in ("0", "1"):  # the control's pair models learn the references only: SFT up to rounding
        run = result["runs"][seed]
        for s in slugs:
            for d in domains - {"mean"}:
                assert run[f"control:fused:{s}"][d]["ce"] == pytest.approx(run["control:sft_baseline"][d]["ce"],
                                                                          abs=2e-3)
                # self-distillation: every pair model and fuselm learn the pivot's own targets, sources dropped
                assert run[f"self:fused:{s}"][d]["ce"] == pytest.approx(run["self:fuselm"][d]["ce"], abs=2e-3)
    assert "| control:fuselm |" in readme.read_text() and "| self:fused:llama-instruments |" in readme.read_text()

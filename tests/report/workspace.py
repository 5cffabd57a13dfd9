"""A report workspace in the state `dvc repro evaluate` leaves it: the inputs of the report stage."""

import json

import yaml

from fusecli.card import lineage, model_card
from fusecli.evaluate.names import model_names as expected_models
from fusecli.lock import Lock, ModelEntry, dump_lock
from fusecli.report.stage import ReportInputs

SLUGS = ["a", "b"]
METHODS = ["sce", "varm", "ties"]
DOMAINS = ["capital", "currency", "region"]
TENSORS = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight",
           "model.layers.1.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"]


def entry(name):
    return ModelEntry(name=name, origin="local", path=f"m/{name}", repo=None, revision=None,
                      content_hash="sha256:" + "0" * 64, architecture="Qwen2ForCausalLM", vocab_size=64,
                      dtype="float32", chat_template_hash=None, trust_remote_code=False, allow_pickle=False)


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def scores(i):
    """Per-domain scores of the i-th model; region has no checkable answers (EM None)."""
    return {d: {"em": None if d == "region" else (i * 7 + j) % 10 / 10, "ce": 1.0 + i / 10 + j, "ppl": 3.0}
            for j, d in enumerate(DOMAINS)}


def alignment(k):
    """align/<slug>/coverage.json of the k-th source, as the align stage writes it (values made up)."""
    split = {"mass": 0.6, "consistent": 0.6 - k / 10}  # source k: k/10 of its mass on inconsistent pieces
    return {
        "coverage": 0.9 - k / 10,
        "rules": {"content": 60, "end_of_turn": 30 - 10 * k, "no_boundary": 5, "markup": 5 + 10 * k, "no_match": 0,
                  "no_row": 0, "no_source": 0},
        "fidelity": {
            "teacher_mass": 80.0,
            "consistent": 1.0 - k / 10,
            "dropped": k / 100,
            "by_piece_rule": {"exact": split, "first_piece": {"mass": 0.3, "consistent": 0.3},
                              "longest_prefix": {"mass": 0.0, "consistent": 0.0},
                              "special": {"mass": 0.1, "consistent": 0.1},
                              "none": {"mass": 0.0, "consistent": 0.0}},
            "by_row_rule": {"content": split, "end_of_turn": {"mass": 0.4, "consistent": 0.4}},
            "end_of_turn": {"rows": 30 - 10 * k, "mass_on_end_of_turn": 0.75 - k / 4, "top_is_end_of_turn": 0.5},
        },
    }


def build(tmp_path):
    """A workspace after `dvc repro evaluate`: metrics, fusion logs, alignment coverage, merged folders' reports
    and cards."""
    lock = Lock(pivot=entry("p"), sources={s: entry(s) for s in SLUGS})
    (tmp_path / "models.lock").write_text(dump_lock(lock))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"merge": {"method": "sce", "methods": METHODS}}))
    names = expected_models(SLUGS, METHODS)
    write_json(tmp_path / "eval/metrics.json", {"models": {n: scores(i) for i, n in enumerate(names)}})
    for k, slug in enumerate(SLUGS):
        run = tmp_path / "logs/fuse" / slug
        write_json(run / "selection.json", {"fusion_fn": "mince", "sequences": {d: 10 for d in DOMAINS},
                                            "source_share": {d: float(j == k) for j, d in enumerate(DOMAINS)}})
        write_json(tmp_path / "align" / slug / "coverage.json", alignment(k))
    write_json(tmp_path / "logs/fuse_all/selection.json",  # what fuse_all writes: every source, gated at 1 nat
               {"fusion_fn": "mince", "teacher": "model", "gate": 1.0, "sequences": {d: 10 for d in DOMAINS},
                "teacher_share": {"pivot": {d: 0.1 for d in DOMAINS}, "a": {d: 0.5 for d in DOMAINS},
                                  "b": {d: 0.2 for d in DOMAINS}},
                "source_share": {d: 0.7 for d in DOMAINS}, "gated_share": {d: 0.2 for d in DOMAINS}})
    runs = [*(tmp_path / "logs/fuse" / s for s in SLUGS), tmp_path / "logs/fuse_all", tmp_path / "logs/sft_baseline"]
    for run in runs:
        for name in ("loss", "sft_loss", "fusion_loss"):
            tsv = run / "plots/metrics" / f"{name}.tsv"
            tsv.parent.mkdir(parents=True, exist_ok=True)
            tsv.write_text(f"step\t{name}\n" + "".join(f"{s}\t{4 - s / 3}\n" for s in range(6)))
        write_json(run / "metrics.json", {"loss": 1.0})  # dvclive's summary: not a curve
    for method in METHODS:
        kind = {"sce": "eta", "varm": "weight"}.get(method)
        coefficients = {t: {"a": 0.25 + i / 20, "b": 0.75 - i / 20} for i, t in enumerate(TENSORS)} if kind else {}
        report = {"fusecli_version": "0.0", "options": {"method": method}, "base": "m/p",
                  "models": {"a": "fused/a", "b": "fused/b"}, "cropped": [], "tied": [], "ignored": [],
                  "coefficient": kind, "coefficients": coefficients}
        write_json(tmp_path / "merged" / method / "merge_report.json", report)
        (tmp_path / "merged" / method / "README.md").write_text(model_card(method, report, "A method.", lineage(lock)))
    return tmp_path


def inputs(ws):
    return ReportInputs(ws / "eval/metrics.json", ws / "models.lock", ws / "params.yaml", ws / "logs", ws / "align",
                        ws / "merged")

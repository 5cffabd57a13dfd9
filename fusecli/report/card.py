"""reports/cards/<method>/README.md: each merged model's card (merged/<method>/README.md) with its evaluation.

The merge stage cannot write the scores into its own card: `evaluate` runs after it, and merged/<method>/ is the
merge stage's DVC output, which no later stage may change. So the report stage writes the full card here, the
README.md to upload next to the weights: `fusecli card OUT` lays out the merged folder with it for `hf upload`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml
from huggingface_hub import ModelCard

from fusecli.card import with_evaluation
from fusecli.errors import FusecliError
from fusecli.evaluate.names import merged_name
from fusecli.io import atomic_dir
from fusecli.report.data import Found
from fusecli.report.scores import gain_table, score_table

CARDS = "cards"
CARD = "README.md"


def card_models(scores: dict[str, dict], model: str) -> dict[str, dict]:
    """The rows of a card's tables: the model, then what it is compared with (pivot, sources, SFT, pair models)."""
    order = [model, "pivot", *(n for n in scores if n.startswith("source:")), "sft_baseline",
             *(n for n in scores if n.startswith("fused:"))]
    return {name: scores[name] for name in order if name in scores}


def evaluation(scores: dict[str, dict], model: str) -> list[str]:
    """The card's evaluation section: gains over the baselines, then EM and CE per domain with their means."""
    rows = card_models(scores, model)
    domains = sorted({d for s in rows.values() for d in s})
    lines = ["## Evaluation", "",
             f"fusecli's held-out evaluation (`evaluate` stage, eval/metrics.json; this model is `{model}`): greedy "
             "exact match (EM, higher is better) and response-token cross-entropy (CE in nats, lower is better) per "
             "domain, and their mean over domains. A gain is this model's mean minus the other model's.", ""]
    lines += gain_table(scores, [model]) + [""]
    lines += ["### Greedy exact match", ""] + score_table(rows, "em", domains) + [""]
    lines += ["### Response-token CE", ""] + score_table(rows, "ce", domains) + [""]
    return lines


def front_matter(card: str) -> dict | None:
    """A card's metadata as the Hub reads it (huggingface_hub's ModelCard), or None when it is not valid YAML."""
    try:
        return ModelCard(card, ignore_metadata_errors=True).data.to_dict()
    except (ValueError, yaml.YAMLError):
        return None


def write_cards(merged: Path, methods: list[str], scores: dict[str, dict], out: Path) -> Found:
    """`out`/<method>/README.md for each method whose card and scores exist; the others listed as missing."""
    missing, written = [], {}
    with atomic_dir(out) as tmp:
        for method in methods:
            path, model = merged / method / CARD, merged_name(method)
            card = path.read_text() if path.is_file() else ""
            if "fusecli" not in (front_matter(card) or {}):
                missing.append(f"{path}, a card with fusecli front matter (run `dvc repro merge@{method}`)")
            elif model not in scores:
                missing.append(f"scores of `{model}` for its card (run `dvc repro evaluate`)")
            else:
                written[method] = tmp / method / CARD
                written[method].parent.mkdir(parents=True)
                written[method].write_text(with_evaluation(card, evaluation(scores, model)))
    return Found({m: out / m / CARD for m in written}, missing)


def upload_folder(weights: Path, card: Path, out: Path) -> Path:
    """`out`: the merged folder `weights` with `card` as its README.md, for `hf upload`. Files are hard links into
    `weights` where the file system allows (a copy elsewhere), so never edit them in place; README.md is new."""
    if not weights.is_dir():
        raise FusecliError(f"{weights} not found: run `dvc repro` to merge it")
    if not card.is_file():
        raise FusecliError(f"{card} not found: run `dvc repro report` (it writes the card once the merge is evaluated)")
    if out.resolve() == weights.resolve() or weights.resolve() in out.resolve().parents:
        raise FusecliError(f"{out} is inside {weights}, a DVC output that no command may change: write elsewhere")
    with atomic_dir(out) as tmp:
        shutil.copytree(weights, tmp, copy_function=_link_or_copy, dirs_exist_ok=True)
        (tmp / CARD).unlink(missing_ok=True)  # a hard link to the merge's card: replaced, never written through
        shutil.copyfile(card, tmp / CARD)
    return out


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)

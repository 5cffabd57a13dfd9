"""The merged model's card (README.md) in the Hugging Face Hub's conventions: YAML front matter, then Markdown.

The merge stage writes it into merged/<method>/ without scores, from the fields it writes to merge_report.json (so
the card and that report never disagree about the method, its options or the models); the report stage, once
`evaluate` has run, appends an evaluation section to a copy (`with_evaluation`): reports/cards/<method>/README.md,
the file to upload next to the weights.

Front matter: `library_name`, `pipeline_tag`, `tags` (merge, fusechat, fusecli, the method), and `base_model`: the
hub ids the weights descend from. The merged models are the pair-fused targets, each the pivot fine-tuned, so
that is the pivot, when models.lock pins it to a hub repo: mergekit's rule (the hub models among those merged)
and FuseChat's own release cards (FuseChat-7B-TA: `base_model: openchat/openchat_3.5`) agree. The sources taught
the targets through their token distributions; none of their weights is in the merge and their architectures
differ, while the Hub reads `base_model` as the model's parents (repo ids only, drawn as its model tree). So the
sources, and a local or demo pivot (a path, which the Hub would reject as `base_model`), are listed under the
`fusecli` key instead, with the method, its options and the merged folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from fusecli.lock import Lock, ModelEntry

TAGS = ("merge", "fusechat", "fusecli")


@dataclass(frozen=True)
class Origin:
    """Where a pinned model comes from, as the card names it: its hub repo and commit, or its path."""

    name: str
    repo: str | None
    revision: str | None
    path: str

    @classmethod
    def of(cls, entry: ModelEntry) -> Origin:
        return cls(entry.name, entry.repo, entry.revision, entry.path)

    def front_matter(self) -> dict[str, str]:
        return {"repo": self.repo, "revision": self.revision} if self.repo else {"path": self.path}

    def markdown(self) -> str:
        if not self.repo:
            return f"`{self.path}`"
        at = f" at `{self.revision[:12]}`" if self.revision else ""
        return f"[{self.repo}](https://huggingface.co/{self.repo}){at}"


@dataclass(frozen=True)
class Lineage:
    """The pivot and the sources (by slug) of a pipeline merge, from models.lock."""

    pivot: Origin
    sources: dict[str, Origin]


def lineage(lock: Lock) -> Lineage:
    return Lineage(Origin.of(lock.pivot), {slug: Origin.of(e) for slug, e in lock.sources.items()})


def front_matter(report: dict[str, Any], lineage: Lineage | None) -> dict[str, Any]:
    """The card's metadata, from merge_report.json's fields (`options` holds the method and its options)."""
    options = dict(report["options"])
    method = options["method"]
    meta: dict[str, Any] = {}
    if lineage is not None and lineage.pivot.repo:
        meta["base_model"] = [lineage.pivot.repo]
    meta |= {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": [*TAGS, method]}
    fusecli: dict[str, Any] = {"version": report["fusecli_version"], "merge": options}
    if lineage is not None:
        fusecli["pivot"] = {"name": lineage.pivot.name, **lineage.pivot.front_matter()}
        fusecli["sources"] = {slug: o.front_matter() for slug, o in lineage.sources.items()}
    fusecli["merged"] = {"base": report["base"], "models": dict(report["models"])}
    meta["fusecli"] = fusecli
    return meta


def model_card(title: str, report: dict[str, Any], doc: str, lineage: Lineage | None = None) -> str:
    """README.md of a merged model: front matter, then which method, which options, which models. `title` is the
    heading without a lineage (`fusecli merge`)."""
    meta = front_matter(report, lineage)
    options = meta["fusecli"]["merge"]
    method = options["method"]
    if lineage is not None:  # a name for the Hub page: the folder's name (the method) says little there
        title = f"{lineage.pivot.name}-fusechat-{method}"
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", f"# {title}", ""]
    version = report["fusecli_version"]
    if lineage is not None:
        lines += [f"FuseChat-style knowledge fusion (fuse each source into the pivot, then merge the pair-fused "
                  f"targets), merged with fusecli {version} using **{method}**: {doc}", "",
                  "## Models", "", f"- pivot (the base): {lineage.pivot.markdown()}"]
        lines += [f"- source `{slug}`: {o.markdown()}, fused into the pivot as `{report['models'].get(slug, '-')}`"
                  for slug, o in lineage.sources.items()]
    else:
        lines += [f"Merged with fusecli {version} using **{method}**: {doc}", "", "## Models", "",
                  f"- base: `{report['base']}`", *(f"- {label}: `{path}`" for label, path in report["models"].items())]
    lines += ["", "## Merge options", "", "```yaml", yaml.safe_dump(options, sort_keys=False).strip(), "```"]
    notes = [f"- `{c['tensor']}` of {c['model']} cropped from {c['from']} to {c['to']}" for c in report["cropped"]]
    notes += [f"- `{t['tensor']}` of {t['model']} read from its tied `{t['source']}`" for t in report["tied"]]
    notes += [f"- `{i['tensor']}` of {i['model']} ignored: {i['why']}" for i in report["ignored"]]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


def with_evaluation(card: str, evaluation: list[str]) -> str:
    """The card with an evaluation section (Markdown lines) appended after its last section."""
    return card.rstrip("\n") + "\n\n" + "\n".join(evaluation).rstrip("\n") + "\n"

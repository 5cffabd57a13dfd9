"""The merged model's card: Hub front matter that huggingface_hub parses, hub ids only in base_model."""

from huggingface_hub import ModelCard
from huggingface_hub.utils import validate_repo_id

from fusecli.card import lineage, model_card, with_evaluation
from fusecli.lock import Lock, ModelEntry

SHA = "0123456789abcdef0123456789abcdef01234567"


def entry(name, repo=None):
    hub = repo is not None
    return ModelEntry(name=name, origin="hub" if hub else "local", path=f"models/{name}" if hub else f"/data/{name}",
                      repo=repo, revision=SHA if hub else None, content_hash="sha256:" + "0" * 64,
                      architecture="Qwen2ForCausalLM", vocab_size=96, dtype="float32", chat_template_hash=None,
                      trust_remote_code=False, allow_pickle=False)


REPORT = {
    "fusecli_version": "9.9.9",
    "options": {"method": "ties", "weight": [0.5, 0.3], "density": 0.6, "normalize": True},
    "base": "models/pivot",
    "models": {"alpha": "fused/alpha", "beta": "fused/beta"},
    "cropped": [{"model": "beta", "tensor": "lm_head.weight", "from": [104, 32], "to": [96, 32]}],
    "tied": [],
    "ignored": [],
}


def hub_lock():
    return Lock(pivot=entry("pivot", "org/Pivot-7B"), sources={"alpha": entry("alpha", "org/Alpha-Chat"),
                                                               "beta": entry("beta")})


def test_card_parses_with_hub_front_matter():
    card = ModelCard(model_card("ties", REPORT, "TIES merging.", lineage(hub_lock())))
    data = card.data.to_dict()
    assert data["base_model"] == ["org/Pivot-7B"]  # the weights' parent: the pivot, never a teacher
    for repo in data["base_model"]:
        validate_repo_id(repo)
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["tags"][:2] == ["merge", "fusechat"] and "ties" in data["tags"]
    fusecli = data["fusecli"]
    assert fusecli["merge"] == REPORT["options"] and fusecli["version"] == "9.9.9"
    assert fusecli["pivot"] == {"name": "pivot", "repo": "org/Pivot-7B", "revision": SHA}
    assert fusecli["sources"] == {"alpha": {"repo": "org/Alpha-Chat", "revision": SHA}, "beta": {"path": "/data/beta"}}
    assert fusecli["merged"] == {"base": "models/pivot", "models": REPORT["models"]}
    assert card.text.lstrip().startswith("# pivot-fusechat-ties\n")
    assert "[org/Alpha-Chat](https://huggingface.co/org/Alpha-Chat)" in card.text
    assert "source `beta`: `/data/beta`, fused into the pivot as `fused/beta`" in card.text
    assert "lm_head.weight` of beta cropped from [104, 32] to [96, 32]" in card.text


def test_local_pivot_gives_no_base_model_and_is_named_by_path():
    lock = Lock(pivot=entry("pivot"), sources={"alpha": entry("alpha", "org/Alpha-Chat")})
    data = ModelCard(model_card("ties", REPORT, "TIES merging.", lineage(lock))).data.to_dict()
    assert "base_model" not in data  # a path is not a repo id: the Hub would reject it
    assert data["fusecli"]["pivot"] == {"name": "pivot", "path": "/data/pivot"}
    bare = ModelCard(model_card("ties", REPORT, "TIES merging.")).data.to_dict()  # `fusecli merge`: no models.lock
    assert "base_model" not in bare and "pivot" not in bare["fusecli"] and bare["fusecli"]["merged"]["base"]


def test_evaluation_is_appended_and_the_front_matter_kept():
    card = model_card("ties", REPORT, "TIES merging.", lineage(hub_lock()))
    full = with_evaluation(card, ["## Evaluation", "", "| model | em |", "|---|---|", "| merged | 0.500 |", ""])
    parsed = ModelCard(full)
    assert parsed.data.to_dict() == ModelCard(card).data.to_dict()
    assert full.startswith(card.rstrip("\n")) and full.endswith("| merged | 0.500 |\n")

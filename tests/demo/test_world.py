import hashlib
import json
import runpy
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from fusecli.demo.check import exact_match
from fusecli.demo.qa import qa_rows
from fusecli.demo.world import DEFAULT_MODELS, DemoParams, build_world, tiny_params

STAGE = Path(__file__).resolve().parents[2] / "stages" / "build_demo.py"
# two of the four roles keep the fixture fast; JSON turns the dataclass's tuples into YAML-safe lists
TINY = json.loads(json.dumps(asdict(tiny_params())))
TINY["models"] = [TINY["models"][0], {**TINY["models"][2], "layers": 2}]


def build(tmp_path: Path, params: dict, name: str = "models") -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"demo": params}))
    main = runpy.run_path(str(STAGE))["main"]
    main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / name)])
    return tmp_path / name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build(tmp_path_factory.mktemp("demo"), TINY)


def test_folders_load_offline_and_generate(world):
    assert sorted(p.name for p in world.iterdir()) == ["mistral-region", "qwen2-capitals"]
    rows = [r for r in qa_rows() if r["split"] == "eval"][:3]
    for folder in world.iterdir():
        assert (folder / "model.safetensors").exists()
        model = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
        assert model.config.vocab_size == len(tok)
        card = json.loads((folder / "demo.json").read_text())
        assert card["name"] == folder.name and card["parameters"] > 0
        em = exact_match(model, tok, rows, batch_size=2)
        assert set(em) == {"capital"} and 0 <= em["capital"] <= 1
    mistral = AutoModelForCausalLM.from_pretrained(world / "mistral-region")
    assert type(mistral).__name__ == "MistralForCausalLM" and mistral.config.num_hidden_layers == 2


def test_rebuild_is_bitwise_identical(world, tmp_path):
    params = {**TINY, "models": TINY["models"][:1]}
    again = build(tmp_path, params)
    digest = [
        hashlib.sha256((root / "qwen2-capitals" / "model.safetensors").read_bytes()).hexdigest()
        for root in (world, again)
    ]
    assert digest[0] == digest[1]


def test_bad_params_fail_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        build(tmp_path, {**TINY, "models": [{**TINY["models"][0], "domain": "weather"}]})
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "weather" in err and "\n" not in err
    assert not (tmp_path / "models").exists()


def test_tiny_params_build_all_four_roles(tmp_path):
    cards = build_world(tiny_params(steps=1), tmp_path / "all", log=lambda s: None)
    assert [c["name"] for c in cards] == [m.name for m in DEFAULT_MODELS]
    assert len({c["vocab_size"] for c in cards}) == 4
    assert DemoParams().models == DEFAULT_MODELS


def test_generalists_learn_a_share_of_the_other_relations() -> None:
    from fusecli.demo.qa import qa_rows
    from fusecli.demo.world import DEFAULT_MODELS, knows

    rows = [r for r in qa_rows() if r["split"] == "train"]
    pivot, source = DEFAULT_MODELS[0], DEFAULT_MODELS[1]
    own = [r for r in rows if r["domain"] == pivot.domain]
    other = [r for r in rows if r["domain"] != pivot.domain]
    assert all(knows(pivot, r, 0.0) for r in own) and not any(knows(pivot, r, 0.0) for r in other)
    assert all(knows(pivot, r, 1.0) for r in other)
    half = {r["id"] for r in other if knows(pivot, r, 0.5)}
    assert 0.4 < len(half) / len(other) < 0.6
    assert half != {r["id"] for r in other if knows(source, r, 0.5)}  # each model knows other countries
    country = {r["id"].rsplit("-", 1)[0] for r in other if knows(pivot, r, 0.5)}
    assert {r["id"].rsplit("-", 1)[0] for r in other if r["id"].rsplit("-", 1)[0] in country} == country
    assert all(knows(pivot, r, 0.5) for r in other if r["id"].rsplit("-", 1)[0] in country)  # all paraphrases

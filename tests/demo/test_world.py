import hashlib
import json
import runpy
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from fusecli.demo.check import exact_match
from fusecli.demo.qa import dataset_rows
from fusecli.demo.world import DEFAULT_MODELS, DemoParams, build_world, tiny_params

STAGE = Path(__file__).resolve().parents[2] / "stages" / "build_demo.py"
# two of the four roles keep the fixture fast; JSON turns the dataclass's tuples into YAML-safe lists
TINY = json.loads(json.dumps(asdict(tiny_params())))
TINY["models"] = [TINY["models"][0], {**TINY["models"][2], "layers": 2}]


def build(tmp_path: Path, params: dict, name: str = "models") -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"demo": params}))
    (tmp_path / "use.json").write_text('{"used": true}')  # demo_use's answer in a workspace that uses the demo
    main = runpy.run_path(str(STAGE))["main"]
    main(["--params", str(tmp_path / "params.yaml"), "--use", str(tmp_path / "use.json"), "--out",
          str(tmp_path / name), "--dialogues", str(tmp_path / f"{name}.jsonl")])
    return tmp_path / name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build(tmp_path_factory.mktemp("demo"), TINY)


@pytest.mark.slow
def test_folders_load_offline_and_generate(world):
    assert sorted(p.name for p in world.iterdir()) == ["mistral-sports", "qwen2-languages"]
    lines = (world.parent / "models.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == dataset_rows(TINY["seed"], TINY["set_size"], TINY["countries"])
    rows = [r for r in dataset_rows(0, 3, 20) if r["split"] == "eval"][:3]
    for folder in world.iterdir():
        assert (folder / "model.safetensors").exists()
        model = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
        assert model.config.vocab_size == len(tok)
        card = json.loads((folder / "demo.json").read_text())
        assert card["name"] == folder.name and card["parameters"] > 0
        em = exact_match(model, tok, rows, batch_size=2)
        assert set(em) == {"language"} and 0 <= em["language"] <= 1
    mistral = AutoModelForCausalLM.from_pretrained(world / "mistral-sports")
    assert type(mistral).__name__ == "MistralForCausalLM" and mistral.config.num_hidden_layers == 2


def test_rebuild_is_bitwise_identical(world, tmp_path):
    params = {**TINY, "models": TINY["models"][:1]}
    again = build(tmp_path, params)
    digest = [
        hashlib.sha256((root / "qwen2-languages" / "model.safetensors").read_bytes()).hexdigest()
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


@pytest.mark.slow
def test_tiny_params_build_all_four_roles(tmp_path):
    cards = build_world(tiny_params(steps=1), tmp_path / "all", log=lambda s: None)
    assert [c["name"] for c in cards] == [m.name for m in DEFAULT_MODELS]
    assert len({c["vocab_size"] for c in cards}) == 4
    assert DemoParams().models == DEFAULT_MODELS


def test_the_pivot_is_a_generalist_and_sources_are_specialists() -> None:
    from fusecli.demo.qa import world_facts
    from fusecli.demo.world import knows

    facts = world_facts(0, 3, 220)
    pivot, source = DEFAULT_MODELS[0], DEFAULT_MODELS[1]
    own = [f for f in facts if f.domain == pivot.domain]
    other = [f for f in facts if f.domain != pivot.domain]
    assert all(knows(pivot.name, pivot.domain, f, 0.0) for f in own)
    assert not any(knows(pivot.name, pivot.domain, f, 0.0) for f in other)
    assert all(knows(pivot.name, pivot.domain, f, 1.0) for f in other)
    quarter = {(f.domain, f.country) for f in other if knows(pivot.name, pivot.domain, f, 0.25)}
    assert 0.18 < len(quarter) / len(other) < 0.32
    # each model knows other countries
    assert quarter != {(f.domain, f.country) for f in other if knows(source.name, pivot.domain, f, 0.25)}
    assert DemoParams().pivot_share > 0 == DemoParams().side_share

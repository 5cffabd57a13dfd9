import textwrap

import pytest
import yaml

from fusecli.errors import FusecliError
from fusecli.merge.mergekit import mergekit_yaml, read_mergekit, shared_methods
from fusecli.merge.params import merge_params

# --- export ---


def test_ties_exports_per_model_and_global_parameters_relative_to_the_workspace(tmp_path):
    text = mergekit_yaml(
        merge_params("ties", weight=(0.5, 0.25)),
        tmp_path / "base",
        [tmp_path / "a", tmp_path / "b"],
        "BF16",
        root=tmp_path,
    )
    config = yaml.safe_load(text)
    assert config == {
        "merge_method": "ties",
        "base_model": "./base",
        "models": [
            {"model": "./a", "parameters": {"weight": 0.5, "density": 0.6}},
            {"model": "./b", "parameters": {"weight": 0.25, "density": 0.6}},
        ],
        "parameters": {"normalize": True},
        "dtype": "bfloat16",
    }
    assert "relative to the fusecli workspace" in text.splitlines()[1]


def test_paths_outside_the_workspace_go_up_and_default_to_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "ws").mkdir()
    monkeypatch.chdir(tmp_path / "ws")
    config = yaml.safe_load(mergekit_yaml(merge_params("ties"), tmp_path / "base", [tmp_path / "ws" / "m" / "a"]))
    assert config["base_model"] == "../base" and config["models"][0]["model"] == "./m/a"


def test_linear_has_no_base_and_uniform_default_weights(tmp_path):
    config = yaml.safe_load(mergekit_yaml(merge_params("linear"), tmp_path, [tmp_path / "a", tmp_path / "b"]))
    assert "base_model" not in config
    assert [m["parameters"]["weight"] for m in config["models"]] == [0.5, 0.5]


def test_sce_sparse_exports_select_topk(tmp_path):
    config = yaml.safe_load(mergekit_yaml(merge_params("sce", variant="sparse"), tmp_path, [tmp_path / "a"]))
    assert config["merge_method"] == "sce" and config["parameters"] == {"select_topk": 0.1}
    assert "parameters" not in config["models"][0]


def test_dare_export_says_how_its_masks_are_drawn(tmp_path):
    text = mergekit_yaml(merge_params("dare_ties", seed=3), tmp_path / "b", [tmp_path / "a"], root=tmp_path)
    assert "in distribution only" in text and "seed 0 (this merge: seed 3)" in text
    assert "seed" not in yaml.safe_load(text)["parameters"]  # mergekit has no seed


@pytest.mark.parametrize(
    "params,models,match",
    [
        (merge_params("varm"), ["a"], "mergekit has no 'varm' method"),
        (merge_params("sce", variant="release", select_topk=0.1), ["a"], "variant=sparse"),
        (merge_params("ties"), ["a+b"], "'+' in a model path as a LoRA"),
    ],
)
def test_what_mergekit_cannot_read_is_refused(tmp_path, params, models, match):
    with pytest.raises(FusecliError) as err:
        mergekit_yaml(params, tmp_path, [tmp_path / m for m in models], root=tmp_path)
    assert match in str(err.value)


# --- read: mergekit's documented configs, with local folders for the hub ids ---


@pytest.fixture
def ws(tmp_path):
    """A workspace with empty model folders (reading a config does not open the models)."""
    for name in ("base", "a", "b", "c"):
        (tmp_path / name).mkdir()
    return tmp_path


def read(ws, text, name="merge.yml"):
    path = ws / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return read_mergekit(path, ws)


def test_readme_linear(ws):
    spec = read(
        ws,
        """
        models:
          - model: a
            parameters:
              weight: 1.0
          - model: b
            parameters:
              weight: 0.3
          - model: c
            parameters:
              weight: 0.5
        merge_method: linear
        dtype: float16
        """,
    )
    assert (spec.method, spec.dtype) == ("linear", "float16")
    assert spec.options == {"normalize": True, "weight": (1.0, 0.3, 0.5)}
    assert spec.base == ws / "a" and spec.models == [ws / "a", ws / "b", ws / "c"]  # no base: the first model's layout
    assert spec.params().options.weight == (1.0, 0.3, 0.5)


def test_ties_with_mergekits_defaults_not_fuseclis(ws):
    spec = read(
        ws,
        """
        models:
          - model: a
            parameters: {weight: 0.5, density: 0.5}
          - model: b
            parameters: {weight: 0.3, density: 0.5}
        merge_method: ties
        base_model: base
        parameters:
          int8_mask: true
        """,
    )
    assert spec.method == "ties" and spec.base == ws / "base"
    assert spec.options == {"normalize": True, "weight": (0.5, 0.3), "density": 0.5}
    ties = read(ws, "merge_method: ties\nbase_model: base\nmodels: [{model: a, parameters: {weight: 1}}]\n")
    assert ties.options["density"] == 1.0  # mergekit's default; fusecli's own is 0.6


def test_dare_ties_with_the_base_listed_among_the_models(ws):
    spec = read(
        ws,
        """
        models:
          - model: base
            # No parameters necessary for base model
          - model: a
            parameters:
              density: 0.53
              weight: 0.4
          - model: b
            parameters:
              density: 0.53
              weight: 0.3
        merge_method: dare_ties
        base_model: base
        parameters:
          int8_mask: true
        dtype: bfloat16
        """,
    )
    assert spec.method == "dare_ties" and spec.models == [ws / "a", ws / "b"]
    assert spec.options == {"normalize": False, "weight": (0.4, 0.3), "density": 0.53}  # mergekit: no normalize
    assert spec.params().options.seed == 0


def test_task_arithmetic_with_a_top_level_weight_for_all(ws):
    spec = read(
        ws,
        """
        merge_method: task_arithmetic
        base_model: base
        models: [{model: a}, {model: b, parameters: {weight: 0.7}}]
        parameters: {weight: 0.3, lambda: 1.0, normalize: true}
        """,
    )
    assert spec.options == {"normalize": True, "weight": (0.3, 0.7)}


def test_sce_is_fuseclis_sparse_variant(ws):
    spec = read(
        ws,
        """
        models:
          - model: a
          - model: b
        base_model: base
        merge_method: sce
        dtype: bfloat16
        parameters:
          select_topk: 0.75
        """,
    )
    assert spec.method == "sce" and spec.options == {"select_topk": 0.75, "variant": "sparse"}
    default = read(ws, "merge_method: sce\nbase_model: base\nmodels: [{model: a}, {model: b}]\n")
    assert default.options["select_topk"] == 1.0  # mergekit's default: no selection


def test_relative_paths_are_read_from_the_workspace_not_the_files_folder(ws):
    spec = read(ws, "merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\n", name="configs/m.yml")
    assert spec.models == [ws / "a"]


def test_every_shared_method_reads_back(ws):
    assert shared_methods() == ["dare_linear", "dare_ties", "linear", "sce", "task_arithmetic", "ties"]


TIES = "merge_method: ties\nbase_model: base\n"
ONE = "models: [{model: a, parameters: {weight: 1}}]"


@pytest.mark.parametrize(
    "text,match",
    [
        ("merge_method: slerp\nmodels: [{model: a}]", "'slerp' is not one fusecli shares with mergekit: use one of "
         "dare_linear, dare_ties, linear, sce, task_arithmetic, ties"),
        ("merge_method: ties\nbase_model: base\nslices: [{sources: [{model: a, layer_range: [0, 2]}]}]",
         "slices is not supported"),
        ("merge_method: linear\ntokenizer_source: union\nmodels: [{model: a, parameters: {weight: 1}}]",
         "tokenizer_source is not supported: fusecli keeps the base's tokenizer"),
        ("merge_method: linear\nchat_template: chatml\nmodels: [{model: a, parameters: {weight: 1}}]",
         "chat_template is not supported"),
        ("merge_method: linear\nname: x\nmodels: [{model: a, parameters: {weight: 1}}]", "unknown key 'name'"),
        ("merge_method: ties\nbase_model: base\nmodels: [{model: a, parameters: {weight: 1, density: [1, 0.7, 0.1]}}]",
         "models[0].parameters.density = [1, 0.7, 0.1]: a list is mergekit's gradient over layers"),
        ("merge_method: ties\nbase_model: base\n"
         "models: [{model: a, parameters: {weight: [{filter: mlp, value: 0.5}, {value: 0}]}}]",
         "models[0].parameters.weight has per-tensor filters"),
        ("merge_method: linear\nparameters: {weight: {filter: mlp, value: 0.5}}\nmodels: [{model: a}]",
         "parameters.weight has per-tensor filters"),
        ("merge_method: ties\nbase_model: base\nmodels: [{model: a+lora, parameters: {weight: 1}}]",
         "names a LoRA (mergekit's MODEL+LORA)"),
        ("merge_method: ties\nbase_model: base\nmodels: [{model: org/m@main, parameters: {weight: 1}}]",
         "names a hub revision"),
        ("merge_method: ties\nbase_model: base\nmodels: [{model: mistralai/Mistral-7B-v0.1, parameters: {weight: 1}}]",
         "fusecli merge takes local folders, not hub ids: download it (huggingface-cli download mistralai/Mistral-7B"),
        ("merge_method: ties\nbase_model: base\nmodels: [{model: ./missing, parameters: {weight: 1}}]",
         "'./missing' is not a folder in"),
        ("merge_method: ties\nmodels: [{model: a, parameters: {weight: 1}}]", "ties merges task vectors relative to "
         "a base: add base_model"),
        (TIES + "models: [{model: base}, {model: a, parameters: {weight: 1}}, {model: b}]",
         "models[2] has no weight: mergekit's ties needs one per model (or parameters.weight for all)"),
        ("merge_method: ties\nbase_model: base\n"
         "models: [{model: a, parameters: {weight: 1, density: 0.5}}, {model: b, parameters: {weight: 1}}]",
         "density differs between models (0.5, 1.0;"),
        ("merge_method: dare_linear\nbase_model: base\nparameters: {rescale: false}\n" + ONE,
         "rescale: false is not supported for dare_linear: fusecli's dare_linear always works as rescale: true"),
        (TIES + "parameters: {lambda: 0.5}\n" + ONE, "parameters.lambda: 0.5 is not supported"),
        (TIES + "parameters: {epsilon: 0.1}\n" + ONE, "parameters.epsilon is not an option fusecli shares for ties"),
        ("merge_method: ties\nbase_model: base\nmodels: [{model: a, parameters: {weight: 1, normalize: false}}]",
         "mergekit reads normalize from the top-level parameters only"),
        ("merge_method: sce\nbase_model: base\nmodels: [{model: a, parameters: {weight: 1}}]",
         "parameters.weight is not a per-model option fusecli shares for sce"),
        ("merge_method: linear\nbase_model: base\nmodels: [{model: a, parameters: {weight: 1}}]",
         "base_model of a linear merge is averaged too"),
        ("merge_method: ties\nbase_model: base\nmodels: [{model: base}]", "models lists only the base_model"),
        ("merge_method: ties\nbase_model: base\nmodels: []", "models must be a list"),
        ("merge_method: linear\ndtype: int64\nmodels: [{model: a, parameters: {weight: 1}}]", "dtype 'int64'"),
        ("merge_method: sce\nbase_model: base\nparameters: {select_topk: 0}\nmodels: [{model: a}]",
         "select_topk = 0.0 must be in (0, 1]"),
        ("merge_method: [ties", "is not valid YAML"),
    ],
)  # fmt: skip
def test_what_fusecli_does_not_share_is_refused_naming_the_key(ws, text, match):
    with pytest.raises(FusecliError) as err:
        read(ws, text).params()
    assert match in str(err.value) and "\n" not in str(err.value)


def test_an_output_dtype_other_than_the_bases_is_refused(ws):
    spec = read(ws, "merge_method: linear\ndtype: float32\nmodels: [{model: a, parameters: {weight: 1}}]")
    spec.check_dtype("F32")
    with pytest.raises(FusecliError, match="dtype float32 but fusecli writes the base's dtype \\(bfloat16\\)"):
        spec.check_dtype("BF16")

import pytest
import yaml

from fusecli.errors import FusecliError
from fusecli.merge.mergekit import mergekit_yaml
from fusecli.merge.params import merge_params


def test_ties_exports_per_model_and_global_parameters(tmp_path):
    text = mergekit_yaml(
        merge_params("ties", weight=(0.5, 0.25)), tmp_path / "base", [tmp_path / "a", tmp_path / "b"], "BF16"
    )
    config = yaml.safe_load(text)
    assert config == {
        "merge_method": "ties",
        "base_model": str(tmp_path / "base"),
        "models": [
            {"model": str(tmp_path / "a"), "parameters": {"weight": 0.5, "density": 0.6}},
            {"model": str(tmp_path / "b"), "parameters": {"weight": 0.25, "density": 0.6}},
        ],
        "parameters": {"normalize": True},
        "dtype": "bfloat16",
    }


def test_linear_has_no_base_and_uniform_default_weights(tmp_path):
    config = yaml.safe_load(mergekit_yaml(merge_params("linear"), tmp_path, [tmp_path / "a", tmp_path / "b"]))
    assert "base_model" not in config
    assert [m["parameters"]["weight"] for m in config["models"]] == [0.5, 0.5]


def test_sce_sparse_exports_select_topk(tmp_path):
    config = yaml.safe_load(mergekit_yaml(merge_params("sce", variant="sparse"), tmp_path, [tmp_path / "a"]))
    assert config["merge_method"] == "sce" and config["parameters"] == {"select_topk": 0.1}
    assert "parameters" not in config["models"][0]


@pytest.mark.parametrize(
    "params,match",
    [
        (merge_params("varm"), "mergekit has no 'varm' method"),
        (merge_params("sce", variant="release", select_topk=0.1), "variant=sparse"),
    ],
)
def test_methods_mergekit_lacks_are_refused(tmp_path, params, match):
    with pytest.raises(FusecliError, match=match):
        mergekit_yaml(params, tmp_path, [tmp_path / "a"])

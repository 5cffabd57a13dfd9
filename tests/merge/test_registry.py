import pytest
import torch

from fusecli.errors import FusecliError
from fusecli.merge import MergeParams, get_method, method_names, register
from fusecli.merge.registry import _METHODS


def test_every_method_is_registered():
    assert method_names() == ["dare_linear", "dare_ties", "linear", "sce", "task_arithmetic", "ties", "varm"]


def test_unknown_method_names_the_choices():
    with pytest.raises(FusecliError, match="unknown merge method 'slerp': choose one of dare_linear"):
        get_method("slerp")


def test_registering_twice_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        register("sce")(lambda *a, **k: None)


def test_registering_a_new_method_touches_nothing_else():
    @register("pick_first")
    def pick_first(base, models, params, *, name=""):
        """Pick the first model."""
        return models[0], None

    try:
        merged, _ = get_method("pick_first")(torch.zeros(2), [torch.ones(2), torch.zeros(2)], MergeParams())
        assert merged.tolist() == [1.0, 1.0]
    finally:
        del _METHODS["pick_first"]


def test_resolve_fills_defaults_and_checks_weight_count():
    ties = get_method("ties")
    assert ties.resolve(MergeParams(method="ties"), 2).weight == (0.2, 0.2)
    assert ties.resolve(MergeParams(method="ties", normalize=False), 2).normalize is False
    assert get_method("linear").resolve(MergeParams(method="linear"), 4).weight == (0.25,) * 4
    with pytest.raises(FusecliError, match="3 values for 2 models"):
        ties.resolve(MergeParams(method="ties", weight=(0.1, 0.2, 0.3)), 2)

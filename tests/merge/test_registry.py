from dataclasses import dataclass

import pytest
import torch

from fusecli.errors import FusecliError
from fusecli.merge import get_method, merge_params, method_names, register
from fusecli.merge.registry import _METHODS


def test_every_method_is_registered():
    assert method_names() == [
        "dare_linear", "dare_ties", "fisher_gate", "linear", "sce", "task_arithmetic", "ties", "varm"
    ]  # fmt: skip


def test_unknown_method_names_the_choices():
    with pytest.raises(FusecliError, match="unknown merge method 'slerp': choose one of dare_linear"):
        get_method("slerp")


@dataclass(frozen=True)
class PickOptions:
    index: int = 0


def test_registering_twice_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        register("sce", options=PickOptions)(lambda *a, **k: None)


def test_registering_a_new_method_touches_nothing_else():
    @register("pick", options=PickOptions)
    def pick(base, models, params, *, name=""):
        """Pick one model."""
        return models[params.index], None

    try:
        options = merge_params("pick", index=1).options
        merged, _ = get_method("pick")(torch.zeros(2), [torch.ones(2), torch.full((2,), 2.0)], options)
        assert merged.tolist() == [2.0, 2.0]
        with pytest.raises(FusecliError, match="unknown key 'density'"):
            merge_params("pick", density=0.5)
    finally:
        del _METHODS["pick"]


def test_resolve_gives_one_weight_per_model_and_checks_the_count():
    ties = get_method("ties")
    assert ties.resolve(merge_params("ties").options, 2).weight == (0.2, 0.2)
    assert ties.resolve(merge_params("ties", normalize=False).options, 2).normalize is False
    assert get_method("linear").resolve(merge_params("linear").options, 4).weight == (0.25,) * 4
    with pytest.raises(FusecliError, match="3 values for 2 models"):
        ties.resolve(merge_params("ties", weight=(0.1, 0.2, 0.3)).options, 2)

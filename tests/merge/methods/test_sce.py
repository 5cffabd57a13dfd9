import numpy as np
import pytest
import torch

from fusecli.merge import get_method, merge_params
from fusecli.merge.methods.sce import SceOptions

from .. import reference


@pytest.mark.parametrize("variant", ["release", "sparse"])
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_sce_matches_numpy_reference(run_merge, inputs, variant, tau):
    out, report = run_merge(method="sce", variant=variant, select_topk=tau)
    etas = {}

    def ref(base, models, name):
        merged, etas[name] = reference.sce(base, models, tau, variant)
        return merged

    reference.compare_with_reference(out, inputs.base, inputs.models, ref)
    assert report["coefficient"] == "eta"
    for name, eta in etas.items():
        np.testing.assert_allclose([report["coefficients"][name][m] for m in ("m1", "m2", "m3")], eta, rtol=1e-5)


def test_variants_agree_at_tau_one_and_differ_below():
    torch.manual_seed(0)
    base = torch.randn(16, 8)
    models = [base + 0.1 * torch.randn(16, 8) for _ in range(3)]
    models[0][:4] = base[:4]  # zero deltas in one model
    for m in models:
        m[4:6] = base[4:6] + 0.5  # equal deltas: zero variance
    sce = get_method("sce")
    at = {v: sce(base, models, SceOptions(v, 1.0))[0] for v in ("release", "sparse")}
    assert torch.equal(at["release"], at["sparse"])
    below = {v: sce(base, models, SceOptions(v, 0.1))[0] for v in ("release", "sparse")}
    assert not torch.equal(below["release"], below["sparse"])


def test_sign_of_zero_sum_is_positive_and_zero_denominator_keeps_base():
    base = torch.zeros(3)
    models = [torch.tensor([1.0, 0.0, 2.0]), torch.tensor([-1.0, 0.0, 2.0])]
    merged, coefficients = get_method("sce")(base, models, merge_params("sce", select_topk=1.0).options)
    # position 0: deltas +1 and -1 sum to 0 -> elected +, only the first model counts
    # position 1: no model moved -> denominator 0 counts as 1 -> stays at the base
    assert merged.tolist() == [1.0, 0.0, 2.0]
    assert coefficients == {"eta": [0.5, 0.5]}


def test_untouched_tensor_gives_uniform_eta_and_the_base():
    base = torch.randn(4, 4)
    merged, coefficients = get_method("sce")(base, [base.clone(), base.clone()], merge_params("sce").options)
    assert torch.equal(merged, base)
    assert coefficients == {"eta": [0.5, 0.5]}


def test_result_is_cast_back_to_base_dtype():
    base = torch.randn(8, 8).to(torch.bfloat16)
    models = [(base.float() + 0.01 * torch.randn(8, 8)).to(torch.bfloat16) for _ in range(2)]
    merged, _ = get_method("sce")(base, models, merge_params("sce").options)
    assert merged.dtype == torch.bfloat16

import numpy as np
import torch

from fusecli.merge import get_method, merge_params

from .. import reference


def test_varm_matches_numpy_reference(run_merge, inputs):
    out, report = run_merge(method="varm")
    weights = {}

    def ref(base, models, name):
        merged, weights[name] = reference.varm(base, models)
        return merged

    reference.compare_with_reference(out, inputs.base, inputs.models, ref)
    assert report["coefficient"] == "weight"
    for name, w in weights.items():
        np.testing.assert_allclose(list(report["coefficients"][name].values()), w, rtol=1e-5)
    # m1 left the norms untouched: it gets no weight there
    assert report["coefficients"]["model.norm.weight"]["m1"] == 0.0


def test_untouched_tensor_gives_uniform_weights():
    base = torch.randn(4)
    merged, coefficients = get_method("varm")(base, [base.clone(), base.clone()], merge_params("varm").options)
    assert torch.equal(merged, base)
    assert coefficients == {"weight": [0.5, 0.5]}

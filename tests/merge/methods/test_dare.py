import numpy as np
import pytest
import torch

from fusecli.merge import get_method, merge_params
from fusecli.merge.methods.dare import dare_mask

from .. import reference


@pytest.mark.parametrize("method,consensus", [("dare_linear", False), ("dare_ties", True)])
def test_dare_matches_numpy_reference_with_the_same_masks(run_merge, inputs, method, consensus):
    out, report = run_merge(method=method, seed=7)
    assert report["options"]["seed"] == 7 and report["options"]["density"] == 0.6

    def ref(base, models, name):
        masks = [dare_mask(base.shape, 0.6, 7, name, i).numpy() for i in range(len(models))]
        d = reference.task_vectors(base, models) * np.stack(masks) / 0.6
        return reference.generalized(base, d, [0.2] * 3, consensus=consensus, normalize=True)

    reference.compare_with_reference(out, inputs.base, inputs.models, ref)


def test_same_seed_same_result_other_seed_other_result(run_merge):
    a, _ = run_merge("a", method="dare_ties", seed=1)
    b, _ = run_merge("b", method="dare_ties", seed=1)
    c, _ = run_merge("c", method="dare_ties", seed=2)
    name = "model.layers.0.mlp.up_proj.weight"
    assert all((a[n] == b[n]).all() for n in a)
    assert not (a[name] == c[name]).all()


def test_mask_depends_on_tensor_name_and_model_and_keeps_about_density():
    m = dare_mask((200, 100), 0.6, 0, "x", 0)
    assert abs(m.float().mean().item() - 0.6) < 0.01
    assert torch.equal(m, dare_mask((200, 100), 0.6, 0, "x", 0))
    assert not torch.equal(m, dare_mask((200, 100), 0.6, 0, "y", 0))
    assert not torch.equal(m, dare_mask((200, 100), 0.6, 0, "x", 1))


def test_density_one_is_task_arithmetic_normalised():
    torch.manual_seed(0)
    base = torch.randn(5, 5)
    models = [base + torch.randn(5, 5) for _ in range(2)]
    merged, _ = get_method("dare_linear")(base, models, merge_params("dare_linear", density=1.0).options)
    torch.testing.assert_close(merged, base + sum(m - base for m in models) / 2)

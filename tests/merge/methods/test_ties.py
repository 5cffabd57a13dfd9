import pytest
import torch

from fusecli.merge import get_method, merge_params

from .. import reference


@pytest.mark.parametrize("density", [0.6, 0.25])
def test_ties_matches_numpy_reference(run_merge, inputs, density):
    out, report = run_merge(method="ties", density=density)
    assert report["options"] == {"method": "ties", "weight": [0.2] * 3, "density": density, "normalize": True}
    reference.compare_with_reference(
        out, inputs.base, inputs.models, lambda b, ms, n: reference.ties(b, ms, [0.2] * 3, density)
    )


def test_density_one_keeps_everything():
    torch.manual_seed(0)
    base = torch.randn(6, 6)
    models = [base + torch.randn(6, 6) for _ in range(2)]
    merged, _ = get_method("ties")(base, models, merge_params("ties", density=1.0).options)
    expected = reference.generalized(
        base.numpy(), reference.task_vectors(base.numpy(), [m.numpy() for m in models]), [0.2, 0.2], True, True
    )
    torch.testing.assert_close(merged, torch.from_numpy(expected).float())

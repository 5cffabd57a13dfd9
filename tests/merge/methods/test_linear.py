import pytest

from .. import reference


def test_default_is_uniform_average(run_merge, inputs):
    out, report = run_merge(method="linear")
    assert report["options"] == {"method": "linear", "weight": [1 / 3] * 3, "normalize": True}
    assert report["coefficient"] is None
    reference.compare_with_reference(
        out, inputs.base, inputs.models, lambda b, ms, n: reference.linear(ms, [1 / 3] * 3, True)
    )


@pytest.mark.parametrize("normalize", [True, False])
def test_weights_per_model(run_merge, inputs, normalize):
    weights = [0.5, 0.2, 0.1]
    out, _ = run_merge(method="linear", weight=tuple(weights), normalize=normalize)
    reference.compare_with_reference(
        out, inputs.base, inputs.models, lambda b, ms, n: reference.linear(ms, weights, normalize)
    )

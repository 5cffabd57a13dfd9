import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fusecli.errors import FusecliError
from fusecli.merge import get_method, merge_models, merge_params
from fusecli.merge import run as merge_run

from .. import reference
from ..conftest import load_tensors


def plain_fisher_gate(base, models, importance, weights, gamma):
    """The formula element by element: theta_0 + sum_i w_i (F_i / max_j F_j)^gamma delta_i, gate 1 where all F are 0."""
    out = np.array(base, dtype=np.float64)
    for idx in np.ndindex(base.shape):
        top = max(float(f[idx]) for f in importance)
        for m, f, w in zip(models, importance, weights, strict=True):
            gate = 1.0 if top <= 0 else (float(f[idx]) / top) ** gamma
            out[idx] += w * gate * (float(np.float32(m[idx]) - np.float32(base[idx])))
    return out


def random_case(seed, shape=(5, 7), n=3):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    models = [base + torch.randn(shape, generator=g) for _ in range(n)]
    importance = [torch.rand(shape, generator=g) ** 4 for _ in range(n)]  # spread over orders of magnitude
    importance[0][0] = 0.0  # a row no model's data needs: the plain sum
    for f in importance:
        f[1] = 0.0
    importance[1][2, :3] = 0.0  # one model indifferent where others care
    return base, models, importance


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("weight", [1.0, (0.5, 1.0, 2.0)])
def test_matches_the_plain_formula(gamma, weight):
    base, models, importance = random_case(0)
    params = merge_params("fisher_gate", gamma=gamma, weight=weight).options
    merged, coefficients = get_method("fisher_gate")(base, models, params, importance=importance)
    weights = weight if isinstance(weight, tuple) else (weight,) * 3
    expected = plain_fisher_gate(base.numpy(), [m.numpy() for m in models], [f.numpy() for f in importance], weights,
                                 gamma)  # fmt: skip
    np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert coefficients is None


def test_gamma_zero_is_the_plain_sum_and_a_large_gamma_keeps_the_most_important_model():
    base, models, importance = random_case(1)
    summed, _ = get_method("task_arithmetic")(base, models, merge_params("task_arithmetic", weight=1.0).options)
    gated, _ = get_method("fisher_gate")(base, models, merge_params("fisher_gate", gamma=0.0).options,
                                         importance=importance)  # fmt: skip
    torch.testing.assert_close(gated, summed)
    hard, _ = get_method("fisher_gate")(base, models, merge_params("fisher_gate", gamma=200.0).options,
                                        importance=importance)  # fmt: skip
    winner = torch.stack(importance).argmax(dim=0)
    deltas = torch.stack(models) - base
    expected = base + deltas.gather(0, winner[None]).squeeze(0)
    cared = torch.stack(importance).amax(dim=0) > 0
    torch.testing.assert_close(hard[cared], expected[cared], rtol=1e-4, atol=1e-4)


def test_a_model_whose_data_never_needs_a_parameter_adds_nothing_there():
    base = torch.zeros(4)
    models = [torch.ones(4), torch.full((4,), 2.0)]
    importance = [torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 1.0, 0.0])]
    merged, _ = get_method("fisher_gate")(base, models, merge_params("fisher_gate").options, importance=importance)
    assert merged.tolist() == [1.0, 3.0, 2.0, 3.0]  # only m1; both (equal need); only m2; nobody's: the sum


def test_without_importance_it_stops_with_the_fix():
    base, models, _ = random_case(2)
    with pytest.raises(FusecliError, match="fisher@<slug>"):
        get_method("fisher_gate")(base, models, merge_params("fisher_gate").options)


@pytest.mark.parametrize("gamma", [float("nan"), -1.0, float("inf")])
def test_bad_gamma(gamma):
    with pytest.raises(FusecliError, match="merge.fisher_gate.gamma"):
        merge_params("fisher_gate", gamma=gamma).options.validate()


def write_importance(tiny, root, seed=0):
    """An importance folder per tiny model (its own tensor names and shapes), as fisher@<slug> writes them."""
    g = torch.Generator().manual_seed(seed)
    paths = {}
    for label, path in tiny.models:
        folder = root / label
        folder.mkdir(parents=True)
        (folder / "config.json").write_text((path / "config.json").read_text())
        tensors = {n: torch.rand(v.shape, generator=g) ** 3 for n, v in load_tensors(path).items()}
        save_file(tensors, folder / "model.safetensors")
        paths[label] = folder
    return paths


def test_streamed_merge_matches_the_formula_block_by_block(tiny, tmp_path, monkeypatch):
    importance = write_importance(tiny, tmp_path / "fisher")
    params = merge_params("fisher_gate", gamma=0.5)
    whole = merge_models(tiny.base, tiny.models, params, tmp_path / "whole", importance=importance)
    base = load_tensors(tiny.base)
    models = [load_tensors(p) for _, p in tiny.models]
    imp = [load_tensors(importance[label]) for label, _ in tiny.models]
    reference.compare_with_reference(
        load_tensors(whole.out), base, models,
        lambda b, ms, n: plain_fisher_gate(b, ms, [f[n][: b.shape[0]] for f in imp], (1.0,) * 3, 0.5),
    )  # fmt: skip
    monkeypatch.setattr(merge_run, "BLOCK_ELEMENTS", 100)
    blocked = merge_models(tiny.base, tiny.models, params, tmp_path / "blocked", importance=importance)
    assert reference.files(blocked.out) == reference.files(whole.out)


def test_missing_or_stale_importance_stops_before_writing(tiny, tmp_path):
    importance = write_importance(tiny, tmp_path / "fisher")
    params = merge_params("fisher_gate")
    with pytest.raises(FusecliError, match="has none"):
        merge_models(tiny.base, tiny.models, params, tmp_path / "out", importance={"m1": importance["m1"]})
    wrong = dict(importance, m2=importance["m3"].parent / "other")
    write_importance(tiny, tmp_path / "other-root")
    (tmp_path / "other-root" / "m1").rename(wrong["m2"])  # another model's tensor names are the same: shape test
    save_file({"model.norm.weight": torch.ones(3)}, wrong["m2"] / "model.safetensors")
    with pytest.raises(FusecliError, match="rerun its fisher stage"):
        merge_models(tiny.base, tiny.models, params, tmp_path / "out", importance=wrong)
    assert not (tmp_path / "out").exists()

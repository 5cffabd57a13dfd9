import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from rich.console import Console
from rich.progress import Progress
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch
from transformers import AutoModelForCausalLM

from fusecli.errors import FusecliError
from fusecli.merge import merge_models, merge_params
from fusecli.merge.io import ShardedWriter

from . import reference
from .conftest import load_tensors, rewrite


def test_output_loads_and_generates(tiny, tmp_path):
    result = merge_models(tiny.base, tiny.models, merge_params("sce", max_shard_size="20KB"), tmp_path / "merged")
    out = result.out
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    model = AutoModelForCausalLM.from_pretrained(out)
    generated = model.generate(torch.tensor([[1, 5, 7]]), max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 6)
    card = (out / "README.md").read_text()
    assert "**sce**" in card and "select_topk: 0.1" in card and str(tiny.base) in card and str(tiny.m3) in card
    assert (out / "chat_template.jinja").exists() and (out / "tokenizer_config.json").exists()
    assert not (out / "training_args.bin").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


class CountingProgress(Progress):
    """The stages' bar, counting what the merge reports."""

    def __init__(self):
        super().__init__(console=Console(file=io.StringIO()))
        self.advances: list[float] = []

    def advance(self, task_id, advance=1):
        self.advances.append(advance)
        super().advance(task_id, advance)


def test_merge_reports_progress_per_block_written(tiny, tmp_path):
    progress = CountingProgress()
    result = merge_models(tiny.base, tiny.models, merge_params("ties"), tmp_path / "merged", progress=progress)
    (task,) = progress.tasks
    written = sum(t.nbytes for t in load_tensors(result.out).values())
    assert task.description == "merge ties" and task.finished
    assert task.total == task.completed == sum(progress.advances) == written
    assert len(progress.advances) >= result.report["num_tensors"]  # one advance per row block, at least one each


def test_coefficients_csv_matches_report(tiny, tmp_path):
    result = merge_models(tiny.base, tiny.models, merge_params("varm"), tmp_path / "merged")
    rows = list(csv.DictReader((result.out / "merge_coefficients.csv").open()))
    report = json.loads((result.out / "merge_report.json").read_text())
    assert len(rows) == 3 * report["num_tensors"]
    for row in rows:
        assert float(row["weight"]) == report["coefficients"][row["tensor"]][row["model"]]


def test_sharded_input_gives_the_same_output(tiny, tmp_path):
    a = merge_models(tiny.base, tiny.models, merge_params("sce"), tmp_path / "a").out
    sharded = [("m1", tiny.m1_sharded), ("m2", tiny.m2), ("m3", tiny.m3)]
    b = merge_models(tiny.base, sharded, merge_params("sce"), tmp_path / "b").out
    assert reference.files(a) == reference.files(b)


def test_grown_vocabulary_is_cropped_and_reported(tiny, inputs, tmp_path):
    models = [("m1", tiny.m1), ("m2", tiny.m2), ("m3", tiny.m3_grown)]
    result = merge_models(tiny.base, models, merge_params("linear"), tmp_path / "merged")
    cropped = {(c["model"], c["tensor"]): (c["from"], c["to"]) for c in result.report["cropped"]}
    assert cropped == {
        ("m3", "model.embed_tokens.weight"): ([104, 32], [96, 32]),
        ("m3", "lm_head.weight"): ([104, 32], [96, 32]),
    }
    grown = load_tensors(tiny.m3_grown)
    reference.compare_with_reference(
        load_tensors(result.out),
        inputs.base,
        [*inputs.models[:2], grown],
        lambda b, ms, n: reference.linear(ms, [1 / 3] * 3, True),
    )
    assert "cropped from [104, 32] to [96, 32]" in (result.out / "README.md").read_text()


def test_model_with_tied_embeddings_gives_its_embedding_as_lm_head(tiny, inputs, tmp_path):
    models = [("m1", tiny.m1), ("m2", tiny.m2_tied), ("m3", tiny.m3)]
    result = merge_models(tiny.base, models, merge_params("linear"), tmp_path / "merged")
    assert result.report["tied"] == [{"model": "m2", "tensor": "lm_head.weight", "source": "model.embed_tokens.weight"}]
    out = load_tensors(result.out)
    expected = reference.linear(
        [
            inputs.models[0]["lm_head.weight"],
            inputs.models[1]["model.embed_tokens.weight"],
            inputs.models[2]["lm_head.weight"],
        ],
        [1 / 3] * 3,
        True,
    )
    np.testing.assert_allclose(out["lm_head.weight"], expected, rtol=1e-5, atol=1e-7)


def test_tied_base_ignores_the_models_lm_head(tiny, tmp_path):
    result = merge_models(tiny.base_tied, tiny.models, merge_params("sce"), tmp_path / "merged")
    assert "lm_head.weight" not in load_tensors(result.out)
    assert {i["model"] for i in result.report["ignored"]} == {"m1", "m2", "m3"}
    model = AutoModelForCausalLM.from_pretrained(result.out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_bf16_base_gives_bf16_output(tiny, tmp_path):
    tensors = load_tensors(tiny.base)
    bf16 = tmp_path / "base_bf16"
    shutil.copytree(tiny.base, bf16)
    save_torch({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}, bf16 / "model.safetensors")
    result = merge_models(bf16, tiny.models, merge_params("ties"), tmp_path / "merged")
    with safe_open(next(result.out.glob("*.safetensors")), framework="pt") as f:
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())


def _expect_error(tiny, tmp_path, models, match, base=None):
    out = tmp_path / "merged"
    with pytest.raises(FusecliError, match=match) as exc:
        merge_models(base or tiny.base, models, merge_params("sce"), out)
    assert "\n" not in str(exc.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]


def test_different_architecture_is_refused(tiny, tmp_path):
    llama = rewrite(tiny.m2, tmp_path / "llama", config={"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    _expect_error(tiny, tmp_path, [("m1", tiny.m1), ("llama", llama)], r"LlamaForCausalLM \(llama\) but the base is")


def test_missing_tensor_is_refused(tiny, tmp_path):
    partial = rewrite(tiny.m2, tmp_path / "partial", drop=("model.layers.1.mlp.up_proj.weight",))
    _expect_error(tiny, tmp_path, [("m1", tiny.m1), ("p", partial)], "lacks tensor 'model.layers.1.mlp.up_proj.weight'")


def test_extra_tensor_is_refused(tiny, tmp_path):
    extra = rewrite(tiny.m2, tmp_path / "extra")
    tensors = load_tensors(extra)
    tensors["model.layers.2.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"]
    save_numpy(tensors, extra / "model.safetensors")
    _expect_error(
        tiny, tmp_path, [("m1", tiny.m1), ("x", extra)], "'model.layers.2.mlp.up_proj.weight' that the base lacks"
    )


def test_other_shape_mismatch_is_refused(tiny, tmp_path):
    odd = rewrite(tiny.m2, tmp_path / "odd")
    tensors = load_tensors(odd)
    tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((65, 32), dtype=np.float32)
    save_numpy(tensors, odd / "model.safetensors")
    _expect_error(tiny, tmp_path, [("m1", tiny.m1), ("odd", odd)], r"shape \[65, 32\] but the base has \[64, 32\]")


def test_duplicates_and_missing_base_are_refused(tiny, tmp_path):
    _expect_error(tiny, tmp_path, [("a", tiny.m1), ("b", tiny.m1)], "given twice")
    _expect_error(tiny, tmp_path, [("a", tiny.m1)], "not found", base=tmp_path / "nowhere")
    _expect_error(tiny, tmp_path, [], "no models")
    with pytest.raises(FusecliError, match="would replace the input"):
        merge_models(tiny.base, tiny.models, merge_params("sce"), tiny.m2)


def test_cuda_request_without_cuda_is_refused(tiny, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(FusecliError, match="no CUDA device"):
        merge_models(tiny.base, tiny.models, merge_params("sce", device="cuda"), tmp_path / "merged")


def test_failure_midway_leaves_no_output_and_keeps_the_old_one(tiny, tmp_path, monkeypatch):
    out = tmp_path / "merged"
    merge_models(tiny.base, tiny.models, merge_params("linear"), out)
    before = reference.files(out)
    calls = []

    def add(self, name, tensor):
        calls.append(name)
        if len(calls) == 5:
            raise RuntimeError("disk full")

    monkeypatch.setattr(ShardedWriter, "add", add)
    with pytest.raises(RuntimeError, match="disk full"):
        merge_models(tiny.base, tiny.models, merge_params("sce"), out)
    assert reference.files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["sce", "varm", "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"])
def test_cuda_matches_cpu(tiny, tmp_path, method):
    cpu = merge_models(tiny.base, tiny.models, merge_params(method), tmp_path / "cpu")
    gpu = merge_models(tiny.base, tiny.models, merge_params(method, device="cuda"), tmp_path / "gpu")
    a, b = load_tensors(cpu.out), load_tensors(gpu.out)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_merge_writes_the_card_into_the_folder(tiny, tmp_path):
    params = merge_params("ties", weight=[0.5, 0.3, 0.2])
    out = merge_models(tiny.base, tiny.models, params, tmp_path / "merged").out
    data = ModelCard.load(out / "README.md").data.to_dict()
    report = json.loads((out / "merge_report.json").read_text())
    assert data["fusecli"]["merge"] == report["options"] and data["fusecli"]["merged"]["models"] == report["models"]

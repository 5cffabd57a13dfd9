"""The step-speed options of the fuse section: kernels, selective checkpointing, memory estimate, optimizer."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from fusecli.config import from_dict
from fusecli.errors import FusecliError
from fusecli.fuse.kernels import apply_kernels
from fusecli.fuse.memory import Shape, estimate_bytes, layers_to_checkpoint, shape_of
from fusecli.fuse.train import FuseParams, checkpoint_layers, training_args
from fusecli.perf import random_qwen2

GIB = 2**30


def tiny_qwen2(layers: int = 3, seed: int = 0) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=500, max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg)


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_checkpointing_some_layers_keeps_loss_and_gradients():
    ids = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(1))
    plain = tiny_qwen2().train()
    partial = copy.deepcopy(plain)
    checkpoint_layers(partial, 2)
    assert [layer.gradient_checkpointing for layer in partial.model.layers] == [True, True, False]
    assert partial.checkpointed_layers == 2
    ref_loss, ref_grads = loss_and_grads(plain, ids)
    loss, grads = loss_and_grads(partial, ids)
    assert torch.equal(loss, ref_loss)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-6)


def test_checkpointing_no_layer_leaves_the_model_alone():
    model = tiny_qwen2()
    checkpoint_layers(model, 0)
    assert not any(layer.gradient_checkpointing for layer in model.model.layers)


def test_memory_estimate_picks_fewest_checkpointed_layers():
    shape = shape_of(tiny_qwen2(layers=4))
    assert shape.layers == 4 and shape.hidden == 64 and shape.intermediate == 128
    tokens = 8192
    sizes = [estimate_bytes(shape, tokens, n, 0, 1, 2048) for n in range(5)]
    assert sizes[:-1] == sorted(sizes[:-1], reverse=True)  # each checkpointed layer saves memory but the last
    assert layers_to_checkpoint(shape, tokens, sizes[0] / 0.9 + 1) == 0  # room for everything
    assert layers_to_checkpoint(shape, tokens, sizes[2] / 0.9 + 1) == 2
    assert layers_to_checkpoint(shape, tokens, 1.0) == 4  # nothing fits: checkpoint all, let it fail loudly


def test_memory_estimate_on_the_benchmark_shapes():
    """What the GPU profile chooses on a 141 GB card (docs/benchmarks.md compares with measured peaks)."""
    h200 = 139 * GIB

    def shape(size: str) -> Shape:
        return shape_of(random_qwen2(size, torch.bfloat16, torch.device("meta")))

    assert layers_to_checkpoint(shape("1.5b"), 4 * 2048, h200) == 0  # 1.5B, micro-batch 4: no recomputation
    assert layers_to_checkpoint(shape("7b"), 2048, h200) == 28  # 7B on one GPU: every layer
    assert layers_to_checkpoint(shape("7b"), 4 * 2048, h200, zero_stage=3, world=8) < 28


def test_fuse_options_are_checked():
    for bad, word in (({"optim": "sgd"}, "fuse.optim"), ({"kernels": "magic"}, "fuse.kernels"),
                      ({"gradient_checkpointing": "some"}, "fuse.gradient_checkpointing")):
        with pytest.raises(FusecliError, match=word):
            FuseParams(**bad).validate()
    p = from_dict(FuseParams, {"gradient_checkpointing": "auto", "optim": "adamw_torch_fused", "kernels": "liger"},
                  "fuse")
    p.validate()
    assert p.gradient_checkpointing == "auto"


def test_cpu_keeps_the_plain_step(tmp_path):
    """The GPU profile's keys change nothing on CPU: no fused optimizer, no kernels, no checkpointing."""
    p = FuseParams(optim="adamw_torch_fused", kernels="liger", gradient_checkpointing="auto")
    args = training_args(p, tmp_path, torch.device("cpu"), torch.float32)
    assert args.optim == "adamw_torch"
    model = tiny_qwen2()
    before = copy.deepcopy(model.state_dict())
    apply_kernels(model, "liger", torch.device("cpu"))
    assert model.model.norm.forward.__func__.__module__.startswith("transformers")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(FusecliError, match="fuse.kernels"):
        apply_kernels(model, "magic", torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="liger-kernel's kernels are Triton: CUDA GPU only")
def test_liger_kernels_match_the_plain_model_on_gpu():
    pytest.importorskip("liger_kernel", reason="liger-kernel not installed")
    device = torch.device("cuda")
    ids = torch.randint(0, 500, (2, 64), generator=torch.Generator().manual_seed(2)).to(device)
    plain = tiny_qwen2().to(device).train()
    fused = copy.deepcopy(plain)
    apply_kernels(fused, "liger", device)
    assert "liger" in fused.model.norm.forward.__func__.__module__  # liger binds its forward to the instance
    ref_loss, ref_grads = loss_and_grads(plain, ids)
    loss, grads = loss_and_grads(fused, ids)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        assert (g - r).norm() <= 1e-3 * r.norm() + 1e-6

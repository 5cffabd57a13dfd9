"""Which CPU-dispatch settings change the bits a demo-sized training computes (docs/cpu-numerics.md).

    OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 .venv/bin/python -m benchmarks.cpu_numerics

Trains a Llama of the demo's size (about 1M parameters, float32, one thread, deterministic kernels) for
`--steps` AdamW steps on fixed random tokens and prints the ATen capability, the final loss, a hash of
the final weights and the wall time. Run it under each setting, and on each CPU model, and compare the
hashes: equal hashes mean equal bits. The settings are environment variables read when torch loads, so
each needs its own process.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SETTINGS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the thread count changes the bits too (README, "Determinism")
    torch.use_deterministic_algorithms(True)
    config = LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=512, max_position_embeddings=128)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    tokens = torch.randint(0, 512, (16, 64), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - start
    weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    env = " ".join(f"{k}={os.environ[k]}" for k in SETTINGS if k in os.environ) or "(no settings)"
    print(f"{env}: capability {torch.backends.cpu.get_cpu_capability()}, loss {loss.item():.10f}, "
          f"weights {weights[:16]}, {seconds:.1f} s")


if __name__ == "__main__":
    main()

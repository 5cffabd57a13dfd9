"""The extract stage across hosts: 2 "nodes" of 1 process each, on localhost, through torchrun's c10d rendezvous.

This is the launch README.md gives for a cluster (`torchrun --nnodes N --rdzv_backend c10d --rdzv_endpoint
HOST:PORT` on every host); here two torchrun agents on one CPU machine, gloo backend. The store they write
together must equal, byte for byte, the store of one process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fusecli.extract.run import ExtractParams, ModelRef, extract
from fusecli.store import read_manifest
from tests.tiny import write_dataset, write_model

pytestmark = pytest.mark.slow  # two torchrun nodes: make test, not make test-fast

ROOT = Path(__file__).resolve().parents[2]
PARAMS = dict(k=4, max_length=64, batch_tokens=200, shard_size=5)

WORKER = """
import sys
from fusecli.extract.run import ExtractParams, ModelRef, extract
ref = ModelRef(sys.argv[2])
extract(sys.argv[1], ref, sys.argv[3], ExtractParams(**{params}, device="cpu"))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_write_the_same_store_as_one_process(tmp_path):
    write_dataset(tmp_path / "train.parquet", 18)
    write_model(tmp_path / "pivot", "qwen2", 300)
    ref = ModelRef(str(tmp_path / "pivot"))
    extract(tmp_path / "train.parquet", ref, tmp_path / "single", ExtractParams(**PARAMS, device="cpu"))

    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(params=PARAMS))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
             "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "fusecli-test",
             str(worker), str(tmp_path / "train.parquet"), str(tmp_path / "pivot"), str(tmp_path / "multi")],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for _ in range(2)
    ]
    for node in nodes:
        out, _ = node.communicate(timeout=600)
        assert node.returncode == 0, out[-3000:]

    single, multi = read_manifest(tmp_path / "single"), read_manifest(tmp_path / "multi")
    assert multi["summary"]["world_size"] == 2
    assert multi["shards"] == single["shards"] and multi["records"] == single["records"] == 18
    names = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "multi").iterdir())  # part manifests merged away
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) == 4  # both nodes wrote shards: 0 and 2 on one, 1 and 3 on the other
    for name in shards:
        assert (tmp_path / "single" / name).read_bytes() == (tmp_path / "multi" / name).read_bytes()

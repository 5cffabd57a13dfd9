"""params.yaml `runtime`: the CPU thread count and deterministic kernels of every torch stage.

On CPU, torch splits a large reduction (a sum or norm over more than 32K elements) into one chunk per
thread, so the thread count changes the last bits of the result, and training carries them on. Left to
the environment (`OMP_NUM_THREADS`, or every core when unset), two runs of one stage on one machine
can differ; pinned from params.yaml, the count is content-hashed like any other setting and the output
is byte-identical whatever the environment says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fusecli.config import from_dict, read_yaml
from fusecli.errors import FusecliError


@dataclass(frozen=True)
class RuntimeParams:
    threads: int = 2  # torch intra-op CPU threads of every stage; the result depends on it on CPU
    deterministic: bool = True  # torch.use_deterministic_algorithms: no run-to-run nondeterministic kernels

    def validate(self) -> None:
        if self.threads < 1:
            raise FusecliError(f"runtime.threads = {self.threads} must be >= 1: set it to the cores a stage may use")


def pin_runtime(params: str | Path = "params.yaml") -> RuntimeParams:
    """Set torch's thread count and kernel determinism from params.yaml (its defaults without a `runtime`
    section: still fixed, never the environment's); call first in a stage's main."""
    runtime = from_dict(RuntimeParams, read_yaml(params).get("runtime", {}), "runtime")
    import torch

    torch.set_num_threads(runtime.threads)
    if runtime.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any CUDA work
        torch.use_deterministic_algorithms(True, warn_only=True)  # an op without a deterministic kernel warns
    return runtime


def start_stage(params: str | Path, lock: str | Path, models: bool = True) -> None:
    """The first call of every stage that spends minutes: hold the workspace lock (fusecli/busy.py), pin
    threads and kernels, then the preflight
    (fusecli/check.py) of params.yaml and (`models`: the stage loads weights) the pinned models, so a
    bad input stops it in seconds."""
    from fusecli.busy import hold_for_stage
    from fusecli.check import preflight

    hold_for_stage(".")  # until this process exits: fusecli commands that change the workspace wait for us
    pin_runtime(params)
    preflight(params, lock, models)

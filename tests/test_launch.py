"""Stages launched through `launch.*` (torchrun) must pass every argument through to the stage.

torchrun's parser matches abbreviations of its own options anywhere on the command line, also after
the training script: a stage option `--logs` was taken as an ambiguous `--logs-specs` and the fuse
stage failed under torchrun on the GPU machine. This checks every launched command in dvc.yaml.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from torch.distributed.run import get_args_parser

ROOT = Path(__file__).resolve().parents[1]


def launched_commands() -> list[tuple[str, str]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = []
    for name, stage in stages.items():
        cmd = stage.get("do", stage)["cmd"]
        if cmd.startswith("${launch."):
            out.append((name, cmd))
    return out


@pytest.mark.parametrize(("stage", "cmd"), launched_commands())
@pytest.mark.parametrize("launcher", [["--nproc_per_node", "2"], ["--nproc-per-node", "gpu", "--standalone"]])
def test_torchrun_hands_every_stage_argument_to_the_stage(stage: str, cmd: str, launcher: list[str]) -> None:
    rest = shlex.split(re.sub(r"\$\{[^}]+\}", "x", cmd.split(" ", 1)[1]))
    args = get_args_parser().parse_args([*launcher, *rest])
    assert (args.training_script, args.training_script_args) == (rest[0], rest[1:]), stage


def test_some_stages_are_launched() -> None:
    names = {name for name, _ in launched_commands()}
    assert {"extract_pivot", "extract", "fuse", "sft_baseline"} <= names

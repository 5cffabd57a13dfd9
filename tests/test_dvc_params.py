"""dvc.yaml hashes exactly the parameters that change a stage's output, so a speed-only edit reruns nothing.

Each stage lists its result-changing keys one by one; a key a section's dataclass names in `UNHASHED`
(worker processes, checkpoint interval) changes speed or resilience only, and the tests below prove
each of those claims byte for byte.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from fusecli.align.params import AlignParams
from fusecli.fuse.train import FuseParams

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def listed(stage: str, section: str) -> set[str]:
    """The keys of `section` that `stage` hashes (a whole-section entry counts as every key)."""
    spec = STAGES[stage].get("do", STAGES[stage])
    names = [p for p in spec.get("params", []) if isinstance(p, str)]
    if section in names:
        return set(PARAMS[section])
    return {p.split(".", 1)[1] for p in names if p.startswith(f"{section}.")}


@pytest.mark.parametrize(
    ("stage", "section", "cls", "also_unhashed"),
    [
        ("align", "align", AlignParams, set()),
        ("fuse", "fuse", FuseParams, set()),
        ("fuse_all", "fuse", FuseParams, set()),
        ("sft_baseline", "fuse", FuseParams, {"lam", "teacher", "gate"}),  # lambda 1: no fusion term
    ],
)
def test_a_stage_hashes_every_result_changing_key_and_no_other(stage, section, cls, also_unhashed):
    unhashed = set(cls.UNHASHED) | also_unhashed
    assert unhashed <= {f.name for f in dataclasses.fields(cls)}
    assert listed(stage, section) == set(PARAMS[section]) - unhashed


def test_sft_baseline_does_not_rerun_for_lambda_and_align_not_for_workers():
    assert "lam" not in listed("sft_baseline", "fuse")
    assert "lam" in listed("fuse", "fuse")
    assert "workers" not in listed("align", "align")

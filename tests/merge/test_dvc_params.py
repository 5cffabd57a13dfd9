"""Each `merge@<method>` stage depends on its own options only: real `dvc status` on a copy of dvc.yaml.

No stage runs: every output is a placeholder that `dvc commit --force` records in dvc.lock, so the
test sees exactly which stages DVC finds stale after one params.yaml edit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.dvcws import committed_workspace, stale_after

pytestmark = pytest.mark.slow  # real dvc status: make test, not make test-fast


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    return committed_workspace(tmp_path)


def test_one_methods_option_reruns_that_merge_evaluate_and_report(committed):
    assert stale_after(committed, lambda p: p["merge"]["sce"].update(select_topk=0.3)) == {
        "merge@sce", "evaluate", "report"
    }


def test_the_shared_merge_keys_rerun_every_merge(committed):
    methods = yaml.safe_load((committed / "params.yaml").read_text())["merge"]["methods"]
    assert stale_after(committed, lambda p: p["merge"].update(max_shard_size="2GB")) == {
        *(f"merge@{m}" for m in methods), "evaluate", "report"
    }

"""The score cache's code hash covers the whole scoring import closure (fusecli/closure.py)."""

import shutil
from pathlib import Path

import fusecli.evaluate.cache as cache
from fusecli.closure import ROOT, closure


def test_the_scoring_closure_holds_the_ce_the_prompt_and_the_loader():
    files = {str(p) for p in closure(cache.SCORING)}
    assert {"fusecli/extract/topk.py", "fusecli/data/render.py", "fusecli/models.py"} <= files


def test_editing_any_scoring_file_changes_the_hash(tmp_path, monkeypatch):
    for path in closure(cache.SCORING):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, tmp_path / path)
    monkeypatch.setattr(cache, "ROOT", tmp_path)
    before = cache.code_hash()
    topk = Path(tmp_path / "fusecli/extract/topk.py")
    topk.write_text(topk.read_text() + "\n# a CE fix\n")
    assert cache.code_hash() != before

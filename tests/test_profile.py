"""`fusecli profile`: a profile overlays params.yaml keeping comments; unknown keys are refused."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from fusecli.cli import app
from fusecli.config import load_section
from fusecli.fuse.train import FuseParams

ROOT = Path(__file__).resolve().parents[1]


def run(ws: Path, *args: str):
    return CliRunner().invoke(app, ["--workspace", str(ws), "profile", *args])


def test_gpu_profile_applies_to_the_shipped_params(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = run(tmp_path, str(ROOT / "params.gpu.yaml"))
    assert result.exit_code == 0, result.output
    text = (tmp_path / "params.yaml").read_text()
    merged = yaml.safe_load(text)
    gpu = yaml.safe_load((ROOT / "params.gpu.yaml").read_text())
    for section, values in gpu.items():
        for key, value in values.items():
            assert merged[section][key] == value, f"{section}.{key}"
    untouched = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert merged["merge"]["methods"] == untouched["merge"]["methods"]
    assert merged["dataset"] == untouched["dataset"] | gpu["dataset"]  # max_chars only: the sources stay
    assert "# One section per stage" in text  # comments survive
    fuse = load_section(FuseParams, "fuse", tmp_path / "params.yaml")
    assert (fuse.zero_stage, fuse.learning_rate, fuse.global_batch_size) == (2, 5e-6, 128)
    again = run(tmp_path, str(ROOT / "params.gpu.yaml"))
    assert again.exit_code == 0 and "already matches" in again.output
    assert (tmp_path / "params.yaml").read_text() == text


def test_unknown_key_is_refused_and_params_untouched(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("fuse:\n  lam: 0.7  # note\n")
    before = (tmp_path / "params.yaml").read_bytes()
    (tmp_path / "p.yaml").write_text("fuse:\n  lamda: 0.9\n")
    result = run(tmp_path, str(tmp_path / "p.yaml"))
    assert result.exit_code == 1
    assert "unknown key 'fuse.lamda'" in result.output and len(result.output.strip().splitlines()) == 1
    (tmp_path / "p.yaml").write_text("fuse: 3\n")
    assert run(tmp_path, str(tmp_path / "p.yaml")).exit_code == 1
    assert run(tmp_path, str(tmp_path / "missing.yaml")).exit_code == 1
    assert (tmp_path / "params.yaml").read_bytes() == before
    (tmp_path / "p.yaml").write_text("- fuse\n")  # not a mapping of sections
    assert run(tmp_path, str(tmp_path / "p.yaml")).exit_code == 1
    assert (tmp_path / "params.yaml").read_bytes() == before


def test_missing_params_file_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("fuse:\n  lam: 0.9\n")
    result = run(tmp_path, str(tmp_path / "p.yaml"))
    assert result.exit_code == 1 and "params.yaml not found" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_untouched_lines_are_kept_as_written_nulls_included(tmp_path: Path) -> None:
    """Only the lines of the keys a profile changes differ: `gate: null` stays `null` (ruamel's round trip
    writes `gate:`), and a profile's own null is written `null`."""
    shipped = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(shipped)
    (tmp_path / "p.yaml").write_text("fuse:\n  lam: 0.5\n  gate: 2.0\nevaluate:\n  judge:\n    max_tokens: 512\n")
    assert run(tmp_path, str(tmp_path / "p.yaml")).exit_code == 0
    before, after = shipped.splitlines(), (tmp_path / "params.yaml").read_text().splitlines()
    assert len(before) == len(after) and "  gate: null " in shipped
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert [b.split("#")[0].strip() for _, b in changed] == ["lam: 0.5", "gate: 2.0", "max_tokens: 512"]
    (tmp_path / "p.yaml").write_text("fuse:\n  gate: null\n")  # a profile's own null is written `null`
    assert run(tmp_path, str(tmp_path / "p.yaml")).exit_code == 0
    again = (tmp_path / "params.yaml").read_text().splitlines()
    assert [b for a, b in zip(before, again, strict=True) if a != b] == [changed[0][1], changed[2][1]]

"""Summary metrics: a plain recomputation of the means and gains, and what `dvc metrics show`/`diff` print of them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fusecli.evaluate.summary import summarize, terminal_summary
from fusecli.io import atomic_write_json

BIN = Path(sys.executable).parent
MODELS = ["pivot", "source:a", "sft_baseline", "fused:a", "merged:sce", "merged"]


def scores(shift: float = 0.0) -> dict[str, dict]:
    """Per-domain scores of MODELS; `region` has no checkable answers (EM None), source:a no EM at all."""
    out = {}
    for i, name in enumerate(MODELS):
        out[name] = {
            "capital": {"em": None if name == "source:a" else round(0.1 * i + shift, 6), "ce": 2.0 - 0.1 * i,
                        "ppl": 7.0},
            "currency": {"em": None if name == "source:a" else round(0.05 * i + shift, 6), "ce": 3.0 - 0.2 * i,
                         "ppl": 9.0},
            "region": {"em": None, "ce": 1.0 + 0.05 * i, "ppl": 3.0},
        }
    out["merged"] = out["merged:sce"]
    return out


def plain_mean(per_domain: dict[str, dict], metric: str) -> float | None:
    values = [d[metric] for d in per_domain.values() if d[metric] is not None]
    return sum(values) / len(values) if values else None


def test_means_and_gains_are_a_plain_recomputation():
    s = scores()
    summary = summarize(s)
    assert set(summary["mean"]) == set(s)
    for name, per_domain in s.items():
        for metric in ("em", "ce"):
            assert summary["mean"][name][metric] == pytest.approx(plain_mean(per_domain, metric))
    assert summary["mean"]["source:a"]["em"] is None  # no EM anywhere: no mean, not 0
    assert summary["mean"]["merged"]["em"] == pytest.approx((0.4 + 0.2) / 2)  # region's None left out, as the report
    assert set(summary["gain"]) == {"merged_vs_sft_baseline", "merged_vs_pivot"}
    for baseline in ("sft_baseline", "pivot"):
        for metric in ("em", "ce"):
            expected = plain_mean(s["merged"], metric) - plain_mean(s[baseline], metric)
            assert summary["gain"][f"merged_vs_{baseline}"][metric] == pytest.approx(expected)


def test_a_missing_mean_gives_no_gain_and_a_missing_baseline_no_key():
    s = scores()
    for domain in s["pivot"].values():
        domain["em"] = None
    del s["sft_baseline"]
    gain = summarize(s)["gain"]
    assert list(gain) == ["merged_vs_pivot"] and gain["merged_vs_pivot"]["em"] is None
    assert gain["merged_vs_pivot"]["ce"] == pytest.approx(plain_mean(s["merged"], "ce") - plain_mean(s["pivot"], "ce"))


def test_the_terminal_file_is_a_slice_of_the_summary():
    summary = summarize(scores())
    small = terminal_summary(summary)
    assert small == {m: {"merged": summary["mean"]["merged"][m],
                         "vs_sft_baseline": summary["gain"]["merged_vs_sft_baseline"][m],
                         "vs_pivot": summary["gain"]["merged_vs_pivot"][m]} for m in ("em", "ce")}


def dvc(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "COLUMNS": "200"}
    proc = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def write_eval(repo: Path, shift: float) -> dict:
    """What the evaluate stage writes: eval/metrics.json with its summary, and the slice eval/summary.json."""
    metrics = {"models": scores(shift)}
    metrics["summary"] = summarize(metrics["models"])
    atomic_write_json(repo / "eval/metrics.json", metrics)
    atomic_write_json(repo / "eval/summary.json", terminal_summary(metrics["summary"]))
    return metrics


@pytest.mark.slow
def test_dvc_metrics_show_and_diff_print_the_summary_in_a_few_short_lines(tmp_path):
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(["init", "-q"], tmp_path)
    dvc_yaml = yaml.safe_load((Path(__file__).resolve().parents[2] / "dvc.yaml").read_text())
    declared = [next(iter(m)) for m in dvc_yaml["stages"]["evaluate"]["metrics"]]
    assert declared == ["eval/metrics.json", "eval/summary.json"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"metrics": declared}))
    before = write_eval(tmp_path, 0.0)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "eval"], cwd=tmp_path, check=True)

    shown = dvc(["metrics", "show", "eval/summary.json"], tmp_path).splitlines()
    assert len(shown) == 2 and max(map(len, shown)) <= 120  # a header and one row, in a wide terminal's width
    header, row = shown[0].split(), shown[1].split()
    assert header[0] == "Path" and row[0] == "eval/summary.json"
    expected = {f"{m}.{k}": v for m, values in terminal_summary(before["summary"]).items() for k, v in values.items()}
    assert dict(zip(header[1:], map(float, row[1:]), strict=True)) == pytest.approx(expected, abs=1e-5)

    after = write_eval(tmp_path, 0.1)  # every EM up by 0.1: the merged EM moves, the EM gains and all CE do not
    diff = dvc(["metrics", "diff", "--targets", "eval/summary.json"], tmp_path).splitlines()
    rows = {line.split()[1]: line.split()[2:] for line in diff[1:]}
    assert diff[0].split() == ["Path", "Metric", "HEAD", "workspace", "Change"]
    assert set(rows) == {"em.merged"}
    old, new = before["summary"]["mean"]["merged"]["em"], after["summary"]["mean"]["merged"]["em"]
    assert [float(v) for v in rows["em.merged"]] == pytest.approx([old, new, new - old], abs=1e-5)
    full = dvc(["metrics", "diff", "--all", "--targets", "eval/summary.json"], tmp_path).splitlines()
    assert len(full) == 1 + 6  # every key of the file, one line each
    whole = json.loads(dvc(["metrics", "show", "--json"], tmp_path))
    data = next(iter(whole.values()))["data"]
    assert data["eval/metrics.json"]["data"]["summary"]["mean"]["merged"] == after["summary"]["mean"]["merged"]

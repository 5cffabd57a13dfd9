"""`make install` installs exactly requirements.lock (README, "Dependencies"): the versions `make test` passed
with are the versions a fresh clone gets, whatever has been released since.

The lock is written by `make lock` (uv's resolver) from pyproject.toml's ranges. The environment the tests run
in, when `make install` built it (its stamp, `.installed`), must hold every locked distribution at its locked
version and nothing else. FUSECLI_LOCK names another lock: `make drift` checks its scratch venv against its own.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
from importlib.metadata import distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = Path(os.environ.get("FUSECLI_LOCK") or ROOT / "requirements.lock")
NOT_LOCKED = {"fusecli"}  # the project itself, installed editable from the work tree
FIX = "`make clean install` installs the lock; after editing pyproject.toml's dependencies, `make lock`"


def read_lock(path: Path) -> dict[str, str]:
    """{normalized name: version} of a `uv pip compile` output: `name==version` lines and comments."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and re.fullmatch(r"[A-Za-z0-9._-]+", name), f"{path}: {line!r} is not name==version"
        pins[canonicalize_name(name)] = version
    return pins


def installed() -> dict[str, str]:
    """{normalized name: version} of every distribution in this environment's site-packages."""
    folders = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {canonicalize_name(d.metadata["Name"]): d.version for d in distributions(path=folders)}


def test_make_install_installed_exactly_the_lock():
    if not (Path(sys.prefix) / ".installed").is_file():
        pytest.skip(f"{sys.prefix} was not built by `make install`: only its environment follows the lock")
    locked, have = read_lock(LOCK), installed()
    wrong = [f"{n} {have[n]} (locked {locked[n]})" for n in sorted(have.keys() & locked.keys()) if have[n] != locked[n]]
    unlocked = sorted(have.keys() - locked.keys() - NOT_LOCKED)
    missing = sorted(locked.keys() - have.keys())
    assert not (wrong or unlocked or missing), (
        f"{sys.prefix} differs from {LOCK.name}: installed at another version: {wrong}; installed, not locked: "
        f"{unlocked}; locked, not installed: {missing}: {FIX}")


def test_the_lock_pins_the_cpu_torch_and_nothing_of_cuda():
    locked = read_lock(LOCK)
    assert Version(locked["torch"]).local == "cpu", f"torch {locked['torch']}: constraints-cpu.txt's CPU build"
    cuda = [n for n in locked if n == "triton" or (n.startswith("nvidia-") and n != "nvidia-ml-py")]
    assert not cuda, f"{LOCK.name} pulls CUDA builds: {cuda}"  # nvidia-ml-py: NVML's Python bindings (dvclive)


def test_the_lock_satisfies_pyproject_and_the_makefile():
    """Every requirement `make install` asks for (pyproject's dependencies, the Makefile's EXTRAS, deepspeed,
    pip) has a locked version in its range: a range edited without `make lock` fails here."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    makefile = (ROOT / "Makefile").read_text()
    extras = re.search(r"^EXTRAS := (.+)$", makefile, re.M).group(1).split(",")
    assert "--no-build-isolation deepspeed" in makefile
    optional = project["optional-dependencies"]
    wanted = [*project["dependencies"], *(r for e in [*extras, "deepspeed"] for r in optional[e])]
    locked = read_lock(LOCK)
    assert "pip" in locked
    for text in wanted:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} ({text}) is not in {LOCK.name}: `make lock`"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"{req.name} {locked[name]} in {LOCK.name} is outside pyproject.toml's {text!r}: `make lock`")
    nodeps = re.search(r"^NODEPS := (.+)$", makefile, re.M).group(1).split()
    dropped = re.search(r"^NODEPS_DROPPED := (.+)$", makefile, re.M).group(1).split()
    assert all(canonicalize_name(n) in locked for n in nodeps), f"{nodeps} are installed --no-deps from the lock"
    assert not [n for n in dropped if canonicalize_name(n) in locked], f"{dropped} are dropped by `make lock`"

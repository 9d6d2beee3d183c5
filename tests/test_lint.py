"""The code stays ruff- and mypy-clean (STYLE.md): checked with every test run."""

from __future__ import annotations

import subprocess
import sys

from shared.config import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_clean() -> None:
    r = _run("ruff", "check", "shared", "daemons", "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_clean() -> None:
    r = _run("mypy", "shared", "daemons")
    assert r.returncode == 0, r.stdout + r.stderr

"""`ruff check` (rules in pyproject.toml) is clean on the source, the tests, the benchmarks and the examples."""

import subprocess
from pathlib import Path

import pytest

ruff = pytest.importorskip("ruff.__main__", reason="ruff is not installed (it comes with the test extra)")

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("src", "tests", "benchmarks", "examples")


def run_ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([ruff.find_ruff_bin(), "check", "--no-cache", *args], cwd=cwd, capture_output=True, text=True)


def test_ruff_is_clean():
    result = run_ruff(*CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_uses_the_project_rules(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom typing import Sequence\n\nx: Sequence[int] = [l for l in range(3)]\n")
    result = run_ruff("--config", str(ROOT / "pyproject.toml"), str(bad), cwd=tmp_path)
    assert result.returncode == 1
    for rule in ("F401", "UP035", "E741"):
        assert rule in result.stdout, result.stdout

"""Repository hygiene: formatter, linter, and the README's commands match CI."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_COMMAND = 'python -m pip install -e ".[test]" && python -m pytest'


def _ruff(*args):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    return subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)


def test_code_is_formatted():
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_linter_passes():
    result = _ruff("check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_exactly_the_readme_test_command():
    assert TEST_COMMAND in (ROOT / "README.md").read_text()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci_lines[-1] == TEST_COMMAND

"""What CI must not let pass quietly: a framework missing from an adapter's test environment."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"crewai": "tests/crewai", "autogen": "tests/autogen/classic", "autogen_agentchat": "tests/autogen/agentchat"}


@pytest.mark.parametrize("module", sorted(FOLDERS))
def test_a_missing_framework_skips_locally_and_fails_in_ci(module: str) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")

    folder = ROOT / FOLDERS[module]
    ignored = [
        f"--ignore={path}"
        for path in [*(ROOT / "tests").iterdir(), *(ROOT / "tests" / "autogen").iterdir()]
        if path.is_dir() and path not in folder.parents and path != folder and path.name != "__pycache__"
    ]

    def collect(ci: str) -> subprocess.CompletedProcess[str]:
        """Collect the whole test tree but the other adapters' folders, as `pytest` in CI would."""
        command = [sys.executable, "-m", "pytest", "tests", "--collect-only", "-q", "-rs", "-p", "no:cacheprovider"]
        env = {**os.environ, "CI": ci}
        return subprocess.run(command + ignored, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    local = collect("")
    assert local.returncode == 5 and f"these tests need {module!r}" in local.stdout, local.stdout
    ci = collect("true")
    assert ci.returncode not in (0, 5), ci.stdout  # 0 and 5 (nothing collected) would pass CI
    assert "CI installs it, so its absence is an error" in ci.stdout

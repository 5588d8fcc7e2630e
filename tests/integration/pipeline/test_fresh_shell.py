"""The README's `zenml pipeline run ...` typed in a fresh shell, with an empty home folder (issue 14, 6).

Without ``ZENML_CONFIG_PATH`` the command stops with one line that says what to run; after ``make setup``,
``source .venv/bin/activate`` exports the project's store, so ZenML (and ``edgefleet stack init``) never
write into the home folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
TRAINING = "pipelines.training.training_pipeline"
pytestmark = pytest.mark.slow


def _fresh_shell_env(home: Path) -> dict[str, str]:
    """The environment of a new login: nothing of ours or ZenML's set, and an empty home folder."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ZENML_", "EDGEFLEET_", "MLFLOW_")) and key != "AUTO_OPEN_DASHBOARD"
    }
    env["HOME"] = str(home)
    env.pop("XDG_CONFIG_HOME", None)
    return env


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_without_a_store_the_documented_command_fails_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run(
        [str(BIN / "zenml"), "pipeline", "run", TRAINING, "-c", "configs/ci.yaml"],
        cwd=ROOT,
        env=_fresh_shell_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "ZENML_CONFIG_PATH" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "source .venv/bin/activate" in errors[0]
    assert f"export ZENML_CONFIG_PATH={ROOT / '.edgefleet' / 'zenml'}" in errors[0]
    assert "Traceback" not in result.stderr
    assert "experiment_tracker" not in result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_activated_venv_uses_the_project_store_and_leaves_home_alone(tmp_path: Path) -> None:
    home, state, venv = tmp_path / "home", tmp_path / "state", tmp_path / "venv"
    home.mkdir()
    (venv / "bin").mkdir(parents=True)
    # Stands in for venv's own activate script: what matters is the block `make setup` appends to it.
    (venv / "bin" / "activate").write_text(f'export PATH="{BIN}:$PATH"\n')
    for _ in range(2):  # idempotent: the block is appended once
        subprocess.run(
            ["make", "-s", "activate-hook", f"VENV={venv}", f"STATE={state}"],
            cwd=ROOT,
            check=True,
            timeout=60,
        )
    assert (venv / "bin" / "activate").read_text().count("edgefleet: project-local state") == 1

    probe = (
        "from zenml.config.global_config import GlobalConfiguration; "
        "print(GlobalConfiguration().config_directory)"
    )
    script = f'source "{venv}/bin/activate" && edgefleet stack init && python -c "{probe}"'
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env=_fresh_shell_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(state / "zenml")
    assert (state / "zenml").is_dir()
    assert _files_under(home) == []

"""Shared fixtures of the pipeline integration tests: a fresh project-local ZenML store and SQLite MLflow
store per test module, and the CLI runner every test drives the pipeline with (as users run it)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Stack:
    """An initialised EdgeFleet stack: its home folder, the environment pointing at it, the MLflow client."""

    home: Path
    env: dict[str, str]
    uri: str
    client: MlflowClient

    def run(self, args: Sequence[str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
        """Run a command from the repo root against this stack, capturing its output."""
        return subprocess.run(
            list(args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def run_pipeline(self, config: str | Path) -> subprocess.CompletedProcess[str]:
        """``zenml pipeline run pipelines.training.training_pipeline -c CONFIG``."""
        return self.run(
            [str(BIN / "zenml"), "pipeline", "run", "pipelines.training.training_pipeline", "-c", str(config)]
        )

    def versions(self) -> set[tuple[str, str]]:
        """Every registered (model, version) pair."""
        return {(v.name, v.version) for v in self.client.search_model_versions()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """``edgefleet stack init`` on a fresh home (ZenML config and MLflow SQLite store under it)."""
    home = tmp_path_factory.mktemp("edgefleet-home")
    env = {
        **os.environ,
        "EDGEFLEET_HOME": str(home),
        "ZENML_CONFIG_PATH": str(home / "zenml"),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "AUTO_OPEN_DASHBOARD": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    created = Stack(home=home, env=env, uri=uri, client=MlflowClient(tracking_uri=uri, registry_uri=uri))
    init = created.run([str(BIN / "edgefleet"), "stack", "init"])
    assert init.returncode == 0, init.stdout + init.stderr
    return created

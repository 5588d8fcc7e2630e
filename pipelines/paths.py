"""Where EdgeFleet keeps its project-local state, and the environment ZenML needs before it is imported.

Everything the embedded demo writes goes under one folder, ``$EDGEFLEET_HOME`` (default ``./.edgefleet``):
ZenML's config and local store (``zenml/``), MLflow's SQLite store (``mlflow.db``) and artifacts
(``mlartifacts/``), and the OTA server's state. ZenML reads ``ZENML_CONFIG_PATH`` at import time, so
``configure_environment`` must run before the first ``import zenml``.
"""

from __future__ import annotations

import os
from pathlib import Path


def edgefleet_home() -> Path:
    """The project-local state folder (``$EDGEFLEET_HOME``, default ``./.edgefleet``), created if missing."""
    home = Path(os.environ.get("EDGEFLEET_HOME", ".edgefleet")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_tracking_uri() -> str:
    """The embedded MLflow store: a SQLite file in the state folder."""
    return f"sqlite:///{edgefleet_home() / 'mlflow.db'}"


def default_artifact_root() -> str:
    """Where the embedded MLflow store keeps artifacts: beside its database."""
    return (edgefleet_home() / "mlartifacts").as_uri()


def configure_environment() -> None:
    """Point ZenML at the project-local config unless the caller chose another, and keep it quiet."""
    os.environ.setdefault("ZENML_CONFIG_PATH", str(edgefleet_home() / "zenml"))
    os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
    os.environ.setdefault("ZENML_ENABLE_RICH_TRACEBACK", "false")
    os.environ.setdefault("AUTO_OPEN_DASHBOARD", "false")

"""What a step needs from the run's surroundings: the project-local state folder and the MLflow store.

Steps own these helpers (``pipelines`` re-exports them) so that layers run one way, ``pipelines > steps >
registry > ml``: a step never imports ``pipelines``. Nothing here touches the environment, and zenml is
imported only inside :func:`active_tracking_uri`, when a step (or a command) asks for the active stack.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "EDGEFLEET_HOME"
DEFAULT_HOME = ".edgefleet"


def edgefleet_home() -> Path:
    """The project-local state folder (``$EDGEFLEET_HOME``, default ``./.edgefleet``), created if missing."""
    home = Path(os.environ.get(HOME_ENV, DEFAULT_HOME)).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_tracking_uri() -> str:
    """The embedded MLflow store: a SQLite file in the state folder."""
    return f"sqlite:///{edgefleet_home() / 'mlflow.db'}"


def default_artifact_root() -> str:
    """Where the embedded MLflow store keeps artifacts: beside its database."""
    return (edgefleet_home() / "mlartifacts").as_uri()


def active_tracking_uri() -> str:
    """The MLflow tracking URI of the active stack's experiment tracker (the embedded store if unset)."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    tracker = Client().active_stack_model.components.get(StackComponentType.EXPERIMENT_TRACKER)
    if tracker:
        uri = tracker[0].configuration.get("tracking_uri")
        if uri:
            return str(uri)
    return default_tracking_uri()


def ensure_tracking_uri() -> str:
    """Point this process's MLflow client at the active stack's store and return its URI."""
    from registry.store import use_tracking_uri

    uri = active_tracking_uri()
    use_tracking_uri(uri)
    return uri

"""Which MLflow store a command uses, without importing MLflow.

``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded demo store
``sqlite:///$EDGEFLEET_HOME/mlflow.db`` (``EDGEFLEET_HOME`` defaults to ``./.edgefleet``), the same
convention as ``pipelines/paths.py``, which this package may not import (registry must not load zenml).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from registry.errors import RegistryError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def default_tracking_uri() -> str:
    """The embedded MLflow store, as ``pipelines.paths.default_tracking_uri`` defines it (not imported)."""
    home = Path(os.environ.get("EDGEFLEET_HOME", ".edgefleet")).resolve()
    return f"sqlite:///{home / 'mlflow.db'}"


def resolve_tracking_uri(explicit: str | None) -> str:
    """``--tracking-uri`` if given, else ``$MLFLOW_TRACKING_URI``, else the embedded store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def existing_store_uri(explicit: str | None) -> str:
    """The resolved store URI.

    Raises:
        RegistryError: A SQLite store whose file does not exist. MLflow would silently create an empty
            database there, and every command would then report that nothing is registered.
    """
    uri = resolve_tracking_uri(explicit)
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise RegistryError(
                f"no MLflow store at {path}: run the training pipeline first, "
                "or pass --tracking-uri / set MLFLOW_TRACKING_URI"
            )
    return uri


def open_registry(explicit: str | None) -> MlflowClient:
    """An MLflow client on the resolved store (see :func:`existing_store_uri` for the errors)."""
    from registry.store import registry_client_for

    return registry_client_for(existing_store_uri(explicit))

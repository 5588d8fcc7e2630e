"""Where EdgeFleet keeps its project-local state, and the environment ZenML needs before it is imported.

Everything the embedded demo writes goes under one folder, ``$EDGEFLEET_HOME`` (default ``./.edgefleet``):
ZenML's config and local store (``zenml/``), MLflow's SQLite store (``mlflow.db``) and artifacts
(``mlartifacts/``), and the OTA server's state. The folder helpers are ``steps._runtime``'s (steps own
them; this module re-exports them for the entry points).

ZenML reads ``ZENML_CONFIG_PATH`` once, when it is first imported. Nothing here runs at import time: an entry
point that starts ZenML itself (``edgefleet stack``, ``python -m pipelines.demo``) calls
:func:`configure_environment` first; a module that ZenML's own CLI imports (``zenml pipeline run
pipelines.training.training_pipeline``) can only check, with :func:`require_project_store`, that the shell
chose a store: ``source .venv/bin/activate`` after ``make setup`` exports it.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from steps._runtime import DEFAULT_HOME, HOME_ENV, default_artifact_root, default_tracking_uri, edgefleet_home

__all__ = [
    "ProjectStoreError",
    "configure_environment",
    "default_artifact_root",
    "default_tracking_uri",
    "edgefleet_home",
    "require_project_store",
]

ZENML_CONFIG_ENV = "ZENML_CONFIG_PATH"


class ProjectStoreError(click.ClickException):
    """ZenML was started without ``ZENML_CONFIG_PATH``, so it is using the home folder's store.

    A ``ClickException`` so that ``zenml pipeline run`` prints it as one ``Error:`` line and exits 1.
    """


def configure_environment() -> None:
    """Point ZenML at the project-local config unless the caller chose another, and keep it quiet.

    Call it before the first ``import zenml`` of the process; it changes ``os.environ``.
    """
    os.environ.setdefault(ZENML_CONFIG_ENV, str(edgefleet_home() / "zenml"))
    os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
    os.environ.setdefault("ZENML_ENABLE_RICH_TRACEBACK", "false")
    os.environ.setdefault("AUTO_OPEN_DASHBOARD", "false")


def require_project_store() -> None:
    """Refuse to wire a pipeline onto ZenML's home-folder store (changes nothing).

    Any explicit ``ZENML_CONFIG_PATH`` is accepted (a remote ZenML server's login lives wherever the user
    chose); only its absence, where ZenML falls back to the home folder, is refused.

    Raises:
        ProjectStoreError: ``ZENML_CONFIG_PATH`` is not set; the message says what to run.
    """
    if os.environ.get(ZENML_CONFIG_ENV):
        return
    project_store = Path(os.environ.get(HOME_ENV, DEFAULT_HOME)).resolve() / "zenml"
    raise ProjectStoreError(
        f"{ZENML_CONFIG_ENV} is not set, so ZenML is using your home folder's store, not this project's: "
        f"run `source .venv/bin/activate` (after `make setup`) or "
        f"`export {ZENML_CONFIG_ENV}={project_store}`, then run the command again."
    )

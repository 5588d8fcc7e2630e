"""Register and activate, idempotently, the ZenML stack EdgeFleet runs on.

The embedded default is the local orchestrator and the default (local) artifact store, plus an MLflow
experiment tracker and an MLflow model registry whose tracking URI is a SQLite file under the project-local
state folder. The same function accepts a remote MLflow tracking server and, through ``zenml login``, a
remote ZenML server: see ``configs/production.example.yaml`` and the README's section on scaling.

Importing this module imports zenml: an entry point calls ``pipelines.paths.configure_environment`` first.
"""

from __future__ import annotations

from dataclasses import dataclass

from zenml.client import Client
from zenml.enums import StackComponentType

from pipelines.paths import default_artifact_root, default_tracking_uri
from steps._runtime import active_tracking_uri, ensure_tracking_uri

__all__ = ["StackInfo", "active_tracking_uri", "ensure_stack", "ensure_tracking_uri"]

STACK_NAME = "edgefleet"
TRACKER_NAME = "edgefleet_mlflow_tracker"
REGISTRY_NAME = "edgefleet_mlflow_registry"
EXPERIMENTS = ("edgefleet-training", "edgefleet-release")


@dataclass(frozen=True)
class StackInfo:
    """What ``ensure_stack`` left active."""

    name: str
    tracking_uri: str
    zenml_store: str
    created: bool


def _ensure_component(
    client: Client, *, name: str, component_type: StackComponentType, configuration: dict[str, str]
) -> bool:
    """Create the component, or update its configuration if it drifted. Returns True if created."""
    try:
        existing = client.get_stack_component(component_type, name, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack_component(
            name=name, flavor="mlflow", component_type=component_type, configuration=configuration
        )
        return True
    if any(existing.configuration.get(key) != value for key, value in configuration.items()):
        client.update_stack_component(existing.id, component_type, configuration=configuration)
    return False


def ensure_stack(*, tracking_uri: str | None = None, stack_name: str = STACK_NAME) -> StackInfo:
    """Register (if needed) and activate the EdgeFleet stack.

    Args:
        tracking_uri: MLflow tracking URI; ``None`` means the embedded SQLite store. A remote server
            (``http(s)://``) works the same way; its artifact location is then the server's business.
        stack_name: Name of the ZenML stack.

    Returns:
        The stack's name, its tracking URI, the ZenML store URL and whether anything was created.
    """
    uri = tracking_uri or default_tracking_uri()
    client = Client()
    configuration = {"tracking_uri": uri}
    created = _ensure_component(
        client,
        name=TRACKER_NAME,
        component_type=StackComponentType.EXPERIMENT_TRACKER,
        configuration=configuration,
    )
    created |= _ensure_component(
        client, name=REGISTRY_NAME, component_type=StackComponentType.MODEL_REGISTRY, configuration={}
    )
    try:
        client.get_stack(stack_name, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack(
            name=stack_name,
            components={
                StackComponentType.ORCHESTRATOR: "default",
                StackComponentType.ARTIFACT_STORE: "default",
                StackComponentType.EXPERIMENT_TRACKER: TRACKER_NAME,
                StackComponentType.MODEL_REGISTRY: REGISTRY_NAME,
            },
        )
        created = True
    if client.active_stack_model.name != stack_name:
        client.activate_stack(stack_name)
    if tracking_uri is None:
        _ensure_local_experiments(uri)
    return StackInfo(name=stack_name, tracking_uri=uri, zenml_store=client.zen_store.url, created=created)


def _ensure_local_experiments(uri: str) -> None:
    """Create the experiments with artifacts beside the SQLite file (MLflow would use ./mlruns)."""
    from registry.store import ensure_experiment

    for name in EXPERIMENTS:
        ensure_experiment(uri, name, artifact_location=f"{default_artifact_root()}/{name}")

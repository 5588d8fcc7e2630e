"""Fixtures for the registry's integration tests: a real MLflow SQLite store with EdgeFleet versions.

The store is built once per session the way the training pipeline builds it, through
``registry.store.register_variant`` with tiny ONNX files made with ``onnx.helper``; each test then works on
its own copy of the database file (the artifacts are only read, so the copies share them), which keeps
every test independent without paying MLflow's schema migration and model logging per test.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import onnx
import pytest
from mlflow.tracking import MlflowClient
from onnx import TensorProto, helper
from typer.testing import CliRunner, Result

from registry.cli import models_app
from registry.lineage import Lineage
from registry.store import (
    RegisteredVersion,
    client_for,
    ensure_experiment,
    register_variant,
    use_tracking_uri,
)

MODEL = "edgefleet-test-cpu-int8-small"
OTHER_MODEL = "edgefleet-test-arm-int8"
FOREIGN_MODEL = "someone-elses-model"
GATES = {
    "min_accuracy": 0.95,
    "max_accuracy_drop_vs_teacher": 0.03,
    "max_p99_ms": 1.0,
    "max_size_kb": 100.0,
}
TEACHER_ACCURACY = 0.975
# version -> (what it is for, accuracy, p99_ms). Registered in this order, so the number is the index + 1.
VERSIONS: dict[str, tuple[str, float, float]] = {
    "1": ("baseline", 0.970, 0.50),
    "2": ("better than 1", 0.972, 0.48),
    "3": ("fails min_accuracy", 0.930, 0.45),
    "4": ("passes gates, accuracy 1.2 pp below version 2", 0.960, 0.47),
    "5": ("passes gates, P99 87 % above version 2", 0.972, 0.90),
}
LINEAGE = Lineage(
    git_commit="0123456789abcdef0123456789abcdef01234567",
    git_dirty=False,
    data_fingerprint="sha256:digits-fingerprint",
    config_hash="cfg-hash-1",
    pipeline_run_id="zenml-run-42",
    teacher_model_id="m-teacher0001",
)


def tiny_onnx(path: Path, scale: float) -> Path:
    """A one-node ONNX model (y = x * scale); different scales give different bytes, hence new versions."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 4], [scale] * 4)
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "tiny", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def metrics_for(accuracy: float, p99_ms: float) -> dict[str, float]:
    """The metric set the training pipeline records for a variant, derived from accuracy and P99."""
    return {
        "accuracy": accuracy,
        "accuracy_drop_vs_teacher": TEACHER_ACCURACY - accuracy,
        "teacher_accuracy": TEACHER_ACCURACY,
        "p50_ms": round(p99_ms * 0.6, 4),
        "p95_ms": round(p99_ms * 0.9, 4),
        "p99_ms": p99_ms,
        "size_kb": 42.5,
        "size_bytes": 43520,
        "throughput_sps": 1000.0 / (p99_ms * 0.6),
        "cold_start_ms": 12.0,
        "peak_rss_mib": 80.0,
        "speedup_vs_teacher_p50": 3.5,
        "kd_gain": 0.004,
    }


@dataclass(frozen=True)
class Template:
    """The session's registered store: where its database is and the files its versions came from."""

    root: Path
    db: Path
    onnx_files: dict[str, Path]


def register(
    onnx_path: Path, *, model_name: str, profile: str, accuracy: float, p99_ms: float, experiment_id: str
) -> RegisteredVersion:
    """Register one version inside an MLflow run, as the pipeline's register step does."""
    with mlflow.start_run(experiment_id=experiment_id):
        return register_variant(
            model_name=model_name,
            profile=profile,
            variant="student-int8-static",
            onnx_path=onnx_path,
            parent_path=onnx_path,
            metrics=metrics_for(accuracy, p99_ms),
            params={"variant": "student-int8-static", "data_source": "digits"},
            lineage=LINEAGE,
            gates=GATES,
        )


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    root = tmp_path_factory.mktemp("registry-template")
    patch = pytest.MonkeyPatch()
    # No telemetry calls to the network from the tests.
    patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    use_tracking_uri(uri)
    experiment_id = ensure_experiment(uri, "edgefleet-training", artifact_location=(root / "art").as_uri())
    files: dict[str, Path] = {}
    for number, (_, accuracy, p99_ms) in VERSIONS.items():
        files[number] = tiny_onnx(root / f"v{number}.onnx", 1.0 + int(number))
        registered = register(
            files[number],
            model_name=MODEL,
            profile="cpu-int8-small",
            accuracy=accuracy,
            p99_ms=p99_ms,
            experiment_id=experiment_id,
        )
        assert registered.version == number and registered.created
    files["arm"] = tiny_onnx(root / "arm.onnx", 0.5)
    register(
        files["arm"],
        model_name=OTHER_MODEL,
        profile="arm-int8",
        accuracy=0.965,
        p99_ms=2.0,
        experiment_id=experiment_id,
    )
    # A registered model that EdgeFleet did not write: `list` without a name must leave it out.
    client_for(uri).create_registered_model(FOREIGN_MODEL)
    mlflow.set_tracking_uri(before)
    mlflow.set_registry_uri(before)
    yield Template(root=root, db=root / "mlflow.db", onnx_files=files)
    patch.undo()


@dataclass(frozen=True)
class Store:
    """One test's private copy of the template store."""

    uri: str
    client: MlflowClient
    template: Template

    def aliases(self, name: str = MODEL) -> dict[str, str]:
        return {k: str(v) for k, v in self.client.get_registered_model(name).aliases.items()}

    def tags(self, version: str, name: str = MODEL) -> dict[str, str]:
        return dict(self.client.get_model_version(name, version).tags)


@pytest.fixture
def store(template: Template, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    db = tmp_path / "mlflow.db"
    shutil.copyfile(template.db, db)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{db}"
    return Store(uri=uri, client=client_for(uri), template=template)


@pytest.fixture
def cli(store: Store) -> Callable[..., Result]:
    """Run ``edgefleet models ...`` on the test's store; wide terminal so tables are not truncated."""
    runner = CliRunner()

    def run(*args: str, uri: str | None = store.uri) -> Result:
        extra = ["--tracking-uri", uri] if uri is not None else []
        return runner.invoke(models_app, [*args, *extra], env={"COLUMNS": "220"})

    return run

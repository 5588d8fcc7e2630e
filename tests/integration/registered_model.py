"""A real MLflow store holding one EdgeFleet version, registered the way the training pipeline registers it.

Shared by the tests that need what ``make run`` leaves behind without running it: ``release publish
--model-uri models:/NAME@production`` (``server/test_publish_model_uri.py``) and the README's commands
(``readme/test_readme_commands.py``). The version is a valid ONNX classifier of 8x8 digits, so the release
path builds self-test vectors from held-out digits exactly as it does for a trained model.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

from registry.lineage import Lineage
from registry.store import ensure_experiment, register_variant, use_tracking_uri
from tests.onnx_factory import linear_onnx

MODEL = "edgefleet-digits-cpu-int8-small"
PROFILE = "cpu-int8-small"
LINEAGE = Lineage(
    git_commit="0123456789abcdef0123456789abcdef01234567",
    git_dirty=False,
    data_fingerprint="sha256:digits-fingerprint",
    config_hash="cfg-hash-1",
    pipeline_run_id="zenml-run-42",
    teacher_model_id="m-teacher0001",
)


def digits_onnx(path: Path) -> Path:
    """Write a valid ONNX classifier of 8x8 digits (logits = flatten(x) @ W) to ``path``; return it."""
    weights = np.arange(640, dtype=np.float32).reshape(64, 10) / 640
    path.write_bytes(linear_onnx(weights, input_shape=[1, 1, 8, 8], name="digits"))
    return path


def register_production_version(folder: Path, *, db_name: str = "mlflow.db") -> str:
    """Create ``folder/db_name``, an MLflow store with version 1 of :data:`MODEL` under alias ``production``.

    Artifacts go to ``folder/mlartifacts`` (the layout ``make run`` leaves in ``.edgefleet/``). MLflow's
    process-wide tracking URI is restored afterwards. The caller disables MLflow's telemetry.

    Returns:
        The store's tracking URI (``sqlite:///…``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{folder / db_name}"
    use_tracking_uri(uri)
    try:
        experiment = ensure_experiment(
            uri, "edgefleet-training", artifact_location=(folder / "mlartifacts").as_uri()
        )
        onnx_path = digits_onnx(folder / "model.onnx")
        with mlflow.start_run(experiment_id=experiment):
            register_variant(
                model_name=MODEL,
                profile=PROFILE,
                variant="student-int8-static",
                onnx_path=onnx_path,
                parent_path=onnx_path,
                metrics={"accuracy": 0.97},
                params={"variant": "student-int8-static", "data_source": "digits"},
                lineage=LINEAGE,
                alias="production",
            )
    finally:
        use_tracking_uri(before)
    return uri

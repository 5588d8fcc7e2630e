"""Step: build the self-test vectors the agent's health check runs (format: ``ota.edge.health``).

Inputs are the first samples of the held-out test split (same loader, split and seed as training, so no
training sample leaks in); expected logits and top-1 come from an ONNX Runtime run of the exact artifact,
one sample at a time like the device does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import onnxruntime as ort
from zenml import step

from ml.data import load_dataset, split
from ota.edge.health import save_vectors
from steps._runtime import edgefleet_home
from steps.release_config import ReleasePipelineConfig


def build_vectors(
    onnx_path: Path, inputs: np.ndarray, destination: Path, config: ReleasePipelineConfig
) -> Path:
    """Run ``onnx_path`` on each input with batch 1 and write the vectors file.

    Raises:
        HealthCheckError: The arrays disagree on the number of samples (a bug, not bad input).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = np.stack([session.run(None, {name: inputs[i : i + 1]})[0][0] for i in range(len(inputs))])
    save_vectors(
        destination,
        inputs=inputs,
        expected_top1=logits.argmax(axis=1).astype(np.int64),
        expected_logits=logits.astype(np.float32),
        tolerance=config.vectors.tolerance,
        latency_budget_ms=config.vectors.latency_budget_ms,
        min_top1_agreement=config.vectors.min_top1_agreement,
    )
    return destination


@step(enable_cache=False)
def build_selftest_vectors(
    models: list[dict[str, Any]], config: ReleasePipelineConfig
) -> Annotated[dict[str, str], "selftest_vectors"]:
    """One ``.npz`` per profile from the first ``vectors.count`` held-out test samples."""
    x, y, names = load_dataset(config.data.source)
    splits = split(
        x,
        y,
        names,
        name=config.data.source,
        val_fraction=config.data.val_fraction,
        test_fraction=config.data.test_fraction,
        seed=config.data.seed,
    )
    inputs = np.ascontiguousarray(splits.x_test[: config.vectors.count], dtype=np.float32)
    folder = edgefleet_home() / "release" / "vectors"
    folder.mkdir(parents=True, exist_ok=True)
    return {
        m["profile"]: str(
            build_vectors(Path(m["onnx_path"]), inputs, folder / f"{m['name']}-{m['version']}.npz", config)
        )
        for m in models
    }

"""What a release of a registered model version carries: the fetched ONNX file, its provenance and its
self-test vectors. Shared by the release pipeline's steps and ``edgefleet release publish --model-uri``, so
both publish exactly the same thing.

Self-test vectors (format: ``ota.core.selftest``): the first samples of the held-out test split (same loader,
split and seed as training, so no training sample leaks in); expected logits and top-1 come from an ONNX
Runtime run of the exact artifact, one sample at a time like the device does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.config import DataConfig
from ml.data import load_splits
from ota.core.selftest import save_vectors
from registry.fetch import VersionFacts, fetch_model, parse_model_uri


@dataclass(frozen=True)
class VectorsSpec:
    """How many held-out samples the vectors hold and what the device's health check tolerates."""

    count: int = 32
    tolerance: float = 0.05
    min_top1_agreement: float = 1.0
    latency_budget_ms: float | None = None


def selftest_inputs(data: DataConfig, count: int) -> np.ndarray:
    """The first ``count`` samples of the held-out test split of ``data``, as contiguous float32.

    Raises:
        DataError: The data set cannot be loaded or split.
    """
    # The preprocessing the model was trained with: a BYOM model at data.input_size (e.g. 3×32×32 from 8×8
    # digits) refuses samples of the source's own size. The training split's statistics normalise unless
    # the config fixes mean/std, as in training.
    splits = load_splits(
        data.source,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.seed,
        normalization=(data.mean, data.std) if data.mean is not None and data.std is not None else None,
        input_size=data.input_size,
    )
    return np.ascontiguousarray(splits.x_test[:count], dtype=np.float32)


def build_vectors(onnx_path: Path, inputs: np.ndarray, destination: Path, spec: VectorsSpec) -> Path:
    """Run ``onnx_path`` on each input with batch 1 and write the vectors file.

    Raises:
        HealthCheckError: The arrays disagree on the number of samples (a bug, not bad input).
    """
    import onnxruntime as ort

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
        tolerance=spec.tolerance,
        latency_budget_ms=spec.latency_budget_ms,
        min_top1_agreement=spec.min_top1_agreement,
    )
    return destination


@dataclass(frozen=True)
class ReleaseInputs:
    """A fetched version ready to publish: its facts, ONNX file and self-test vectors."""

    facts: VersionFacts
    onnx_path: Path
    vectors_path: Path


def fetch_release_inputs(
    model_uri: str,
    destination: Path,
    *,
    tracking_uri: str | None,
    data: DataConfig,
    vectors: VectorsSpec,
) -> ReleaseInputs:
    """Fetch ``models:/NAME@ALIAS`` (or ``/VERSION``) and build its self-test vectors.

    Args:
        model_uri: The registry URI.
        destination: Folder for the ONNX file and the vectors.
        tracking_uri: MLflow tracking/registry URI.
        data: The data set whose held-out split feeds the vectors.
        vectors: Vector count and tolerances.

    Returns:
        The facts (lineage included), the ONNX file and the vectors file.

    Raises:
        RegistryError: Not a registry URI, no such version or alias, or the bytes do not match their
            registered sha256 (ModelNotFoundError for the missing ones).
        DataError: The data set cannot be loaded.
    """
    name, version_or_alias = parse_model_uri(model_uri)
    fetched = fetch_model(name, version_or_alias, destination, tracking_uri=tracking_uri)
    facts = fetched.facts
    inputs = selftest_inputs(data, vectors.count)
    vectors_path = destination / f"{facts.name}-{facts.version}.npz"
    path = build_vectors(fetched.onnx_path, inputs, vectors_path, vectors)
    return ReleaseInputs(facts=facts, onnx_path=fetched.onnx_path, vectors_path=path)

"""Evaluate ONNX variants on ONNX Runtime: predictions, accuracy, agreement with a parent, confusion matrix.

Pipeline step 5/6 (see ARCHITECTURE.md): every variant ``export`` and ``quantize`` write is scored
here against the held-out test split, and against its FP32 parent (top-1 agreement), before
``benchmark`` times it and ``gates`` picks one. Imports onnxruntime and numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ml.errors import DataError, ExportError


@dataclass(frozen=True)
class VariantScore:
    """Accuracy of one variant and how often it agrees with its FP32 parent's top-1."""

    accuracy: float
    agreement_with_parent: float | None


def make_session(path: str | Path, *, threads: int = 1) -> ort.InferenceSession:
    """Open an ONNX Runtime CPU session with ``threads`` intra-op threads and sequential execution.

    Graph optimisation stays at ORT's default (all), which is what fuses QDQ pairs into INT8 kernels.

    Raises:
        ExportError: The file is missing or not a model ORT can load.
        DataError: ``threads`` is below 1.
    """
    if threads < 1:
        raise DataError(f"threads must be ≥ 1, got {threads}")
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX model {path} does not exist")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types from C++; map them here
        raise ExportError(f"ONNX Runtime cannot load {path}: {exc}") from exc


def _check_inputs(x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise DataError(f"inputs must be an N×C×H×W array, got {getattr(x, 'shape', type(x))}")
    if not np.isfinite(x).all():
        raise DataError("inputs contain NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


def session_predict(session: ort.InferenceSession, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Logits of an open session on ``x``, run in batches.

    Raises:
        DataError: ``x`` is not a finite N×C×H×W array or does not fit the model's input.
    """
    x = _check_inputs(x)
    name = session.get_inputs()[0].name
    outputs: list[np.ndarray] = []
    try:
        for start in range(0, len(x), batch_size):
            outputs.append(np.asarray(session.run(None, {name: x[start : start + batch_size]})[0]))
    except Exception as exc:  # shape mismatches surface as ORT's InvalidArgument
        raise DataError(f"the model rejected inputs of shape {x.shape}: {exc}") from exc
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outputs)


def onnx_predict(path: str | Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Logits of the ONNX model at ``path`` on ``x`` (N×C×H×W float32).

    Raises:
        ExportError: The model cannot be loaded.
        DataError: ``x`` is malformed or does not fit the model.
    """
    return session_predict(make_session(path, threads=threads), x)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` (N×K) against integer labels ``y`` (N).

    Raises:
        DataError: Shapes disagree or there are no samples.
    """
    if logits.ndim != 2 or y.ndim != 1 or len(logits) != len(y) or len(y) == 0:
        raise DataError(f"logits {logits.shape} and labels {y.shape} do not match")
    return float(np.mean(logits.argmax(axis=1) == y))


def agreement(logits: np.ndarray, parent_logits: np.ndarray) -> float:
    """Fraction of samples where two models' top-1 predictions agree.

    Raises:
        DataError: Shapes disagree or there are no samples.
    """
    if logits.shape != parent_logits.shape or logits.ndim != 2 or len(logits) == 0:
        raise DataError(f"logits {logits.shape} and parent logits {parent_logits.shape} do not match")
    return float(np.mean(logits.argmax(axis=1) == parent_logits.argmax(axis=1)))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``num_classes``×``num_classes`` counts; row = true class, column = predicted class.

    Raises:
        DataError: Lengths differ or a label lies outside ``0..num_classes-1``.
    """
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise DataError(f"label arrays {y_true.shape} and {y_pred.shape} do not match")
    for labels in (y_true, y_pred):
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"labels must lie in 0..{num_classes - 1}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return matrix


def score_variant(
    path: str | Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    parent_logits: np.ndarray | None = None,
    threads: int = 1,
) -> tuple[VariantScore, np.ndarray]:
    """Accuracy of the variant at ``path`` on ``(x, y)`` and agreement with ``parent_logits`` if given.

    Returns:
        The score and the variant's logits (to serve as a parent for its own children).

    Raises:
        ExportError: The model cannot be loaded.
        DataError: Inputs or labels are malformed.
    """
    logits = onnx_predict(path, x, threads=threads)
    agree = agreement(logits, parent_logits) if parent_logits is not None else None
    return VariantScore(accuracy=accuracy(logits, y), agreement_with_parent=agree), logits

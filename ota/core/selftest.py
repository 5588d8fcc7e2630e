"""The self-test vectors format: one owner for a document three packages exchange.

The release pipeline (``registry.release_inputs``) writes it, the OTA server checks it when it is staged
(``ota.server.releases``), and the agent reads it before committing a model (``ota.edge.health``). It is an
``.npz`` file (read with ``allow_pickle=False``) holding:

* ``inputs``: array ``(N, ...)``, one sample per row, fed to the model's first input with a batch of one;
* ``expected_top1``: int array ``(N,)``, the class index the pipeline's ONNX Runtime run produced;
* ``expected_logits``: array ``(N, ...)`` of the first output for each sample;
* ``tolerance``: scalar, the largest absolute difference allowed between produced and expected logits
  (INT8 kernels differ a little between ISAs, so it is not zero);
* optional ``latency_budget_ms``: scalar, the budget when the caller names none;
* optional ``min_top1_agreement``: scalar in [0, 1], default 1.0.

Needs numpy only (a base dependency), so the server and the agent both read it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ota.core.errors import DocumentFormatError

REQUIRED_KEYS = ("inputs", "expected_top1", "expected_logits", "tolerance")


class SelfTestFormatError(DocumentFormatError):
    """A self-test vectors file is missing, too large, not an ``.npz``, or its arrays are inconsistent."""


@dataclass(frozen=True)
class SelfTestVectors:
    """Parsed self-test vectors (see the module docstring for the file format)."""

    inputs: np.ndarray
    expected_top1: np.ndarray
    expected_logits: np.ndarray
    tolerance: float
    latency_budget_ms: float | None = None
    min_top1_agreement: float = 1.0


def save_vectors(
    path: Path,
    *,
    inputs: np.ndarray,
    expected_top1: np.ndarray,
    expected_logits: np.ndarray,
    tolerance: float,
    latency_budget_ms: float | None = None,
    min_top1_agreement: float = 1.0,
) -> None:
    """Write self-test vectors in the format :func:`load_vectors` reads (for the pipeline and tests).

    Args:
        path: Destination ``.npz`` file.
        inputs: One sample per row.
        expected_top1: Expected class index per sample.
        expected_logits: Expected first output per sample.
        tolerance: Largest allowed absolute logit difference.
        latency_budget_ms: Optional latency budget.
        min_top1_agreement: Fraction of samples whose top-1 must match.

    Raises:
        SelfTestFormatError: If the arrays disagree on the number of samples.
    """
    if not len(inputs) == len(expected_top1) == len(expected_logits):
        raise SelfTestFormatError("inputs, expected_top1 and expected_logits need the same number of rows")
    arrays: dict[str, np.ndarray] = {
        "inputs": inputs,
        "expected_top1": np.asarray(expected_top1, dtype=np.int64),
        "expected_logits": np.asarray(expected_logits, dtype=np.float32),
        "tolerance": np.asarray(tolerance, dtype=np.float64),
        "min_top1_agreement": np.asarray(min_top1_agreement, dtype=np.float64),
    }
    if latency_budget_ms is not None:
        arrays["latency_budget_ms"] = np.asarray(latency_budget_ms, dtype=np.float64)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types the kwargs narrowly


def load_vectors(path: Path, *, max_bytes: int) -> SelfTestVectors:
    """Read and validate a self-test vectors file.

    Args:
        path: The ``.npz`` file.
        max_bytes: Refuse a file larger than this.

    Returns:
        The parsed vectors.

    Raises:
        SelfTestFormatError: If the file is missing, too large, not an npz, needs pickle, or its arrays are
            missing or inconsistent.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SelfTestFormatError(f"cannot read self-test vectors {path}: {exc}") from exc
    if size > max_bytes:
        raise SelfTestFormatError(f"self-test vectors {path} are {size} bytes, more than {max_bytes}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in REQUIRED_KEYS if key not in archive.files]
            if missing:
                raise SelfTestFormatError(f"self-test vectors lack {', '.join(missing)}")
            arrays = {key: archive[key] for key in archive.files}
    except SelfTestFormatError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise SelfTestFormatError(f"self-test vectors {path} are not a valid npz file: {exc}") from exc
    inputs, top1, logits = arrays["inputs"], arrays["expected_top1"], arrays["expected_logits"]
    if inputs.ndim < 1 or len(inputs) == 0:
        raise SelfTestFormatError("self-test vectors hold no inputs")
    if top1.shape != (len(inputs),) or not np.issubdtype(top1.dtype, np.integer):
        raise SelfTestFormatError(f"expected_top1 must be an integer array of shape ({len(inputs)},)")
    if len(logits) != len(inputs):
        raise SelfTestFormatError("expected_logits must have one row per input")
    tolerance = _scalar(arrays, "tolerance")
    if tolerance is None or not tolerance >= 0:
        raise SelfTestFormatError("tolerance must be a scalar ≥ 0")
    agreement = _scalar(arrays, "min_top1_agreement")
    agreement = 1.0 if agreement is None else agreement
    if not 0.0 <= agreement <= 1.0:
        raise SelfTestFormatError("min_top1_agreement must lie in [0, 1]")
    budget = _scalar(arrays, "latency_budget_ms")
    if budget is not None and not budget > 0:
        raise SelfTestFormatError("latency_budget_ms must be > 0")
    return SelfTestVectors(
        inputs=inputs,
        expected_top1=top1,
        expected_logits=logits.astype(np.float64),
        tolerance=tolerance,
        latency_budget_ms=budget,
        min_top1_agreement=agreement,
    )


def _scalar(arrays: dict[str, np.ndarray], key: str) -> float | None:
    if key not in arrays:
        return None
    value = arrays[key]
    if value.shape != () or not np.issubdtype(value.dtype, np.number):
        raise SelfTestFormatError(f"{key} must be a numeric scalar")
    return float(value)

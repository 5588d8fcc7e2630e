"""Typed errors of the model pipeline.

MLError
├── DataError            bad or unreadable data: names the file or the problem
├── TrainingError        training cannot proceed (diverged, empty split)
├── PruningError         a pruning request that the network cannot satisfy
├── ExportError          ONNX export, checker or parity failure
├── QuantizationError    calibration or quantization failure
├── GateError            no variant passes a profile's gates; the message is the gate table
└── WarmStartError       stored weights to fine-tune from are missing, corrupt or do not fit the data
"""

from __future__ import annotations


class MLError(Exception):
    """Root of every error raised by ``ml``."""


class DataError(MLError):
    """The data set is missing, malformed or inconsistent."""


class TrainingError(MLError):
    """Training cannot proceed."""


class PruningError(MLError):
    """Pruning cannot be applied as configured."""


class ExportError(MLError):
    """Export to ONNX failed or the exported model disagrees with torch."""


class QuantizationError(MLError):
    """Quantization failed."""


class GateError(MLError):
    """No variant passes every gate of a profile. ``str(error)`` is a table of gate, value and limit."""


class WarmStartError(MLError):
    """Weights to warm-start from cannot be used: missing, corrupt, or made for other data."""

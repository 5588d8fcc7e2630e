"""Model-aware delta patches for OTA model updates: make on the server, apply on the edge agent.

``ota.core.delta`` sits in ``ota.core`` (shared by server and agent). Apply needs only numpy, zstandard and
the stdlib; make walks the ONNX protobuf itself, so neither half imports ``onnx``. The format is described in
``format.py``; the error tree in ``errors.py``.

    from ota.core.delta import make_delta, apply_delta, read_header
    make_delta(Path("v1.onnx"), Path("v2.onnx"), Path("v1-v2.efd"))
    apply_delta(Path("v1.onnx"), Path("v1-v2.efd"), Path("v2.onnx"))
"""

from __future__ import annotations

from ota.core.delta.apply import apply_delta
from ota.core.delta.errors import (
    BaseMismatchError,
    DeltaError,
    DeltaInputError,
    LimitExceededError,
    PatchCorruptError,
    PatchFormatError,
    ResultMismatchError,
)
from ota.core.delta.format import PatchHeader, read_header
from ota.core.delta.make import compress_full, make_delta

__all__ = [
    "BaseMismatchError",
    "DeltaError",
    "DeltaInputError",
    "LimitExceededError",
    "PatchCorruptError",
    "PatchFormatError",
    "PatchHeader",
    "ResultMismatchError",
    "apply_delta",
    "compress_full",
    "make_delta",
    "read_header",
]

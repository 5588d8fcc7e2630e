"""Typed errors of the delta engine (``ota.core.delta``): one root, one class per failure a caller handles.

The OTA server meets these when it makes a patch, the edge agent when it applies one. Every failure of
``apply_delta`` is one of these (never a bare ``ValueError``, ``zstandard.ZstdError`` or ``OSError``
from a hostile patch), and each leaves no output file behind::

    DeltaError                    root: catch this to handle any delta failure
    ├── PatchFormatError          not a patch, or a version / codec / field this build cannot read
    ├── PatchCorruptError         truncated, damaged or inconsistent patch body or header
    ├── BaseMismatchError         the base file is not the one the patch was made against
    ├── ResultMismatchError       the reconstructed file does not hash to the header's sha256
    ├── LimitExceededError        the patch asks for more output, memory or base than allowed
    ├── DeltaInputError           an input file is missing or unreadable, or the output cannot be written
    └── OnnxLayoutError           make, internal: not an ONNX model (make falls back to the generic codec)
"""

from __future__ import annotations


class DeltaError(Exception):
    """Root of every error raised by ``ota.core.delta``."""


class PatchFormatError(DeltaError):
    """The file is not a delta patch, or uses a format version or codec this build does not know."""


class PatchCorruptError(DeltaError):
    """The patch is truncated, damaged, or its operations are inconsistent with its header."""


class BaseMismatchError(DeltaError):
    """The base file given to apply is not the file the patch was made against (length or sha256)."""


class ResultMismatchError(DeltaError):
    """The reconstructed output does not match the result length or sha256 promised by the header."""


class LimitExceededError(DeltaError):
    """The patch would read outside the base, write more than allowed, or allocate beyond a bound."""


class DeltaInputError(DeltaError):
    """An input file (base, new or patch) is missing or unreadable, or the output cannot be written."""


class OnnxLayoutError(DeltaError):
    """The bytes are not a well-formed ONNX ModelProto; make catches it and uses the generic codec."""

"""Errors of the inference service; each maps to one HTTP status in the protocol's error body."""

from __future__ import annotations


class ServeError(Exception):
    """Base class; also a bad setting."""

    status = 500


class ProtocolError(ServeError):
    """A request that does not follow the protocol or does not fit the model (HTTP 400)."""

    status = 400


class ModelNotFoundError(ServeError):
    """No model (or version) by that name is served here (HTTP 404)."""

    status = 404


class NotReadyError(ServeError):
    """No model has passed warm-up yet (HTTP 503)."""

    status = 503


class QueueFullError(ServeError):
    """The bounded queue is full: the client should retry later (HTTP 503 with ``Retry-After``)."""

    status = 503


class RequestTimeoutError(ServeError):
    """The request's deadline passed before its result was ready (HTTP 504)."""

    status = 504


class PayloadTooLargeError(ServeError):
    """The request body is larger than the service accepts (HTTP 413)."""

    status = 413


class InferenceError(ServeError):
    """ONNX Runtime failed on a batch (HTTP 500)."""

    status = 500


class ModelLoadError(ServeError):
    """A model failed to load or warm up; the one already serving stays.

    Attributes:
        stage: ``read``, ``load``, ``vectors``, ``warmup`` or ``selftest``.
    """

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage

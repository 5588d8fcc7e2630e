"""Prometheus metrics of the service (``GET /metrics``), on a registry of its own.

Names follow Triton's where it has one (``nv_inference_count`` vs ``nv_inference_exec_count``): the ratio
of ``edgefleet_serve_inference_count_total`` to ``edgefleet_serve_execution_count_total`` is the average
formed batch, and ``edgefleet_serve_batch_size`` is its histogram.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """The service's counters, gauges and histograms.

    Args:
        model: The served model name (a label on every series).
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_success = Counter(
            "edgefleet_serve_request_success",
            "Inference requests answered with outputs.",
            ["model"],
            registry=r,
        )
        self.request_failure = Counter(
            "edgefleet_serve_request_failure",
            "Inference requests refused or failed, by reason.",
            ["model", "reason"],
            registry=r,
        )
        self.inference_count = Counter(
            "edgefleet_serve_inference_count", "Rows (samples) inferred.", ["model"], registry=r
        )
        self.execution_count = Counter(
            "edgefleet_serve_execution_count", "Model executions (formed batches).", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "edgefleet_serve_batch_size",
            "Rows per execution (the formed batch).",
            ["model"],
            buckets=_BATCH,
            registry=r,
        )
        self.queue_duration = Histogram(
            "edgefleet_serve_queue_duration_seconds",
            "Time a request waited in the queue.",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "edgefleet_serve_compute_duration_seconds",
            "Time of one execution in ONNX Runtime.",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.request_duration = Histogram(
            "edgefleet_serve_request_duration_seconds",
            "Time from a request's arrival to its answer.",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_size = Gauge("edgefleet_serve_queue_size", "Requests waiting now.", ["model"], registry=r)
        self.loaded = Gauge(
            "edgefleet_serve_model_loaded",
            "1 for the version in service (labels name it), absent before the first model is ready.",
            ["model", "version", "sha256"],
            registry=r,
        )
        self.ready = Gauge("edgefleet_serve_ready", "1 when a warmed-up model serves.", ["model"], registry=r)
        self.swaps = Counter(
            "edgefleet_serve_swap",
            "Model loads by outcome (success, failure).",
            ["model", "outcome"],
            registry=r,
        )
        self.last_swap_duration = Gauge(
            "edgefleet_serve_last_swap_duration_seconds",
            "Seconds the last successful swap took (read, load, warm up).",
            ["model"],
            registry=r,
        )
        self._loaded_labels: tuple[str, str, str] | None = None
        # Children bound to this model once, so the hot path does no label lookup.
        self.success = self.request_success.labels(model)
        self.inferences = self.inference_count.labels(model)
        self.executions = self.execution_count.labels(model)
        self.batch_rows = self.batch_size.labels(model)
        self.queue_seconds = self.queue_duration.labels(model)
        self.compute_seconds = self.compute_duration.labels(model)
        self.request_seconds = self.request_duration.labels(model)
        self.queued = self.queue_size.labels(model)
        self.ready.labels(model).set(0)

    def set_loaded(self, version: str, sha256: str) -> None:
        """Name the version in service (and only that one)."""
        if self._loaded_labels is not None:
            self.loaded.remove(*self._loaded_labels)
        self._loaded_labels = (self.model, version, sha256)
        self.loaded.labels(*self._loaded_labels).set(1)
        self.ready.labels(self.model).set(1)

    def fail(self, reason: str) -> None:
        """Count a failed request."""
        self.request_failure.labels(self.model, reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)

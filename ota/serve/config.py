"""Settings of the inference service: Triton's dynamic batching knobs and the service's limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from ota.serve.errors import ServeError


@dataclass(frozen=True, kw_only=True)
class BatchingConfig:
    """How requests are queued and grouped into executions (the names are Triton's).

    Attributes:
        enabled: False runs every request as its own execution (the same queue and threads), so that
            batching on and off can be compared.
        max_batch_size: Most rows in one execution.
        max_queue_delay_us: How long the oldest queued request may wait for others to join its batch.
        preferred_batch_sizes: Sizes to form when the delay expires; a batch of the largest one (or of
            ``max_batch_size`` when none is given) is sent as soon as enough rows are queued.
        max_queue_size: Most requests waiting (not executing); one more is refused with 503.
        request_timeout_s: Default per-request deadline (queue + compute); a request may ask for less.
        instances: Executions that may run at once (Triton's instance count), each on its own thread.
    """

    enabled: bool = True
    max_batch_size: int = 16
    max_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 128
    request_timeout_s: float = 10.0
    instances: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ServeError("max_batch_size must be ≥ 1")
        if self.max_queue_delay_us < 0:
            raise ServeError("max_queue_delay_us must be ≥ 0")
        if any(not 1 <= size <= self.max_batch_size for size in self.preferred_batch_sizes):
            raise ServeError(f"preferred batch sizes must lie in [1, max_batch_size={self.max_batch_size}]")
        if self.max_queue_size < 1:
            raise ServeError("max_queue_size must be ≥ 1")
        if not self.request_timeout_s > 0:
            raise ServeError("request_timeout_s must be > 0")
        if self.instances < 1:
            raise ServeError("instances must be ≥ 1")

    @property
    def target_batch_size(self) -> int:
        """The batch sent without waiting out the delay: the largest preferred size, else the maximum."""
        if not self.enabled:
            return 1
        return max(self.preferred_batch_sizes, default=self.max_batch_size)

    @property
    def warmup_batch_sizes(self) -> tuple[int, ...]:
        """Batch sizes warmed up before the model is ready (so no first batch pays an allocation)."""
        if not self.enabled:
            return (1,)
        return tuple(sorted({1, self.max_batch_size, *self.preferred_batch_sizes}))


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Everything the service needs besides the model source.

    Attributes:
        model_name: The name clients use in ``/v2/models/{name}``.
        batching: Queueing and batching settings.
        intra_op_threads: ONNX Runtime intra-op threads per session (0: ORT's default).
        watch_interval_s: How often the committed model is looked for (one ``stat`` per look).
        max_request_bytes: Largest request body accepted (413 beyond).
        selftest_max_bytes: Largest self-test vectors file read at warm-up.
        providers: ONNX Runtime execution providers (ORT's available ones when empty).
    """

    model_name: str = "model"
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    intra_op_threads: int = 0
    watch_interval_s: float = 1.0
    max_request_bytes: int = 64 * 1024 * 1024
    selftest_max_bytes: int = 64 * 1024 * 1024
    providers: tuple[str, ...] = ()

"""The dynamic batcher: a bounded asyncio queue that groups requests into executions on worker threads.

Scheduling follows Triton's dynamic batcher. When an instance (a worker thread) is free, the batcher looks
at the queue: if it holds at least the target batch (the largest preferred size, else ``max_batch_size``)
it sends that at once; otherwise it waits until the oldest request has waited ``max_queue_delay_us``
(or enough rows arrive), then sends the largest preferred size it can fill, else everything up to
``max_batch_size``. While every instance is busy, requests accumulate, so batches grow with the load.
With batching off every request is its own execution, through the same queue and threads.

The queue is bounded: a request that finds ``max_queue_size`` requests waiting is refused at once with
:class:`~ota.serve.errors.QueueFullError` (HTTP 503 + ``Retry-After``), so memory stays bounded under any
load. A request whose deadline passes is answered with :class:`~ota.serve.errors.RequestTimeoutError`
and dropped from the queue (a batch already running finishes; its late rows are discarded).

Each execution takes the model in service when it starts (``models.current``) and counts itself on it, so
a hot swap lets running batches finish on the old session while the next batch runs on the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ota.serve.config import BatchingConfig
from ota.serve.errors import InferenceError, NotReadyError, QueueFullError, RequestTimeoutError
from ota.serve.metrics import ServeMetrics
from ota.serve.model import ServedModel


@dataclass(frozen=True)
class InferResult:
    """One request's outputs and the model version that computed them."""

    outputs: list[np.ndarray]
    model: ServedModel
    queue_s: float
    compute_s: float
    batch_rows: int


@dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[InferResult]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queues requests and runs them in batches on ``config.instances`` worker threads.

    Args:
        config: The batching knobs.
        current: Returns the model in service (None before the first one is ready).
        metrics: Where executions are counted.
    """

    def __init__(
        self, config: BatchingConfig, current: Callable[[], ServedModel | None], metrics: ServeMetrics
    ) -> None:
        self.config = config
        self._current = current
        self._metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._instances = asyncio.Semaphore(config.instances)
        self._executor = ThreadPoolExecutor(max_workers=config.instances, thread_name_prefix="serve-exec")
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduler: asyncio.Task[None] | None = None
        self._delay_s = config.max_queue_delay_us / 1e6

    @property
    def queued(self) -> int:
        """Requests waiting now."""
        return len(self._queue)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The worker threads executions run on."""
        return self._executor

    @property
    def full(self) -> bool:
        """True when one more request would be refused."""
        return len(self._queue) >= self.config.max_queue_size

    def start(self) -> None:
        """Start the scheduler on the running loop."""
        if self._scheduler is None:
            self._scheduler = asyncio.get_running_loop().create_task(self._schedule(), name="serve-batcher")

    async def stop(self) -> None:
        """Stop scheduling, fail what is still queued, let running executions finish, free the threads."""
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
            self._scheduler = None
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(NotReadyError("the service is shutting down"))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def infer(
        self, inputs: dict[str, np.ndarray], rows: int, timeout_s: float | None = None
    ) -> InferResult:
        """Queue one request and wait for its outputs.

        Args:
            inputs: Input name → array with ``rows`` rows (already checked against the model).
            rows: The request's batch dimension (≤ ``max_batch_size``).
            timeout_s: Deadline for this request; the configured default when None (never more).

        Raises:
            QueueFullError: The queue is full.
            RequestTimeoutError: The deadline passed.
            InferenceError: ONNX Runtime failed on the batch.
        """
        if self.full:
            raise QueueFullError(f"the queue holds {len(self._queue)} requests, its limit")
        future: asyncio.Future[InferResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, rows, future))
        self._metrics.queued.set(len(self._queue))
        self._arrived.set()
        limit = (
            self.config.request_timeout_s
            if timeout_s is None
            else min(timeout_s, self.config.request_timeout_s)
        )
        try:
            # wait_for cancels the future on timeout; the scheduler skips cancelled requests.
            return await asyncio.wait_for(future, limit)
        except TimeoutError:
            raise RequestTimeoutError(f"no result within {limit:.3f} s") from None

    async def _schedule(self) -> None:
        while True:
            await self._instances.acquire()
            try:
                batch = await self._form()
            except BaseException:
                self._instances.release()
                raise
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _drop_done(self) -> None:
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()

    async def _form(self) -> list[_Pending]:
        """Wait until a batch is due and take it from the queue."""
        while True:
            model = self._current()
            # A model without a free batch dimension runs one request per execution.
            batchable = model is None or model.batchable
            target = self.config.target_batch_size if batchable else 1
            self._drop_done()
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            rows = 0
            for pending in self._queue:
                if pending.future.done():
                    continue
                rows += pending.rows
                if rows >= target:
                    return self._take(target)
            remaining = self._queue[0].enqueued + self._delay_s - time.perf_counter()
            if remaining <= 0:
                return self._take(self._size_after_delay(rows) if batchable else 1)
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _size_after_delay(self, rows: int) -> int:
        if not self.config.enabled:
            return 1
        fitting = [size for size in self.config.preferred_batch_sizes if size <= rows]
        return max(fitting) if fitting else min(rows, self.config.max_batch_size)

    def _take(self, size: int) -> list[_Pending]:
        """Take requests in arrival order up to ``size`` rows (at least one request)."""
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            pending = self._queue[0]
            if pending.future.done():
                self._queue.popleft()
                continue
            if batch and rows + pending.rows > size:
                break
            batch.append(self._queue.popleft())
            rows += pending.rows
            if rows >= size:
                break
        self._metrics.queued.set(len(self._queue))
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            model = self._current()
            if model is None:
                _fail(batch, NotReadyError("no model is ready"))
                return
            batch = [pending for pending in batch if not pending.future.done()]
            if not batch:
                return
            started = time.perf_counter()
            rows = sum(pending.rows for pending in batch)
            model.enter()
            try:
                # Requests were checked against the model in service when they arrived; after a swap to a
                # model with another signature, concatenation or ORT fails here and the batch gets a 500.
                feeds = _concatenate(batch, model)
                outputs = await asyncio.get_running_loop().run_in_executor(self._executor, model.run, feeds)
            except Exception as exc:  # ORT's error types are not public
                _fail(batch, InferenceError(f"inference failed: {exc}"))
                return
            finally:
                model.leave()
            compute_s = time.perf_counter() - started
            m = self._metrics
            m.executions.inc()
            m.inferences.inc(rows)
            m.batch_rows.observe(rows)
            m.compute_seconds.observe(compute_s)
            offset = 0
            for pending in batch:
                queue_s = started - pending.enqueued
                m.queue_seconds.observe(queue_s)
                if not pending.future.done():
                    if len(batch) == 1:
                        parts = outputs
                    else:
                        parts = [out[offset : offset + pending.rows] for out in outputs]
                    pending.future.set_result(InferResult(parts, model, queue_s, compute_s, rows))
                offset += pending.rows
        finally:
            self._instances.release()


def _concatenate(batch: list[_Pending], model: ServedModel) -> dict[str, np.ndarray]:
    if len(batch) == 1:
        return batch[0].inputs
    return {spec.name: np.concatenate([p.inputs[spec.name] for p in batch], axis=0) for spec in model.inputs}


def _fail(batch: list[_Pending], error: Exception) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)

"""Keeps the model in service and swaps it when the source offers another (hot swap).

A swap loads the new model beside the old one and warms it up on a worker thread (the event loop keeps
serving), then replaces one reference on the event loop: executions that already took the old model finish
on it, and the next one takes the new model. The old session is released once its last execution ended.
A model that fails to load or warm up leaves the old one serving: the failure is logged, counted
(``edgefleet_serve_swap_total{outcome="failure"}``), shown in the model metadata, and not retried until the
source offers something else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

from ota.serve.errors import ModelLoadError
from ota.serve.metrics import ServeMetrics
from ota.serve.model import ModelCandidate, ServedModel
from ota.serve.source import ModelSource

log = logging.getLogger(__name__)

#: How long a replaced model may keep running executions before its session is dropped anyway.
DRAIN_TIMEOUT_S = 60.0


class ModelManager:
    """Owns the model in service.

    Args:
        source: Offers the model to serve.
        load: Builds a warmed-up model from a candidate (blocking; run on a worker thread).
        metrics: Where swaps are counted.
        watch_interval_s: How often the source is polled.
    """

    def __init__(
        self,
        source: ModelSource,
        load: Callable[[ModelCandidate], ServedModel],
        metrics: ServeMetrics,
        *,
        watch_interval_s: float = 1.0,
    ) -> None:
        self.source = source
        self._load = load
        self._metrics = metrics
        self.watch_interval_s = watch_interval_s
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self.swaps = 0
        self._failed_key: str | None = None
        self._lock = asyncio.Lock()
        self._poke = asyncio.Event()
        self._retired: set[asyncio.Task[None]] = set()
        #: Where the first model is loaded: the batcher's worker thread, so that ORT's per-thread scratch
        #: buffers (MLAS) are warm on the thread that will serve; later swaps load on a side thread.
        self.first_load_executor: Executor | None = None

    @property
    def ready(self) -> bool:
        """True once a warmed-up model serves."""
        return self.current is not None

    def poke(self) -> None:
        """Look at the source now instead of at the next interval."""
        self._poke.set()

    async def check(self) -> bool:
        """Swap to the source's model if it offers a new one; True when a swap happened."""
        async with self._lock:
            candidate = await asyncio.to_thread(self.source.poll)
            if candidate is None:
                return False
            current = self.current
            if current is not None and candidate.key == current.candidate.key:
                return False
            if candidate.key == self._failed_key:
                return False
            started = time.perf_counter()
            try:
                if current is None and self.first_load_executor is not None:
                    loop = asyncio.get_running_loop()
                    model = await loop.run_in_executor(self.first_load_executor, self._load, candidate)
                else:
                    model = await asyncio.to_thread(self._load, candidate)
            except ModelLoadError as exc:
                self._failed_key = candidate.key
                self.last_error = f"version {candidate.version}: {exc}"
                self._metrics.swaps.labels(self._metrics.model, "failure").inc()
                log.error(
                    "model version %s not loaded, %s keeps serving: %s",
                    candidate.version,
                    "version " + current.version if current else "nothing",
                    exc,
                )
                return False
            duration = time.perf_counter() - started
            self.current = model  # the atomic switch: the next execution takes this one
            self.swaps += 1
            self._failed_key = None
            self.last_error = None
            self._metrics.swaps.labels(self._metrics.model, "success").inc()
            self._metrics.last_swap_duration.labels(self._metrics.model).set(duration)
            self._metrics.set_loaded(model.version, model.sha256)
            log.info(
                "serving %s version %s (sha256 %s…), loaded and warmed up in %.3f s",
                model.name,
                model.version,
                model.sha256[:12],
                duration,
            )
            if current is not None:
                task = asyncio.get_running_loop().create_task(self._retire(current))
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
            return True

    async def _retire(self, model: ServedModel) -> None:
        """Drop the old model once its running executions have finished."""
        if not await asyncio.to_thread(model.wait_idle, DRAIN_TIMEOUT_S):
            log.warning(
                "version %s still ran executions after %.0f s; releasing it", model.version, DRAIN_TIMEOUT_S
            )
        del model  # the last reference the service held; ORT frees the session with it

    async def watch(self) -> None:
        """Poll the source forever (until cancelled); a failure to poll is logged, never fatal."""
        while True:
            self._poke.clear()  # before the look, so a poke during it triggers the next one at once
            try:
                await self.check()
            except Exception:  # a source error must not stop the watcher; the next look retries
                log.exception("looking for a new model failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.watch_interval_s)

"""The HTTP/REST endpoints of the Open Inference Protocol, on Starlette (served by uvicorn).

``GET /v2/health/live``, ``/v2/health/ready``, ``GET /v2``, ``GET /v2/models/{name}[/versions/{v}]``,
``/v2/models/{name}[/versions/{v}]/ready``, ``POST /v2/models/{name}[/versions/{v}]/infer``, Triton's
``POST /v2/repository/models/{name}/load`` (look for a newly committed model now) and ``GET /metrics``.
Every error is the protocol's ``{"error": "..."}`` body; a full queue answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ota.serve.batcher import Batcher
from ota.serve.config import ServeConfig
from ota.serve.errors import (
    ModelNotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    QueueFullError,
    RequestTimeoutError,
    ServeError,
)
from ota.serve.manager import ModelManager
from ota.serve.metrics import CONTENT_TYPE, ServeMetrics
from ota.serve.model import ModelCandidate, ServedModel, load_model
from ota.serve.protocol import HEADER_LENGTH, decode_request, encode_response
from ota.serve.source import ModelSource

log = logging.getLogger(__name__)

_REASONS: dict[type[ServeError], str] = {
    QueueFullError: "queue_full",
    RequestTimeoutError: "timeout",
    NotReadyError: "not_ready",
    PayloadTooLargeError: "too_large",
    ModelNotFoundError: "not_found",
}


def _server_version() -> str:
    try:
        return version("edgefleet")
    except PackageNotFoundError:
        return "unknown"


def error_response(exc: ServeError) -> JSONResponse:
    """The protocol's error body for ``exc``, with ``Retry-After`` when the queue was full."""
    headers = {"retry-after": "1"} if isinstance(exc, QueueFullError) else None
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)


class ServeService:
    """The parts of one running service: source watcher, model manager, batcher and metrics.

    Args:
        source: Where the model comes from.
        config: The service's settings.
    """

    def __init__(self, source: ModelSource, config: ServeConfig) -> None:
        self.config = config
        self.metrics = ServeMetrics(config.model_name)
        self.manager = ModelManager(
            source, self._load, self.metrics, watch_interval_s=config.watch_interval_s
        )
        self.batcher: Batcher | None = None

    def _load(self, candidate: ModelCandidate) -> ServedModel:
        return load_model(
            candidate,
            name=self.config.model_name,
            batch_sizes=self.config.batching.warmup_batch_sizes,
            intra_op_threads=self.config.intra_op_threads,
            providers=self.config.providers,
            selftest_max_bytes=self.config.selftest_max_bytes,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        """Start the batcher and the watcher (the first load happens in the background: live before ready)."""
        self.batcher = Batcher(self.config.batching, lambda: self.manager.current, self.metrics)
        self.batcher.start()
        self.manager.first_load_executor = self.batcher.executor
        watcher = asyncio.get_running_loop().create_task(self.manager.watch(), name="serve-watcher")
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, self.manager.poke)
        log.info("watching %s", self.manager.source.describe())
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.batcher.stop()

    # --- helpers -------------------------------------------------------------------------------------
    def _model(self, request: Request) -> ServedModel:
        name = request.path_params["name"]
        if name != self.config.model_name:
            raise ModelNotFoundError(
                f"no model named {name!r}; this service serves {self.config.model_name!r}"
            )
        model = self.manager.current
        if model is None:
            raise NotReadyError(f"model {name!r} is not ready yet (loading or warming up)")
        wanted = request.path_params.get("version")
        if wanted is not None and wanted != model.version:
            raise ModelNotFoundError(f"model {name!r} serves version {model.version!r}, not {wanted!r}")
        return model

    # --- endpoints -----------------------------------------------------------------------------------
    async def live(self, _request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, _request: Request) -> Response:
        ready = self.manager.ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def server_metadata(self, _request: Request) -> Response:
        return JSONResponse(
            {
                "name": "edgefleet-serve",
                "version": _server_version(),
                "extensions": ["binary_tensor_data", "model_repository"],
            }
        )

    async def model_metadata(self, request: Request) -> Response:
        document = self._model(request).metadata()
        if self.manager.last_error is not None:
            document["parameters"]["last_load_error"] = self.manager.last_error
        return JSONResponse(document)

    async def model_ready(self, request: Request) -> Response:
        self._model(request)
        return JSONResponse({"name": request.path_params["name"], "ready": True})

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await self._infer(request)
        except ServeError as exc:
            self.metrics.fail(_REASONS.get(type(exc), "bad_request" if exc.status == 400 else "internal"))
            return error_response(exc)
        self.metrics.success.inc()
        self.metrics.request_seconds.observe(time.perf_counter() - started)
        return response

    async def _infer(self, request: Request) -> Response:
        model = self._model(request)
        limit = self.config.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"the body is {declared} bytes, more than {limit}")
        assert self.batcher is not None
        if self.batcher.full:  # shed before reading and parsing the body: refusing must stay cheap
            raise QueueFullError(f"the queue holds {self.config.batching.max_queue_size} requests, its limit")
        body = await request.body()
        if len(body) > limit:
            raise PayloadTooLargeError(f"the body is more than {limit} bytes")
        decoded = decode_request(
            body,
            request.headers.get(HEADER_LENGTH),
            model,
            max_batch_size=self.config.batching.max_batch_size,
        )
        result = await self.batcher.infer(decoded.inputs, decoded.rows, decoded.timeout_s)
        payload, headers = encode_response(decoded, result.model, result.outputs)
        return Response(payload, headers=headers)

    async def load(self, request: Request) -> Response:
        if request.path_params["name"] != self.config.model_name:
            return error_response(ModelNotFoundError(f"no model named {request.path_params['name']!r}"))
        await self.manager.check()
        if self.manager.last_error is not None:
            return JSONResponse({"error": self.manager.last_error}, status_code=400)
        current = self.manager.current
        if current is None:
            return error_response(NotReadyError("the source offers no model yet"))
        return JSONResponse({"name": current.name, "version": current.version})

    async def metrics_endpoint(self, _request: Request) -> Response:
        assert self.batcher is not None
        self.metrics.queued.set(self.batcher.queued)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def _guard(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ServeError as exc:
            return error_response(exc)

    return guarded


def build_app(source: ModelSource, config: ServeConfig) -> Starlette:
    """Build the ASGI app serving ``source`` with ``config``; ``app.state.service`` holds its parts."""
    service = ServeService(source, config)
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", service.live),
        Route("/v2/health/ready", service.ready),
        Route("/v2", service.server_metadata),
        Route(model, _guard(service.model_metadata)),
        Route(versioned, _guard(service.model_metadata)),
        Route(f"{model}/ready", _guard(service.model_ready)),
        Route(f"{versioned}/ready", _guard(service.model_ready)),
        Route(f"{model}/infer", service.infer, methods=["POST"]),
        Route(f"{versioned}/infer", service.infer, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", service.load, methods=["POST"]),
        Route("/metrics", service.metrics_endpoint),
    ]
    app = Starlette(routes=routes, lifespan=service.lifespan)
    app.state.service = service
    return app

"""``edgefleet serve`` and the ``edgefleet-serve`` console script: run the inference service.

The root CLI mounts :func:`serve` lazily, so ``edgefleet --help`` imports none of this.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ota.core.logs import quiet_library_loggers
from ota.serve.config import BatchingConfig, ServeConfig
from ota.serve.errors import ServeError
from ota.serve.source import AgentStateSource, FileSource, ModelSource

log = logging.getLogger(__name__)


def _source(
    state_dir: Path | None, model: Path | None, model_uri: str | None, vectors: Path | None
) -> ModelSource:
    given = [
        flag
        for flag, value in (("--state-dir", state_dir), ("--model", model), ("--model-uri", model_uri))
        if value
    ]
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --state-dir, --model or --model-uri")
    if state_dir is not None:
        return AgentStateSource(state_dir)
    if model is not None:
        if not model.is_file():
            raise typer.BadParameter(f"{model} is not a file", param_hint="--model")
        return FileSource(model, vectors=vectors)
    assert model_uri is not None
    return _registry_source(model_uri, vectors)


def _registry_source(uri: str, vectors: Path | None) -> ModelSource:
    """Fetch ``models:/NAME@ALIAS`` through the registry package (pipeline extra only, never on a device).

    Imported by name on purpose: the edge install has no MLflow, and the import-linter contract keeps
    ``ota.serve`` from importing ``registry`` statically.
    """
    try:
        fetch = importlib.import_module("registry.fetch")
    except ModuleNotFoundError as exc:
        raise typer.BadParameter(
            f"--model-uri needs the pipeline extra (missing module {exc.name}); on a device use --state-dir",
            param_hint="--model-uri",
        ) from None
    try:
        name, version_or_alias = fetch.parse_model_uri(uri)
        fetched = fetch.fetch_model(name, version_or_alias, Path(tempfile.mkdtemp(prefix="edgefleet-serve-")))
    except Exception as exc:  # the registry's typed errors live in the pipeline extra
        raise typer.BadParameter(str(exc), param_hint="--model-uri") from None
    facts = fetched.facts
    return FileSource(
        fetched.onnx_path,
        version=str(facts.version),
        vectors=vectors,
        parameters={"model_uri": uri, "mlflow_version": str(facts.version)},
    )


def serve(
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Serve what the edge agent committed in this state dir."),
    ] = None,
    model: Annotated[Path | None, typer.Option("--model", help="Serve this ONNX file.")] = None,
    model_uri: Annotated[
        str | None, typer.Option("--model-uri", help="Serve models:/NAME@ALIAS (needs the pipeline extra).")
    ] = None,
    vectors: Annotated[
        Path | None, typer.Option("--vectors", help="Self-test vectors for --model/--model-uri warm-up.")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="The model's name in /v2/models/{name}.")] = "model",
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    batching: Annotated[
        bool, typer.Option("--batching/--no-batching", help="Dynamic batching on or off.")
    ] = True,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="Most rows per execution.")] = 16,
    max_queue_delay_us: Annotated[
        int, typer.Option("--max-queue-delay-us", help="Longest wait for a batch to fill.")
    ] = 2000,
    preferred_batch_size: Annotated[
        list[int] | None, typer.Option("--preferred-batch-size", help="Preferred batch size (repeatable).")
    ] = None,
    max_queue_size: Annotated[
        int, typer.Option("--max-queue-size", help="Most waiting requests; more get 503 + Retry-After.")
    ] = 128,
    request_timeout_ms: Annotated[
        float, typer.Option("--request-timeout-ms", help="Per-request deadline (queue + compute).")
    ] = 10_000,
    instances: Annotated[int, typer.Option("--instances", help="Executions that may run at once.")] = 1,
    threads: Annotated[
        int, typer.Option("--intra-op-threads", help="ONNX Runtime intra-op threads (0: ORT's default).")
    ] = 0,
    watch_interval_s: Annotated[
        float, typer.Option("--watch-interval", help="Seconds between looks for a newly committed model.")
    ] = 1.0,
    max_connections: Annotated[
        int, typer.Option("--max-connections", help="Concurrent connections before uvicorn answers 503.")
    ] = 512,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log library messages too.")] = False,
) -> None:
    """Serve the committed model over the Open Inference Protocol (KServe v2 / Triton HTTP/REST)."""
    import uvicorn

    from ota.serve.app import build_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_library_loggers(verbose=verbose)
    try:
        config = ServeConfig(
            model_name=name,
            batching=BatchingConfig(
                enabled=batching,
                max_batch_size=max_batch_size,
                max_queue_delay_us=max_queue_delay_us,
                preferred_batch_sizes=tuple(preferred_batch_size or ()),
                max_queue_size=max_queue_size,
                request_timeout_s=request_timeout_ms / 1000,
                instances=instances,
            ),
            intra_op_threads=threads,
            watch_interval_s=watch_interval_s,
        )
    except ServeError as exc:
        raise typer.BadParameter(str(exc)) from None
    app = build_app(_source(state_dir, model, model_uri, vectors), config)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        limit_concurrency=max_connections,
        timeout_graceful_shutdown=5,
    )


_serve_only = typer.Typer(add_completion=False)
_serve_only.command()(serve)


def serve_main() -> None:
    """Console-script entry point ``edgefleet-serve`` (``edgefleet serve`` as its own program)."""
    _serve_only()

"""``edgefleet trace DEVICE_ID``: print the chain from a device to the data and code behind its model.

Mounted lazily by the root CLI (``ota/cli.py`` GROUPS: ``"trace": ("registry.trace_cli:trace", ...)``).
Reads the OTA server through its HTTP API (``--server`` / ``$EDGEFLEET_SERVER_URL``, operator token in
``$EDGEFLEET_OPERATOR_TOKEN``) and MLflow (``--tracking-uri`` / ``$MLFLOW_TRACKING_URI`` / the embedded
store). Errors become one red line and exit code 1.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from registry.cli import resolve_tracking_uri
from registry.errors import RegistryError
from registry.trace import OtaApi, operator_token_from_env, render_trace, server_url_from_env, trace_device

console = Console()


def trace(
    device_id: Annotated[str, typer.Argument(help="Device id on the OTA server.")],
    server: Annotated[
        str | None, typer.Option(help="OTA server URL (default $EDGEFLEET_SERVER_URL).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow URI (default $MLFLOW_TRACKING_URI).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the chain as JSON.")] = False,
) -> None:
    """Trace a device: installed release → model version → training run → data, commit, config, teacher."""
    try:
        with OtaApi(base_url=server_url_from_env(server), token=operator_token_from_env()) as api:
            chain = trace_device(device_id, api=api, tracking_uri=resolve_tracking_uri(tracking_uri))
    except RegistryError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(chain.as_dict(), indent=2))
        return
    for line in render_trace(chain):
        typer.echo(line)

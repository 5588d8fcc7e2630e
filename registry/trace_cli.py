"""``edgefleet trace DEVICE_ID``: print the chain from a device to the data and code behind its model.

Mounted lazily by the root CLI (``ota/cli.py`` GROUPS: ``"trace": ("registry.trace_cli:trace", ...)``).
Reads the OTA server through its HTTP API with :mod:`ota.client` (``--server`` / ``$EDGEFLEET_SERVER``,
operator token with the read scope in ``$EDGEFLEET_OPERATOR_TOKEN``) and MLflow (``--tracking-uri`` /
``$MLFLOW_TRACKING_URI`` / the embedded store under ``$EDGEFLEET_HOME``). Read-only: a missing MLflow store
is an error naming where it looked, never a new empty store. Errors become one red line and exit code 1.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ota.client.api import OperatorClient
from ota.client.config import SERVER_ENV, operator_token_from_env, server_url_from_env
from ota.client.errors import ClientError
from registry.errors import RegistryError
from registry.trace import render_trace, trace_device
from registry.uris import open_registry, resolve_tracking_uri

console = Console(stderr=True)


def trace(
    device_id: Annotated[str, typer.Argument(help="Device id on the OTA server.")],
    server: Annotated[
        str | None, typer.Option(help=f"OTA server URL (default ${SERVER_ENV}, else http://127.0.0.1:8000).")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow URI (default $MLFLOW_TRACKING_URI, else $EDGEFLEET_HOME's store)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the chain as JSON.")] = False,
) -> None:
    """Trace a device: installed release → model version → training run → data, commit, config, teacher."""
    try:
        uri = resolve_tracking_uri(tracking_uri)
        open_registry(uri)  # refuses a SQLite store that does not exist instead of creating an empty one
        with OperatorClient(base_url=server_url_from_env(server), token=operator_token_from_env()) as api:
            chain = trace_device(device_id, api=api, tracking_uri=uri)
    except (RegistryError, ClientError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(chain.as_dict(), indent=2))
        return
    for line in render_trace(chain):
        typer.echo(line)

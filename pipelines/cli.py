"""``edgefleet stack`` and ``edgefleet pipeline``: the ZenML side of the CLI.

ZenML reads its config path when it is first imported, so each group's callback points it at the
project-local store (``pipelines.paths.configure_environment``) before a command imports zenml; importing
this module changes nothing.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from pipelines.paths import configure_environment

# Wide enough for the variants table when output is a pipe or a CI log rather than a terminal.
console = Console(width=None if Console().is_terminal else 160)
stack_app = typer.Typer(help="Register and activate the ZenML stack.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Summarise training pipeline runs.", no_args_is_help=True)


@stack_app.callback()
@pipeline_app.callback()
def project_environment() -> None:
    """Point ZenML at the project-local store (``$ZENML_CONFIG_PATH`` wins), before any zenml import."""
    configure_environment()


@stack_app.command("init")
def stack_init(
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="Remote MLflow tracking URI; default: embedded SQLite under .edgefleet/."),
    ] = None,
    name: Annotated[str, typer.Option(help="ZenML stack name.")] = "edgefleet",
) -> None:
    """Register (once) and activate the stack: local orchestrator, default artifact store, MLflow.

    To use a ZenML server, run `zenml login <url>` first; the stack is then registered there.
    """
    from pipelines.stack import ensure_stack

    info = ensure_stack(tracking_uri=tracking_uri, stack_name=name)
    verb = "registered and activated" if info.created else "already registered; activated"
    console.print(f"stack [bold]{info.name}[/] {verb}")
    console.print(f"  MLflow tracking URI: {info.tracking_uri}")
    console.print(f"  ZenML store:         {info.zenml_store}")


@pipeline_app.command("summary")
def pipeline_summary() -> None:
    """Print the last training run's variants table, the registered versions and where to look."""
    from pipelines.stack import ensure_tracking_uri
    from pipelines.summary import print_summary

    ensure_tracking_uri()
    try:
        print_summary(console)
    except LookupError as exc:
        console.print(f"[red]{exc}[/]: run `make run` first")
        raise typer.Exit(1) from exc

"""``edgefleet stack``, ``edgefleet pipeline`` and ``edgefleet demo``: the ZenML side of the CLI.

ZenML reads its config path at import time, so this module sets the project-local environment before any
zenml import (``pipelines.paths.configure_environment``).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from pipelines.paths import configure_environment

configure_environment()

console = Console()
stack_app = typer.Typer(help="Register and activate the ZenML stack.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Run the training pipeline and print its results.", no_args_is_help=True)


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


@pipeline_app.command("run")
def pipeline_run(
    config: Annotated[str, typer.Option("--config", "-c", help="Pipeline YAML.")] = "configs/default.yaml",
) -> None:
    """Run the training pipeline with a config and print the variants and registered versions."""
    from pipelines.runner import run_training

    raise typer.Exit(run_training(config, console=console))


def demo_command(
    config: Annotated[str, typer.Option("--config", "-c", help="Pipeline YAML.")] = "configs/default.yaml",
) -> None:
    """Run the main job on embedded defaults: the training pipeline, then its summary."""
    from pipelines.runner import run_training

    raise typer.Exit(run_training(config, console=console))

"""The ``edgefleet`` command: a root that mounts each group lazily from beside the code it drives.

The root sits in ``ota`` because ``ota`` is the one package every install profile runs (``pip install
.[edge]`` on a vehicle included). Groups are imported only when invoked, so ``edgefleet agent ...``
never loads training or server code, and ``edgefleet --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

import click
import typer.main

# name -> ("module:attribute" of a typer.Typer, one-line help shown by --help without importing it)
GROUPS: dict[str, tuple[str, str]] = {
    "stack": ("pipelines.cli:stack_app", "Register and activate the ZenML stack (local or remote MLflow)."),
    "pipeline": ("pipelines.cli:pipeline_app", "Run the training pipeline and print its results."),
    "demo": ("pipelines.cli:demo_command", "Run the main job on embedded defaults (what `make run` runs)."),
    "models": ("registry.cli:models_app", "List, compare, promote and roll back model versions."),
    "delta": ("ota.core.cli:delta_app", "Make, apply and inspect model-aware delta patches."),
    "server": ("ota.server.cli:server_app", "Run and migrate the OTA server."),
    "keys": ("ota.server.cli:keys_app", "Create and rotate the TUF and director keys."),
    "tokens": ("ota.server.cli:tokens_app", "Create and revoke operator API tokens."),
    "release": ("ota.server.cli:release_app", "Publish model artifacts as signed releases."),
    "rollout": ("ota.server.cli:rollout_app", "Start, watch, pause, resume and abort rollouts."),
    "agent": ("ota.edge.cli:agent_app", "Run the edge agent on this device."),
    "fleet": ("ota.edge.cli:fleet_app", "Simulate a fleet of agents against a server."),
}


def _load(spec: str) -> click.Command:
    module_name, _, attribute = spec.partition(":")
    target: Any = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, typer.Typer):
        return typer.main.get_command(target)
    if callable(target):
        return typer.main.get_command(_single(target))
    raise TypeError(f"{spec} is not a Typer app or a command function")


def _single(function: Any) -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command()(function)
    return app


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = GROUPS.get(cmd_name)
        if spec is None:
            return None
        try:
            command = _load(spec[0])
        except ModuleNotFoundError as exc:
            raise click.ClickException(
                f"`edgefleet {cmd_name}` needs a dependency that is not installed ({exc.name}). "
                "Install the matching extra, for example `pip install 'edgefleet[pipeline,server]'`."
            ) from exc
        command.help = command.help or spec[1]
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, GROUPS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """EdgeFleet: train, distil, quantize and register models, then ship them over the air."""


def main() -> None:
    """Console-script entry point."""
    cli()

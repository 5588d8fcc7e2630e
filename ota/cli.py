"""The ``edgefleet`` command: a root that mounts each group lazily from beside the code it drives.

The root sits in ``ota`` because ``ota`` is the one package every install profile runs (``pip install
.[edge]`` on a vehicle included). Groups are imported only when invoked, so ``edgefleet agent ...``
never loads training or server code. The root's own help lists every group from ``GROUPS`` alone, without
importing any of them: a group's module pulls in MLflow, ZenML, ONNX or FastAPI, and ``edgefleet --help``
must stay fast (``tests/unit/cli/test_root_help.py`` pins that it imports none of them).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Annotated, Any

import typer
import typer.main
from typer import _click  # typer >= 0.20 vendors its own click; groups must be built from the same one.
from typer.core import TyperCommand, TyperGroup

# name -> ("module:attribute" of a typer.Typer or a command function, one-line help)
GROUPS: dict[str, tuple[str, str]] = {
    "stack": ("pipelines.cli:stack_app", "Register and activate the ZenML stack (local or remote MLflow)."),
    "pipeline": ("pipelines.cli:pipeline_app", "Summarise training pipeline runs (variants, versions)."),
    "models": ("registry.cli:models_app", "List, compare, promote and roll back model versions."),
    "trace": (
        "registry.trace_cli:trace",
        "Trace a device's model back to its data, code and teacher (over the API).",
    ),
    "delta": ("ota.core.cli:delta_app", "Make, apply and inspect model-aware delta patches."),
    "server": (
        "ota.server.cli:server_app",
        "Run and migrate the OTA server; the first admin token (server host, database).",
    ),
    "keys": ("ota.server.cli:keys_app", "Create and rotate the TUF and director keys (server host)."),
    "tokens": ("ota.client.cli:tokens_app", "Create, list and revoke API and provisioning tokens (API)."),
    "devices": ("ota.client.cli:devices_app", "List and show devices; accept, reject or revoke them (API)."),
    "release": ("ota.client.cli:release_app", "Publish model artifacts as signed releases (API)."),
    "rollout": ("ota.client.cli:rollout_app", "Start, watch, pause, resume and abort rollouts (API)."),
    "agent": ("ota.edge.cli:agent_app", "Run the edge agent on this device."),
    "fleet": ("ota.edge.cli:fleet_app", "Simulate a fleet of agents against a server."),
    "serve": (
        "ota.serve.cli:serve",
        "Serve the committed model over the Open Inference Protocol (batching, hot swap).",
    ),
}


def _load(name: str, spec: str) -> _click.Command:
    module_name, _, attribute = spec.partition(":")
    target: Any = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, typer.Typer):
        if target.registered_callback is None:
            # A Typer app with one command collapses into that command; a callback keeps it a group,
            # so `edgefleet stack init` stays `stack init` even while `init` is the only command.
            target.callback()(_group_callback)
        command = typer.main.get_command(target)
    elif callable(target):
        single = typer.Typer(add_completion=False)
        single.command(name=name)(target)
        command = typer.main.get_command(single)
    else:
        raise TypeError(f"{spec} is not a Typer app or a command function")
    command.name = name
    return command


def _group_callback() -> None:
    """Keep a one-command Typer app a group."""


def _unavailable(name: str, help_text: str, reason: str) -> _click.Command:
    """A placeholder for a group whose code or dependencies are not installed here."""

    def fail() -> None:
        raise _click.ClickException(
            f"`edgefleet {name}` is not available in this install ({reason}). "
            "Install the matching extra, for example `pip install 'edgefleet[pipeline,server]'`."
        )

    return TyperCommand(name=name, callback=fail, help=f"{help_text} [unavailable: {reason}]")


def _listing_entry(name: str, help_text: str) -> _click.Command:
    """What the root's help shows for a group: its name and one line, with nothing imported."""
    return TyperCommand(name=name, callback=None, help=help_text)


class LazyGroup(TyperGroup):
    """The root group: sub-commands are imported on first use, and only the one invoked.

    Click (and typer's rich help) build a group's help by calling ``get_command`` for every listed name;
    while the root formats its own help, ``get_command`` answers with a listing entry instead of importing.
    """

    _formatting_help = False

    @contextlib.contextmanager
    def _listing_only(self) -> Iterator[None]:
        self._formatting_help = True
        try:
            yield
        finally:
            self._formatting_help = False

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        with self._listing_only():
            super().format_help(ctx, formatter)

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return sorted(GROUPS)

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        spec = GROUPS.get(cmd_name)
        if spec is None:
            return None
        if self._formatting_help:
            return _listing_entry(cmd_name, spec[1])
        try:
            return _load(cmd_name, spec[0])
        except ModuleNotFoundError as exc:
            return _unavailable(cmd_name, spec[1], f"missing module {exc.name}")


app = typer.Typer(
    cls=LazyGroup,
    add_completion=False,
    no_args_is_help=True,
    help="EdgeFleet: train, distil, quantize and register models, then ship them over the air.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgefleet")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"edgefleet {_version()}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """EdgeFleet: train, distil, quantize and register models, then ship them over the air."""


def main() -> None:
    """Console-script entry point."""
    app()

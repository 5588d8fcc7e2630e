"""``edgefleet models``: list, show, compare, promote and roll back model versions in the MLflow registry.

Mounted lazily by the root CLI (``ota/cli.py`` → ``registry.cli:models_app``). Thin on purpose: each command
reads through ``registry.store``, decides through ``registry.promotion`` and renders with ``registry.views``.
Every registry error ends as a one-line message on stderr and exit code 1, never a traceback.

The store is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded demo store
``sqlite:///$EDGEFLEET_HOME/mlflow.db`` (``EDGEFLEET_HOME`` defaults to ``./.edgefleet``), the same
convention as ``pipelines/paths.py``, which this package may not import (registry must not load zenml).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from registry.errors import PromotionRefusedError, RegistryError
from registry.fields import VersionLike, group_edgefleet_versions
from registry.policy import (
    DEFAULT_MARGIN_ACCURACY,
    DEFAULT_MARGIN_P99,
    DEFAULT_MARGIN_P99_FLOOR_MS,
    PRODUCTION_ALIAS,
    gate_results,
)
from registry.readmodel import SqlRegistryReader, open_reader
from registry.uris import existing_store_uri, open_registry, resolve_tracking_uri
from registry.views import compare_table, gates_table, review_table, version_detail, versions_table

# `models list` and `models show` only read: they go through registry/readmodel.py when it can serve the
# store and never import MLflow (about 1.5 s of imports on a 2-core machine); every other command, and those
# two on stores the reader does not handle, use MLflow's client, imported when first needed.

models_app = typer.Typer(
    name="models",
    help="List, compare, promote and roll back model versions (MLflow aliases and tags, never stages).",
    no_args_is_help=True,
    add_completion=False,
)

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, else sqlite:///$EDGEFLEET_HOME/mlflow.db.",
        show_default=False,
    ),
]
Name = Annotated[str, typer.Argument(help="Registered model name, e.g. edgefleet-digits-cpu-int8-small.")]
Actor = Annotated[str | None, typer.Option("--actor", help="Who is acting (default: the OS user).")]


def _open_reader(explicit: str | None) -> SqlRegistryReader | None:
    """The MLflow-free reader on the resolved store, or None when MLflow's client must read it."""
    return open_reader(existing_store_uri(explicit))


def _stdout() -> Console:
    # Built per command so CliRunner (and any caller swapping sys.stdout) captures the output.
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Rich assumes 80 columns when stdout is not a terminal (`make run | tee`, CI logs); the metric
        # tables need more, and a log file has no width to respect.
        console.width = 120
    return console


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


@contextmanager
def _reported() -> Iterator[None]:
    """Map registry and MLflow errors to one red line on stderr and exit code 1."""
    try:
        yield
    except RegistryError as exc:
        _stderr().print(f"[bold red]error:[/] {escape(str(exc).splitlines()[0] if str(exc) else repr(exc))}")
        raise typer.Exit(1) from None
    except Exception as exc:
        # MLflow is imported only by the commands that need it; without it loaded, no MlflowException exists.
        mlflow_exceptions = sys.modules.get("mlflow.exceptions")
        if mlflow_exceptions is None or not isinstance(exc, mlflow_exceptions.MlflowException):
            raise
        _stderr().print(f"[bold red]error:[/] MLflow: {escape(exc.message)}")
        raise typer.Exit(1) from None


@models_app.command("list")
def list_versions(
    name: Annotated[
        str | None, typer.Argument(help="Registered model name; omit for every EdgeFleet model.")
    ] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Versions with aliases, accuracy, drop vs teacher, size, P50/P99, profile and age."""
    out = _stdout()
    with _reported():
        grouped: dict[str, list[VersionLike]]
        aliases: Callable[[str], dict[str, str]]
        reader = _open_reader(tracking_uri)
        if reader is not None:
            found = {name: reader.versions(name)} if name else group_edgefleet_versions(reader.all_versions())
            grouped = {model: list(versions) for model, versions in found.items()}
            aliases = reader.aliases
        else:
            from functools import partial

            from registry.store import edgefleet_versions, model_aliases, model_versions

            client = open_registry(tracking_uri)
            # One search for the versions; aliases need one read per model (searches do not return them).
            slow = {name: model_versions(client, name)} if name else edgefleet_versions(client)
            grouped = {model: list(versions) for model, versions in slow.items()}
            aliases = partial(model_aliases, client)
        if not grouped:
            out.print(f"No EdgeFleet model is registered in {resolve_tracking_uri(tracking_uri)}.")
            return
        for model, versions in grouped.items():
            out.print(versions_table(model, versions, aliases(model)))


@models_app.command("show")
def show_version(
    name: Name,
    version: Annotated[
        str, typer.Argument(help="Version number or alias (candidate, production, previous).")
    ],
    tracking_uri: TrackingUri = None,
) -> None:
    """Everything about one version: identity, lineage, metrics, gates, promotion audit and artifacts."""
    out = _stdout()
    with _reported():
        reader = _open_reader(tracking_uri)
        if reader is not None:
            record = reader.resolve(name, version)
            found: VersionLike = record
            aliases = reader.aliases(name)
            artifacts = _listed(lambda: reader.artifacts(record), tracking_uri, name, str(record.version))
        else:
            from registry.store import model_aliases, resolve_version

            client = open_registry(tracking_uri)
            found = resolve_version(client, name, version)
            aliases = model_aliases(client, name)
            artifacts = _listed(lambda: None, tracking_uri, name, str(found.version))
        out.print(version_detail(found, aliases, gate_results(found), artifacts))


def _listed(
    local: Callable[[], list[tuple[str, int | None]] | None],
    tracking_uri: str | None,
    name: str,
    version: str,
) -> list[tuple[str, int | None]]:
    """A version's files: ``local()`` when it can list them, else through MLflow's artifact repository.

    An artifact store that cannot be listed is a warning: the registry entry is still worth showing.
    """
    try:
        listed = local()
        if listed is None:
            from registry.store import resolve_version, version_artifacts

            client = open_registry(tracking_uri)
            listed = version_artifacts(client, resolve_version(client, name, version))
    except RegistryError as exc:
        _stderr().print(f"[yellow]warning:[/] {escape(str(exc))}")
        return []
    return listed


@models_app.command("compare")
def compare_versions(
    name: Name,
    a: Annotated[str, typer.Argument(help="First version (number or alias), shown as A.")],
    b: Annotated[str, typer.Argument(help="Second version (number or alias), shown as B.")],
    tracking_uri: TrackingUri = None,
) -> None:
    """Metrics side by side with the difference B - A, and which of its own gates each version passes."""
    out = _stdout()
    with _reported():
        from registry.store import resolve_version

        client = open_registry(tracking_uri)
        first, second = resolve_version(client, name, a), resolve_version(client, name, b)
        out.print(compare_table(name, first, second))
        out.print(
            gates_table(
                "gates (each version against its own profile limits)",
                {
                    f"A = v{first.version}": gate_results(first),
                    f"B = v{second.version}": gate_results(second),
                },
            )
        )


@models_app.command("promote")
def promote_version(
    name: Name,
    version: Annotated[str, typer.Argument(help="Version number or alias to promote, e.g. candidate.")],
    to: Annotated[str, typer.Option("--to", help="Alias to move onto the version.")] = PRODUCTION_ALIAS,
    margin_accuracy: Annotated[
        float,
        typer.Option(help="Largest accuracy drop vs the current production version, as a fraction."),
    ] = DEFAULT_MARGIN_ACCURACY,
    margin_p99: Annotated[
        float,
        typer.Option(help="Largest relative P99 increase vs the current production version (0.2 = +20 %)."),
    ] = DEFAULT_MARGIN_P99,
    margin_p99_floor_ms: Annotated[
        float,
        typer.Option(help="P99 increase in ms always allowed, however small production's P99 (timer noise)."),
    ] = DEFAULT_MARGIN_P99_FLOOR_MS,
    force: Annotated[
        bool, typer.Option("--force", help="Promote despite failed checks (needs --reason).")
    ] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why; recorded on the version.")] = None,
    actor: Actor = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Re-check gates and margins, then move the alias; the replaced version stays as `previous`."""
    out = _stdout()
    with _reported():
        from registry.ota_history import reader_from_env
        from registry.policy import Margins
        from registry.promotion import promote, review_promotion

        client = open_registry(tracking_uri)
        margins = Margins(accuracy=margin_accuracy, p99=margin_p99, p99_floor_ms=margin_p99_floor_ms)
        rollouts = reader_from_env()
        try:
            result = promote(
                client,
                name,
                version,
                to=to,
                margins=margins,
                force=force,
                reason=reason,
                actor=actor,
                rollouts=rollouts,
            )
        except PromotionRefusedError:
            # With --force the refusal is about the request (no reason, reserved alias), not the checks:
            # a table of failed checks would point the user at the wrong problem.
            if not force:
                review = review_promotion(client, name, version, to=to, margins=margins, rollouts=rollouts)
                if not review.passed:
                    out.print(review_table(review))
                    _print_notes(review.notes)
            raise
        out.print(review_table(result.review))
        _print_notes(result.review.notes)
        if not result.changed:
            out.print(f"{name} version {result.version} already holds {to}; nothing changed.")
            return
        if result.forced and result.review.failures:
            _stderr().print(
                f"[bold yellow]forced:[/] promoted despite {', '.join(result.review.failures)} "
                f"(reason: {escape(result.reason)})"
            )
        replaced = f"; version {result.replaced_version} kept as previous" if result.replaced_version else ""
        out.print(
            f"[green]promoted[/] {name} version {result.version} → {to}{replaced} "
            f"(by {escape(result.actor)} at {result.at})"
        )


def _print_notes(notes: tuple[str, ...]) -> None:
    for note in notes:
        _stderr().print(f"[yellow]note:[/] {escape(note)}")


@models_app.command("rollback")
def rollback_version(
    name: Name,
    reason: Annotated[str | None, typer.Option("--reason", help="Why; recorded on both versions.")] = None,
    actor: Actor = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Move `production` back to `previous` (and `previous` one further back, or remove it)."""
    out = _stdout()
    with _reported():
        from registry.promotion import rollback

        client = open_registry(tracking_uri)
        result = rollback(client, name, reason=reason, actor=actor)
        previous = (
            f"previous is now version {result.previous_version}"
            if result.previous_version
            else "no earlier version, previous removed"
        )
        out.print(
            f"[green]rolled back[/] {name} {result.alias}: version {result.demoted_version} → "
            f"{result.restored_version}; {previous} (by {escape(result.actor)} at {result.at})"
        )
        if result.candidate_withdrawn:
            out.print(f"the candidate alias pointed at version {result.demoted_version}; removed")

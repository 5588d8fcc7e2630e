"""Bootstrap CLI groups of the OTA server, mounted lazily by ``ota/cli.py``: ``server`` and ``keys``.

These are the only commands that touch the server's database and key folder directly (same settings as the
server, ``EDGEFLEET_*``): run them on the server host, before or beside the server. ``server run``,
``server migrate``, ``server bootstrap-token`` (the first admin token) and ``keys init|rotate-*``. Every
other operator command (``release``, ``rollout``, ``devices``, ``tokens``, ``trace``) goes through the HTTP
API (``ota.client.cli``). Errors from the server's typed error tree become one red line and exit code 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console

from ota.core.errors import OtaError
from ota.server.errors import ServerError

console = Console()
log = logging.getLogger(__name__)
server_app = typer.Typer(
    help="Run and migrate the OTA server; make the first admin token (on the server host).",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(
    help="Create and rotate the TUF and director keys.", no_args_is_help=True, add_completion=False
)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (ServerError, OtaError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _context() -> Any:
    from ota.server.context import build_context
    from ota.server.settings import load_settings

    return build_context(load_settings())


# ---- server --------------------------------------------------------------------------------------------


@server_app.command("run")
def run(
    host: Annotated[str | None, typer.Option(help="Bind address (default EDGEFLEET_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default EDGEFLEET_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    migrate: Annotated[bool, typer.Option(help="Migrate the database before starting.")] = True,
    log_format: Annotated[str, typer.Option(help="text or json (structured logs).")] = "text",
) -> None:
    """Start the API on uvicorn (zero configuration: SQLite, local blobs and dev keys under .edgefleet/).

    Devices are told the URL EDGEFLEET_PUBLIC_BASE_URL names; when it is unset, the one --host/--port
    give (or, bound to 0.0.0.0, the address each device reached the server on).
    """
    from ota.server.context import build_context
    from ota.server.logs import configure_logging
    from ota.server.serving import run_server, uvicorn_config
    from ota.server.settings import load_settings

    configure_logging(log_format)
    # The worker processes build their settings from the environment (create_app_from_env): pass the bind
    # address on so the public URL they derive matches it.
    if host is not None:
        os.environ["EDGEFLEET_HOST"] = host
    if port is not None:
        os.environ["EDGEFLEET_PORT"] = str(port)
    with _errors():
        settings = load_settings()
        # Migrate and create keys once in the parent, so workers only open what exists.
        build_context(settings, migrate=migrate).close()
    mismatch = settings.public_url_mismatch()
    if mismatch:
        log.warning("%s", mismatch)
    log.info("devices will be told to use %s", settings.advertised_base_url())
    # Header deadline, keep-alive timeout and header size cap from the settings (ota.server.serving).
    config = uvicorn_config(
        settings,
        "ota.server.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level="info",
        access_log=False,
        # Keep our handlers (uvicorn would install its own text config otherwise).
        log_config=None,
    )
    run_server(config)


def _revision(engine: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        revision: str | None = MigrationContext.configure(connection).get_current_revision()
        return revision


@server_app.command("migrate")
def migrate() -> None:
    """Create or upgrade the database schema to the newest migration; say which (writes the database)."""
    from sqlalchemy.exc import SQLAlchemyError

    from ota.server.db import make_engine, run_migrations
    from ota.server.settings import load_settings

    with _errors():
        settings = load_settings()
        engine = make_engine(settings.resolved_database_url)
        try:
            before = _revision(engine)
            run_migrations(engine)
            after = _revision(engine)
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot read the schema revision: {exc}") from exc
        finally:
            engine.dispose()
    where = engine.url.render_as_string(hide_password=True)
    if before is None:
        console.print(f"created the schema at revision {after} in {where}")
    elif before != after:
        console.print(f"upgraded {where} from revision {before} to {after}")
    else:
        console.print(f"{where} is already at revision {after}; nothing to do")


@server_app.command("bootstrap-token")
def bootstrap_token(
    name: Annotated[str, typer.Option(help="A label for the token.")] = "bootstrap-admin",
) -> None:
    """Make the first admin token by writing the server's database directly (run on the server host).

    Every later token is made over the API with `edgefleet tokens create` and this admin token in
    EDGEFLEET_OPERATOR_TOKEN. The token is printed once (stdout) and stored hashed.
    """
    from ota.server.auth import create_operator_token
    from ota.server.db import transaction
    from ota.server.models import AuditEntry

    with _errors():
        ctx = _context()
        with transaction(ctx.sessions) as session:
            row, token = create_operator_token(session, name=name, scopes=["admin"])
            session.add(
                AuditEntry(
                    actor="cli", action="token.bootstrap", subject=row.id, details={"scopes": ["admin"]}
                )
            )
        ctx.close()
    Console(stderr=True).print(
        f"admin token {row.id} written to {ctx.settings.resolved_database_url}; export it as "
        "EDGEFLEET_OPERATOR_TOKEN (shown once):"
    )
    typer.echo(token)


# ---- keys ----------------------------------------------------------------------------------------------


@keys_app.command("init")
def keys_init(
    root_keys: Annotated[int, typer.Option(min=1, help="Number of root keys (n).")] = 1,
    root_threshold: Annotated[int, typer.Option(min=1, help="Root signatures required (k).")] = 1,
    force: Annotated[bool, typer.Option(help="Replace an existing keyring.")] = False,
) -> None:
    """Create Ed25519 root (k of n), targets, snapshot, timestamp and director keys."""
    from ota.server.keys import init_keys
    from ota.server.settings import load_settings

    with _errors():
        folder = load_settings().resolved_key_dir
        keyring = init_keys(folder, root_keys=root_keys, root_threshold=root_threshold, force=force)
    for role, rk in keyring.roles.items():
        console.print(
            f"{role:10} threshold {rk.threshold} of {len(rk.keys)}: {[k.public.keyid[:12] for k in rk.keys]}"
        )
    console.print(f"keys written to {folder} (0600)")


def _rotate(role: str, count: int, threshold: int | None) -> None:
    from ota.server.db import bump_counter, transaction
    from ota.server.keys import rotate_role_key
    from ota.server.models import AuditEntry

    with _errors():
        ctx = _context()
        new = rotate_role_key(ctx.keyring, role, count=count, threshold=threshold)
        with transaction(ctx.sessions) as session:
            version = ctx.repository.rotate_root(session, new)
            bump_counter(session)
            session.add(
                AuditEntry(actor="cli", action=f"keys.rotate-{role}", subject=f"root v{version}", details={})
            )
        new.save()
        ctx.close()
    console.print(f"rotated {role}: root is now version {version}")


@keys_app.command("rotate-root")
def rotate_root(
    count: Annotated[int, typer.Option(min=1)] = 1,
    threshold: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Replace the root keys; the new root is signed by the old and the new thresholds."""
    _rotate("root", count, threshold)


@keys_app.command("rotate-targets")
def rotate_targets() -> None:
    """Replace the targets key (new root version, targets re-signed with the new key)."""
    _rotate("targets", 1, None)

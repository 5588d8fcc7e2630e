"""CLI groups of the OTA server, mounted lazily by ``ota/cli.py``: server, keys, tokens, release, rollout.

The commands act on the server's own database, blob store and key folder (same settings as the server,
``EDGEFLEET_*``), so they work before the server runs and on an operator's machine with database access.
Errors from the server's typed error tree become one red line and exit code 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ota.core.errors import OtaError
from ota.server.errors import ServerError
from ota.server.rollout_machine import DEFAULT_FAILURE_THRESHOLD, DEFAULT_MIN_REPORTS_FOR_ABORT

console = Console()
server_app = typer.Typer(help="Run and migrate the OTA server.", no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(
    help="Create and rotate the TUF and director keys.", no_args_is_help=True, add_completion=False
)
tokens_app = typer.Typer(
    help="Create, list and revoke operator and provisioning tokens.",
    no_args_is_help=True,
    add_completion=False,
)
devices_app = typer.Typer(
    help="List devices; accept, reject or revoke them.", no_args_is_help=True, add_completion=False
)
release_app = typer.Typer(
    help="Publish model artifacts as signed releases.", no_args_is_help=True, add_completion=False
)
rollout_app = typer.Typer(
    help="Start, watch, pause, resume and abort rollouts.", no_args_is_help=True, add_completion=False
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
    """Start the API on uvicorn (zero configuration: SQLite, local blobs and dev keys under .edgefleet/)."""
    from ota.server.context import build_context
    from ota.server.logs import configure_logging
    from ota.server.serving import run_server, uvicorn_config
    from ota.server.settings import load_settings

    configure_logging(log_format)
    with _errors():
        settings = load_settings()
        # Migrate and create keys once in the parent, so workers only open what exists.
        build_context(settings, migrate=migrate).close()
    # Header deadline, keep-alive timeout and header size cap from the settings (ota.server.serving).
    config = uvicorn_config(
        settings,
        "ota.server.app:create_app_from_env",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level="info",
        access_log=False,
        # Keep our handlers (uvicorn would install its own text config otherwise).
        log_config=None,
    )
    run_server(config)


@server_app.command("migrate")
def migrate() -> None:
    """Upgrade the database schema to the newest migration."""
    from ota.server.db import make_engine, run_migrations
    from ota.server.settings import load_settings

    with _errors():
        engine = make_engine(load_settings().resolved_database_url)
        run_migrations(engine)
        engine.dispose()
    console.print("database is up to date")


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


# ---- tokens --------------------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="A label for the token.")],
    scope: Annotated[list[str], typer.Option(help="read, release, rollout or admin (repeatable).")],
) -> None:
    """Create an operator API token (printed once; stored hashed)."""
    from ota.server.auth import create_operator_token
    from ota.server.db import transaction
    from ota.server.models import AuditEntry

    with _errors():
        ctx = _context()
        with transaction(ctx.sessions) as session:
            row, token = create_operator_token(session, name=name, scopes=scope)
            session.add(
                AuditEntry(actor="cli", action="token.create", subject=row.id, details={"scopes": scope})
            )
        ctx.close()
    typer.echo(token)


@tokens_app.command("provisioning")
def tokens_provisioning(
    name: Annotated[str, typer.Option(help="A label for the token.")],
    auto_accept: Annotated[bool, typer.Option(help="Accept enrolling devices without review.")] = False,
    group: Annotated[str | None, typer.Option(help="Group for devices enrolling with it.")] = None,
) -> None:
    """Create a device provisioning token (printed once; stored hashed)."""
    from ota.server.auth import create_provisioning_token
    from ota.server.db import transaction
    from ota.server.models import AuditEntry

    with _errors():
        ctx = _context()
        with transaction(ctx.sessions) as session:
            row, token = create_provisioning_token(session, name=name, auto_accept=auto_accept, group=group)
            session.add(AuditEntry(actor="cli", action="provisioning.create", subject=row.id, details={}))
        ctx.close()
    typer.echo(token)


@tokens_app.command("list")
def tokens_list() -> None:
    """List operator and provisioning tokens (ids, scopes, revoked or not; never the secrets)."""
    from sqlalchemy import select

    from ota.server.models import OperatorToken, ProvisioningToken

    table = Table("id", "kind", "name", "scopes / admission", "created", "revoked")
    with _errors():
        ctx = _context()
        with ctx.sessions() as session:
            for op in session.scalars(select(OperatorToken).order_by(OperatorToken.created_at)):
                table.add_row(
                    op.id,
                    "operator",
                    op.name,
                    ",".join(op.scopes),
                    f"{op.created_at:%F %T}",
                    _when(op.revoked_at),
                )
            for pt in session.scalars(select(ProvisioningToken).order_by(ProvisioningToken.created_at)):
                admission = ("auto-accept" if pt.auto_accept else "manual") + (
                    f", group {pt.group}" if pt.group else ""
                )
                table.add_row(
                    pt.id, "provisioning", pt.name, admission, f"{pt.created_at:%F %T}", _when(pt.revoked_at)
                )
        ctx.close()
    console.print(table)


def _when(moment: Any) -> str:
    return "" if moment is None else f"{moment:%F %T}"


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id (the part after efo_/efp_, see `tokens list`).")],
    reason: Annotated[str | None, typer.Option(help="Why (kept in the audit log).")] = None,
) -> None:
    """Revoke an operator or provisioning token at once and for good (audited)."""
    from ota.server.admission import revoke_token
    from ota.server.db import transaction

    with _errors():
        ctx = _context()
        with transaction(ctx.sessions) as session:
            row = revoke_token(session, token_id=token_id, actor="cli", reason=reason)
            name = row.name
        ctx.close()
    console.print(f"revoked {token_id} ({name})")


# ---- devices -------------------------------------------------------------------------------------------


@devices_app.command("list")
def devices_list(
    state: Annotated[str | None, typer.Option(help="pending, accepted, rejected or revoked.")] = None,
) -> None:
    """List devices with their admission state, profile, group and installed model."""
    from sqlalchemy import select

    from ota.server.models import Device

    table = Table("id", "state", "profile", "group", "installed sha256", "last seen")
    with _errors():
        ctx = _context()
        with ctx.sessions() as session:
            query = select(Device).order_by(Device.id)
            if state:
                query = query.where(Device.state == state)
            for d in session.scalars(query):
                table.add_row(
                    d.id,
                    d.state,
                    d.hardware_profile,
                    d.group or "",
                    d.current_sha256 or "",
                    _when(d.updated_at),
                )
        ctx.close()
    console.print(table)


def _admit(device_id: str, decision: str, reason: str | None) -> None:
    from ota.core.manifest import AdmissionState
    from ota.server.admission import revoke_device, set_admission
    from ota.server.db import transaction

    with _errors():
        ctx = _context()
        with transaction(ctx.sessions) as session:
            if decision == AdmissionState.REVOKED.value:
                device = revoke_device(session, device_id=device_id, actor="cli", reason=reason)
            else:
                device = set_admission(
                    session,
                    device_id=device_id,
                    decision=AdmissionState(decision),
                    actor="cli",
                    reason=reason,
                )
            state = device.state
        ctx.close()
    console.print(f"{device_id}: {state}")


def _admission_command(decision: str, doc: str) -> Callable[..., None]:
    def command(
        device_id: Annotated[str, typer.Argument(help="Device id.")],
        reason: Annotated[str | None, typer.Option(help="Why (kept in the audit log).")] = None,
    ) -> None:
        _admit(device_id, decision, reason)

    command.__doc__ = doc
    return command


devices_app.command("accept")(_admission_command("accepted", "Accept a pending (or rejected) device."))
devices_app.command("reject")(
    _admission_command("rejected", "Reject a device: refused on every endpoint until accepted again.")
)
devices_app.command("revoke")(
    _admission_command("revoked", "Revoke a device for good: refused everywhere, never accepted again.")
)


# ---- releases ------------------------------------------------------------------------------------------


@release_app.command("publish")
def release_publish(
    artifact: Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True)],
    model: Annotated[str, typer.Option()],
    version: Annotated[str, typer.Option()],
    profile: Annotated[str, typer.Option()],
    source_uri: Annotated[str | None, typer.Option(help="MLflow model URI it came from.")] = None,
    selftest: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, readable=True, help="Self-test vectors (.npz) to ship."),
    ] = None,
    mlflow_run_id: Annotated[str | None, typer.Option(help="MLflow run that trained it.")] = None,
    data_fingerprint: Annotated[str | None, typer.Option(help="Training data fingerprint.")] = None,
    allow_non_onnx: Annotated[
        bool, typer.Option(help="Publish any bytes; by default the artifact must pass ONNX's checker.")
    ] = False,
) -> None:
    """Publish an artifact as a signed release (idempotent) and build deltas from earlier releases."""
    from ota.server.releases import publish_release

    with _errors():
        ctx = _context()
        result = publish_release(
            factory=ctx.sessions,
            blobs=ctx.blobs,
            repository=ctx.repository,
            artifact=artifact,
            model=model,
            version=version,
            profile=profile,
            source_uri=source_uri,
            delta_base_count=ctx.settings.delta_base_count,
            selftest=selftest,
            mlflow_run_id=mlflow_run_id,
            data_fingerprint=data_fingerprint,
            temp_dir=ctx.settings.temp_dir,
            artifact_format="raw" if allow_non_onnx else "onnx",
        )
        ctx.close()
    word = "published" if result.created else "already published"
    console.print(f"{word} {result.release.id} ({result.release.target_name}, {len(result.deltas)} delta(s))")
    if result.release.selftest_target:
        console.print(f"self-test vectors: {result.release.selftest_target}")


@release_app.command("list")
def release_list() -> None:
    """List releases."""
    from sqlalchemy import select

    from ota.server.models import Release

    with _errors():
        ctx = _context()
        table = Table("id", "model", "version", "profile", "sha256", "bytes")
        with ctx.sessions() as session:
            for r in session.scalars(select(Release).order_by(Release.created_at)):
                table.add_row(r.id, r.model, r.version, r.profile, r.sha256[:12], str(r.length))
        ctx.close()
    console.print(table)


# ---- rollouts ------------------------------------------------------------------------------------------


def _parse_phases(text: str, settings: Any) -> list[Any]:
    """Percentages → phases with the server's soak and success settings (``EDGEFLEET_ROLLOUT_*``)."""
    try:
        return [settings.phase(float(p)) for p in text.split(",")]
    except ValueError as exc:
        raise typer.BadParameter(f"--phases takes comma-separated percentages, got {text!r}") from exc


@rollout_app.command("start")
def rollout_start(
    release: Annotated[str, typer.Option(help="Release id.")],
    group: Annotated[str | None, typer.Option()] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Required device tag (repeatable).")] = None,
    phases: Annotated[str | None, typer.Option(help="Comma-separated percentages, e.g. 1,10,50,100.")] = None,
    failure_threshold: Annotated[float, typer.Option(min=0, max=1)] = DEFAULT_FAILURE_THRESHOLD,
    min_reports: Annotated[
        int, typer.Option(min=1, help="Reports needed before auto-abort applies.")
    ] = DEFAULT_MIN_REPORTS_FOR_ABORT,
) -> None:
    """Start a staged rollout of a release.

    Each phase advances only after its soak time and real successes (at least one, and half of its cohort by
    default; EDGEFLEET_ROLLOUT_MIN_SOAK_SECONDS, _MIN_REPORTS and _MIN_SUCCESS_RATIO set them). A failure
    rate over the threshold aborts it, even after it completed (then it is rolled back).
    """
    from ota.server.db import transaction
    from ota.server.rollouts import create_rollout

    with _errors():
        ctx = _context()
        with transaction(ctx.sessions) as session:
            rollout = create_rollout(
                session,
                release_id=release,
                group=group,
                tags=tuple(tag or ()),
                phases=_parse_phases(phases, ctx.settings) if phases else ctx.settings.default_phases(),
                failure_threshold=failure_threshold,
                min_reports_for_abort=min_reports,
                actor="cli",
            )
            rollout_id = rollout.id
        ctx.close()
    console.print(f"started {rollout_id}")


def _control(rollout_id: str, event_name: str) -> None:
    from ota.server.db import transaction
    from ota.server.rollout_machine import RolloutEvent
    from ota.server.rollouts import control_rollout

    with _errors():
        ctx = _context()
        with transaction(ctx.sessions) as session:
            rollout = control_rollout(session, rollout_id, RolloutEvent(event_name), actor="cli")
            state = rollout.state
        ctx.close()
    console.print(f"{rollout_id}: {state}")


def _command(event_name: str) -> Callable[[str], None]:
    def command(rollout_id: Annotated[str, typer.Argument(help="Rollout id.")]) -> None:
        _control(rollout_id, event_name)

    command.__doc__ = f"{event_name.capitalize()} a rollout."
    return command


for _event in ("pause", "resume", "abort", "rollback", "advance"):
    rollout_app.command(_event)(_command(_event))


def _mount_status() -> None:
    """Mount ``rollout status [ID] [--watch]`` from ``ota.server.status_cli``."""
    from ota.server.status_cli import status

    rollout_app.command("status")(status)


_mount_status()

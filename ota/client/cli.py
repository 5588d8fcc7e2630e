"""The operator's CLI groups over the HTTP API: ``edgefleet release|rollout|devices|tokens ...``.

Mounted lazily by ``ota/cli.py``. Every command talks to a running server through :mod:`ota.client`
(``--server`` / ``$EDGEFLEET_SERVER``, token in ``$EDGEFLEET_OPERATOR_TOKEN``); none opens a database, key
folder or MLflow store of its own, so a read-only command never creates state. Direct database access is
left to bootstrap on the server host (``edgefleet keys init``, ``server migrate``, ``server
bootstrap-token``). Lists print ids whole and take ``--json``; errors are one red line on stderr and exit
code 1.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape

from ota.client.api import OperatorClient, RolloutAction
from ota.client.config import OPERATOR_TOKEN_ENV, SERVER_ENV, locate_server, operator_token_from_env
from ota.client.errors import ClientConfigError, ClientError, ServerUnreachableError
from ota.client.models import Publication, RolloutReport, to_json
from ota.client.render import FINAL_STATES, render_report

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

release_app = typer.Typer(
    help="Publish model artifacts as signed releases (over the API).",
    no_args_is_help=True,
    add_completion=False,
)
rollout_app = typer.Typer(
    help="Start, watch, pause, resume and abort rollouts (over the API).",
    no_args_is_help=True,
    add_completion=False,
)
devices_app = typer.Typer(
    help="List and show devices; accept, reject or revoke them (over the API).",
    no_args_is_help=True,
    add_completion=False,
)
tokens_app = typer.Typer(
    help="Create, list and revoke operator and provisioning tokens (over the API; admin scope). "
    "The first admin token: `edgefleet server bootstrap-token` on the server host.",
    no_args_is_help=True,
    add_completion=False,
)

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        help=f"OTA server URL (default ${SERVER_ENV}, else http://127.0.0.1:8000).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class CommandError(Exception):
    """A command's own refusal (bad combination of options)."""


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (ClientError, CommandError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from exc


@contextmanager
def _api(server: str | None) -> Iterator[OperatorClient]:
    """A client on the server ``--server`` / ``$EDGEFLEET_SERVER`` names, with the token from the env.

    Raises:
        ClientConfigError: No token (the message names the server and the variable).
        ServerUnreachableError: Re-raised with where the URL came from.
    """
    location = locate_server(server)
    try:
        token = operator_token_from_env()
    except ClientConfigError as exc:
        raise ClientConfigError(f"{exc} to talk to {location.url} (from {location.source})") from exc
    with OperatorClient(base_url=location.url, token=token) as api:
        try:
            yield api
        except ServerUnreachableError as exc:
            raise ServerUnreachableError(f"{exc} [URL from {location.source}]") from exc


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Plain aligned columns, never truncated (ids stay whole whatever the terminal's width)."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(to_json(data), indent=1))


def _when(moment: str | None) -> str:
    return "" if not moment else moment[:19].replace("T", " ")


# ---- releases ------------------------------------------------------------------------------------------


def _print_publication(result: Publication, *, word: str) -> None:
    release = result.release
    typer.echo(f"{word} {release.id} ({release.target_name}, {len(result.deltas)} delta(s))")
    if release.selftest_target:
        typer.echo(f"self-test vectors: {release.selftest_target}")


@release_app.command("publish")
def release_publish(
    artifact: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, readable=True, help="An ONNX file to publish."),
    ] = None,
    model_uri: Annotated[
        str | None,
        typer.Option(
            help="models:/NAME@ALIAS or models:/NAME/VERSION: fetched from MLflow with its lineage and "
            "self-test vectors, exactly like the release pipeline."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model name (default with --model-uri: its name).")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Version (default with --model-uri: its version).")
    ] = None,
    profile: Annotated[str | None, typer.Option(help="Hardware profile (default: the version's).")] = None,
    source_uri: Annotated[str | None, typer.Option(help="Where the artifact came from.")] = None,
    selftest: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, readable=True, help="Self-test vectors (.npz) to ship."),
    ] = None,
    mlflow_run_id: Annotated[str | None, typer.Option(help="MLflow run that trained it.")] = None,
    data_fingerprint: Annotated[str | None, typer.Option(help="Training data fingerprint.")] = None,
    allow_non_onnx: Annotated[
        bool, typer.Option(help="Publish any bytes; by default the server requires a valid ONNX model.")
    ] = False,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow URI for --model-uri (default $MLFLOW_TRACKING_URI).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="Release pipeline YAML whose data and vectors settings to use."
        ),
    ] = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a model as a signed release (idempotent); the server builds deltas from earlier releases."""
    with _errors():
        if (artifact is None) == (model_uri is None):
            raise CommandError("give exactly one of --artifact PATH and --model-uri models:/NAME@ALIAS")
        fmt: Literal["onnx", "raw"] = "raw" if allow_non_onnx else "onnx"
        if artifact is not None:
            missing = [
                f"--{n}" for n, v in (("model", model), ("version", version), ("profile", profile)) if not v
            ]
            if missing:
                raise CommandError(f"--artifact needs {', '.join(missing)}")
            with _api(server) as api:
                result = api.publish_release(
                    artifact,
                    model=str(model),
                    version=str(version),
                    profile=str(profile),
                    source_uri=source_uri,
                    selftest=selftest,
                    mlflow_run_id=mlflow_run_id,
                    data_fingerprint=data_fingerprint,
                    artifact_format=fmt,
                )
        else:
            result = _publish_model_uri(
                str(model_uri),
                server=server,
                tracking_uri=tracking_uri,
                config=config,
                overrides={"model": model, "version": version, "profile": profile},
                artifact_format=fmt,
            )
    if as_json:
        _echo_json(result)
        return
    _print_publication(result, word="published" if result.created else "already published")


def _publish_model_uri(
    model_uri: str,
    *,
    server: str | None,
    tracking_uri: str | None,
    config: Path | None,
    overrides: dict[str, str | None],
    artifact_format: Literal["onnx", "raw"],
) -> Publication:
    """Fetch a registered version and its self-test vectors the release pipeline's way, then publish it.

    Raises:
        CommandError: The registry or the data set refused (RegistryError, DataError), or a bad --config.
        ClientError: The server refused or is unreachable.
    """
    # Imported here: only this option needs MLflow and the training data; `release list` stays light.
    from ml.errors import DataError
    from registry.errors import RegistryError

    try:
        return _fetch_and_publish(
            model_uri,
            server=server,
            tracking_uri=tracking_uri,
            config=config,
            overrides=overrides,
            artifact_format=artifact_format,
        )
    except (RegistryError, DataError, ValueError) as exc:
        raise CommandError(str(exc)) from exc


def _fetch_and_publish(
    model_uri: str,
    *,
    server: str | None,
    tracking_uri: str | None,
    config: Path | None,
    overrides: dict[str, str | None],
    artifact_format: Literal["onnx", "raw"],
) -> Publication:
    import yaml

    from registry.release_inputs import fetch_release_inputs
    from registry.trace import release_source_uri
    from registry.uris import open_registry, resolve_tracking_uri
    from steps.release_config import ReleasePipelineConfig

    settings = ReleasePipelineConfig()
    if config is not None:
        document = yaml.safe_load(config.read_text()) or {}
        settings = ReleasePipelineConfig.model_validate(
            (document.get("parameters") or {}).get("config") or {}
        )
    uri = resolve_tracking_uri(tracking_uri)
    open_registry(uri)  # a missing SQLite store is an error, never a new empty one
    with _api(server) as api, tempfile.TemporaryDirectory(prefix="edgefleet-publish-") as scratch:
        inputs = fetch_release_inputs(
            model_uri, Path(scratch), tracking_uri=uri, data=settings.data, vectors=settings.vectors.spec()
        )
        facts = inputs.facts
        err.print(f"{model_uri} is {facts.model_uri} (profile {facts.profile}, sha256 {facts.sha256[:12]}…)")
        return api.publish_release(
            inputs.onnx_path,
            model=overrides["model"] or facts.name,
            version=overrides["version"] or facts.version,
            profile=overrides["profile"] or facts.profile,
            source_uri=release_source_uri(facts),
            selftest=inputs.vectors_path,
            mlflow_run_id=facts.run_id,
            data_fingerprint=facts.data_fingerprint,
            artifact_format=artifact_format,
        )


@release_app.command("list")
def release_list(server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """List releases, newest first (ids whole; sha256 shortened in the table, whole in --json)."""
    with _errors(), _api(server) as api:
        releases = api.releases()
    if as_json:
        _echo_json(releases)
        return
    _print_table(
        ("id", "model", "version", "profile", "sha256", "bytes", "created"),
        [
            (r.id, r.model, r.version, r.profile, r.sha256[:12], r.length, _when(r.created_at))
            for r in releases
        ],
    )


@release_app.command("show")
def release_show(
    release_id: Annotated[str, typer.Argument(help="Release id.")],
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one release: provenance, self-test vectors and deltas."""
    with _errors(), _api(server) as api:
        result = api.release(release_id)
    if as_json:
        _echo_json(result)
        return
    r = result.release
    for label, value in (
        ("id", r.id),
        ("model", f"{r.model} v{r.version}"),
        ("profile", r.profile),
        ("target", r.target_name),
        ("sha256", r.sha256),
        ("bytes", f"{r.length:,}"),
        ("source", r.source_uri or ""),
        ("mlflow run", r.mlflow_run_id or ""),
        ("data", r.data_fingerprint or ""),
        ("self-test", r.selftest_target or "none"),
        ("created", _when(r.created_at)),
    ):
        typer.echo(f"{label:11} {value}")
    _print_table(
        ("delta from release", "base sha256", "bytes"),
        [(d.base_release_id, d.base_sha256[:12], d.length) for d in result.deltas],
    )


# ---- rollouts ------------------------------------------------------------------------------------------


@rollout_app.command("start")
def rollout_start(
    release: Annotated[str, typer.Option(help="Release id (see `edgefleet release list`).")],
    group: Annotated[str | None, typer.Option(help="Only devices of this group.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Required device tag (repeatable).")] = None,
    phases: Annotated[
        str | None,
        typer.Option(help="Comma-separated percentages, e.g. 1,10,50,100 (default: the server's)."),
    ] = None,
    failure_threshold: Annotated[
        float | None,
        typer.Option(min=0, max=1, help="Failure rate that aborts it (default: the server's, 0.1)."),
    ] = None,
    min_reports: Annotated[
        int | None,
        typer.Option(min=1, help="Final reports before auto-abort applies (default: the server's, 5)."),
    ] = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a staged rollout of a release.

    Each phase advances only after its soak time and real successes (the server's EDGEFLEET_ROLLOUT_*
    settings). A failure rate over the threshold aborts it, even after it completed (then it is rolled back).
    """
    body: dict[str, Any] = {
        "release_id": release,
        "group": group,
        "tags": list(tag or ()),
    }
    # Left out, the server's defaults apply (one place: ota.server.rollout_machine), as for the phases.
    if failure_threshold is not None:
        body["failure_threshold"] = failure_threshold
    if min_reports is not None:
        body["min_reports_for_abort"] = min_reports
    if phases:
        try:
            body["phases"] = [{"percent": float(p)} for p in phases.split(",")]
        except ValueError as exc:
            raise typer.BadParameter(f"--phases takes comma-separated percentages, got {phases!r}") from exc
    with _errors(), _api(server) as api:
        rollout = api.start_rollout(body)
    if as_json:
        _echo_json(rollout)
        return
    typer.echo(f"started {rollout.id}")


@rollout_app.command("list")
def rollout_list(server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """List rollouts, newest first."""
    with _errors(), _api(server) as api:
        rollouts = api.rollouts()
    if as_json:
        _echo_json(rollouts)
        return
    _print_table(
        ("id", "release", "state", "phase", "succeeded", "failed", "in progress"),
        [
            (
                r.id,
                r.release_id,
                r.state,
                f"{r.phase_index + 1}/{len(r.phases)}",
                r.succeeded,
                r.failed,
                r.in_progress,
            )
            for r in rollouts
        ],
    )


def _reports(api: OperatorClient, rollout_id: str | None) -> list[RolloutReport]:
    ids = [rollout_id] if rollout_id else [r.id for r in reversed(api.rollouts())]
    return [api.rollout_report(i) for i in ids]


@rollout_app.command("status")
def rollout_status(
    rollout_id: Annotated[str | None, typer.Argument(help="Rollout id (default: every rollout).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh live until the rollout ends.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Refresh period of --watch, seconds.")] = 1.0,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show phases, counts per status, failure rate vs threshold, bytes saved by deltas and the timeline."""
    try:
        with _errors(), _api(server) as api:
            reports = _reports(api, rollout_id)
            if as_json:
                _echo_json(reports)
                return
            if not watch:
                for report in reports:
                    out.print(render_report(report))
                return
            with Live(Group(*(render_report(r) for r in reports)), console=out, refresh_per_second=4) as live:
                while not all(r.state in FINAL_STATES for r in reports):
                    time.sleep(interval)
                    reports = _reports(api, rollout_id)
                    live.update(Group(*(render_report(r) for r in reports)))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _control_command(action: RolloutAction) -> Callable[..., None]:
    def command(
        rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
        server: ServerOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        with _errors(), _api(server) as api:
            rollout = api.act(rollout_id, action)
        if as_json:
            _echo_json(rollout)
            return
        typer.echo(f"{rollout.id}: {rollout.state}")

    command.__doc__ = f"{action.capitalize()} a rollout."
    return command


for _action in ("pause", "resume", "abort", "rollback", "advance"):
    rollout_app.command(_action)(_control_command(_action))


# ---- devices -------------------------------------------------------------------------------------------


@devices_app.command("list")
def devices_list(
    state: Annotated[str | None, typer.Option(help="pending, accepted, rejected or revoked.")] = None,
    profile: Annotated[str | None, typer.Option(help="Hardware profile.")] = None,
    group: Annotated[str | None, typer.Option(help="Device group.")] = None,
    version: Annotated[str | None, typer.Option(help="Runs a release of this version.")] = None,
    sha256: Annotated[str | None, typer.Option(help="Runs the model with this sha256.")] = None,
    seen_before: Annotated[str | None, typer.Option(help="Last report before (ISO-8601).")] = None,
    seen_after: Annotated[str | None, typer.Option(help="Last report after (ISO-8601).")] = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List devices with their admission state, profile, group, installed model and last report."""
    with _errors(), _api(server) as api:
        devices = api.devices(
            state=state,
            profile=profile,
            group=group,
            version=version,
            sha256=sha256,
            seen_before=seen_before,
            seen_after=seen_after,
        )
    if as_json:
        _echo_json(devices)
        return
    _print_table(
        ("id", "state", "profile", "group", "installed sha256", "last seen"),
        [
            (
                d.id,
                d.state,
                d.hardware_profile,
                d.group or "",
                (d.current_sha256 or "")[:12],
                _when(d.last_seen),
            )
            for d in devices
        ],
    )
    if not devices and state == "pending":
        err.print(
            "no pending device (devices enrolled with an auto-accepting provisioning token skip review)"
        )


@devices_app.command("show")
def devices_show(
    device_id: Annotated[str, typer.Argument(help="Device id.")],
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a device: state, profile, group, tags, installed release and its newest reports."""
    with _errors(), _api(server) as api:
        detail = api.device(device_id)
    if as_json:
        _echo_json(detail)
        return
    d, release = detail.device, detail.installed_release
    installed = "nothing reported yet"
    if release is not None:
        installed = f"{release.id} ({release.model} v{release.version})"
    elif d.current_sha256:
        installed = f"sha256 {d.current_sha256} (no release on this server holds it)"
    for label, value in (
        ("id", d.id),
        ("state", d.state),
        ("profile", d.hardware_profile),
        ("group", d.group or ""),
        ("tags", ", ".join(d.tags)),
        ("installed", installed),
        ("last seen", _when(d.last_seen)),
        ("enrolled", _when(d.created_at)),
        ("provisioning", detail.provisioning_token_id or ""),
    ):
        typer.echo(f"{label:12} {value}")
    _print_table(
        ("counter", "status", "received", "release", "rollout", "message"),
        [
            (
                r.counter,
                r.status,
                _when(r.received_at),
                r.release_id or "",
                r.rollout_id or "",
                r.message or "",
            )
            for r in detail.reports
        ],
    )
    if d.state == "pending":
        err.print(f"pending review: `edgefleet devices accept {d.id}` or `edgefleet devices reject {d.id}`")


def _admission_command(decision: Literal["accepted", "rejected", "revoked"], doc: str) -> Callable[..., None]:
    def command(
        device_id: Annotated[str, typer.Argument(help="Device id.")],
        reason: Annotated[str | None, typer.Option(help="Why (kept in the audit log).")] = None,
        server: ServerOpt = None,
    ) -> None:
        with _errors(), _api(server) as api:
            if decision == "revoked":
                device = api.revoke_device(device_id, reason=reason)
            else:
                device = api.admit(device_id, decision, reason=reason)
        typer.echo(f"{device.id}: {device.state}")

    command.__doc__ = doc
    return command


devices_app.command("accept")(_admission_command("accepted", "Accept a pending (or rejected) device."))
devices_app.command("reject")(
    _admission_command("rejected", "Reject a device: refused on every endpoint until accepted again.")
)
devices_app.command("revoke")(
    _admission_command("revoked", "Revoke a device for good: refused everywhere, never accepted again.")
)


# ---- tokens --------------------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="A label for the token.")],
    scope: Annotated[list[str], typer.Option(help="read, release, rollout or admin (repeatable).")],
    server: ServerOpt = None,
) -> None:
    """Create an operator API token (printed once; stored hashed). Needs an admin token."""
    with _errors(), _api(server) as api:
        created = api.create_token(name=name, scopes=scope)
    err.print(f"created operator token {created.id} ({created.name}); shown once:")
    typer.echo(created.token)


@tokens_app.command("provisioning")
def tokens_provisioning(
    name: Annotated[str, typer.Option(help="A label for the token.")],
    auto_accept: Annotated[
        bool, typer.Option(help="Accept enrolling devices without review (default: manual admission).")
    ] = False,
    group: Annotated[str | None, typer.Option(help="Group for devices enrolling with it.")] = None,
    server: ServerOpt = None,
) -> None:
    """Create a device provisioning token (printed once; stored hashed). Needs an admin token."""
    with _errors(), _api(server) as api:
        created = api.create_provisioning_token(name=name, auto_accept=auto_accept, group=group)
    admission = "auto-accept" if auto_accept else "manual admission: `edgefleet devices list --state pending`"
    err.print(f"created provisioning token {created.id} ({created.name}, {admission}); shown once:")
    typer.echo(created.token)


@tokens_app.command("list")
def tokens_list(server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """List operator and provisioning tokens (ids, scopes, revoked or not; never the secrets)."""
    with _errors(), _api(server) as api:
        operators, provisioning = api.tokens(), api.provisioning_tokens()
    if as_json:
        typer.echo(
            json.dumps({"operator": to_json(operators), "provisioning": to_json(provisioning)}, indent=1)
        )
        return
    rows: list[tuple[object, ...]] = [
        (t.id, "operator", t.name, ",".join(t.scopes), _when(t.created_at), _when(t.revoked_at))
        for t in operators
    ]
    for p in provisioning:
        admission = ("auto-accept" if p.auto_accept else "manual") + (f", group {p.group}" if p.group else "")
        rows.append((p.id, "provisioning", p.name, admission, _when(p.created_at), _when(p.revoked_at)))
    _print_table(("id", "kind", "name", "scopes / admission", "created", "revoked"), rows)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id (see `edgefleet tokens list`).")],
    reason: Annotated[str | None, typer.Option(help="Why (kept in the audit log).")] = None,
    server: ServerOpt = None,
) -> None:
    """Revoke an operator or provisioning token at once and for good (audited)."""
    with _errors(), _api(server) as api:
        info = api.revoke_token(token_id, reason=reason)
    typer.echo(f"revoked {info.id} ({info.name})")


__all__ = ["OPERATOR_TOKEN_ENV", "devices_app", "release_app", "rollout_app", "tokens_app"]

"""Links between the OTA server and the model registry: the operator HTTP client the release pipeline
publishes through, the provenance a release carries, and ``edgefleet trace DEVICE_ID``'s chain.

The chain is device → installed release (OTA server API) → model version (MLflow) → training run →
data fingerprint, git commit, config hash, teacher model and, for a fine-tune, the parent version it
started from. Every link is read from the real stores on
every call; nothing is cached. ``registry.trace_cli`` renders it.

A release records where it came from in its ``source_uri`` (signed into the TUF target's custom fields):
``models:/NAME/VERSION?run_id=RUN&data_fingerprint=FP``. Since the server's migration 0002 a release
also has proper ``mlflow_run_id`` and ``data_fingerprint`` fields, which the trace prefers; the query
string stays for releases published before (and :func:`parse_source_uri` reads it back).

Errors::

    RegistryError (registry.errors)
    ├── OtaApiError   the OTA server refused a request or could not be reached
    └── TraceError    a link of the chain is missing or inconsistent
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx

from registry.errors import ModelNotFoundError, RegistryError
from registry.fetch import RunFacts, TeacherFacts, VersionFacts, run_facts, teacher_facts, version_facts

SERVER_URL_ENV = "EDGEFLEET_SERVER_URL"
OPERATOR_TOKEN_ENV = "EDGEFLEET_OPERATOR_TOKEN"  # noqa: S105  (the name of a variable, not a secret)
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


class OtaApiError(RegistryError):
    """The OTA server refused a request, answered garbage, or could not be reached."""


class TraceError(RegistryError):
    """A link of the device → data chain is missing or inconsistent."""


def server_url_from_env(explicit: str | None = None) -> str:
    """``explicit``, else ``$EDGEFLEET_SERVER_URL``, else the local default server."""
    return (explicit or os.environ.get(SERVER_URL_ENV) or DEFAULT_SERVER_URL).rstrip("/")


def operator_token_from_env(explicit: str | None = None) -> str:
    """``explicit``, else ``$EDGEFLEET_OPERATOR_TOKEN``.

    Raises:
        OtaApiError: Neither is set (tokens are never read from committed config).
    """
    token = explicit or os.environ.get(OPERATOR_TOKEN_ENV)
    if not token:
        raise OtaApiError(
            f"no operator token: set {OPERATOR_TOKEN_ENV} (create one with `edgefleet tokens create`)"
        )
    return token


class OtaApi:
    """A small operator client of the OTA server's HTTP API (bearer token; errors mapped to OtaApiError)."""

    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Open a client on ``base_url`` authenticated with the operator ``token``."""
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport,
        )

    def __enter__(self) -> Self:
        """Use as a context manager; the connection pool closes on exit."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the connection pool."""
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            answer = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise OtaApiError(f"{method} {self.base_url}{path}: {exc}") from exc
        if answer.status_code >= 400:
            raise OtaApiError(f"{method} {path} → {answer.status_code}: {answer.text[:500]}")
        try:
            return answer.json()
        except ValueError as exc:
            raise OtaApiError(f"{method} {path} answered non-JSON: {answer.text[:200]!r}") from exc

    def upload_selftest(self, vectors: bytes) -> dict[str, Any]:
        """``PUT /v1/releases/selftest``: stage self-test vectors (idempotent); returns sha256 and length.

        Raises:
            OtaApiError: The server refused (empty, not an .npz, missing scope) or is unreachable.
        """
        result: dict[str, Any] = self._call(
            "PUT",
            "/v1/releases/selftest",
            content=vectors,
            headers={"Content-Type": "application/octet-stream"},
        )
        return result

    def publish_release(
        self,
        artifact: bytes,
        *,
        model: str,
        version: str,
        profile: str,
        source_uri: str,
        selftest: bytes | None = None,
        mlflow_run_id: str | None = None,
        data_fingerprint: str | None = None,
    ) -> dict[str, Any]:
        """``PUT /v1/releases``: publish artifact bytes (idempotent); returns release, created, deltas.

        With ``selftest`` the vectors are staged first and attached by their sha256, so the server signs
        the model target and its self-test target in one targets version.

        Raises:
            OtaApiError: The server refused (bad names, conflict, missing scope) or is unreachable.
        """
        params: dict[str, str] = {
            "model": model,
            "version": version,
            "profile": profile,
            "source_uri": source_uri,
        }
        if selftest is not None:
            params["selftest_sha256"] = str(self.upload_selftest(selftest)["sha256"])
        if mlflow_run_id:
            params["mlflow_run_id"] = mlflow_run_id
        if data_fingerprint:
            params["data_fingerprint"] = data_fingerprint
        result: dict[str, Any] = self._call(
            "PUT",
            "/v1/releases",
            params=params,
            content=artifact,
            headers={"Content-Type": "application/octet-stream"},
        )
        return result

    def start_rollout(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/rollouts``.

        Raises:
            OtaApiError: The server refused (unknown release, selector busy, bad phases).
        """
        result: dict[str, Any] = self._call("POST", "/v1/rollouts", json=dict(body))
        return result

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        """``GET /v1/rollouts/{id}``.

        Raises:
            OtaApiError: Unknown rollout or unreachable server.
        """
        result: dict[str, Any] = self._call("GET", f"/v1/rollouts/{quote(rollout_id, safe='')}")
        return result

    def rollouts(self) -> list[dict[str, Any]]:
        """``GET /v1/rollouts`` (newest first).

        Raises:
            OtaApiError: The server refused or is unreachable.
        """
        result: list[dict[str, Any]] = self._call("GET", "/v1/rollouts")
        return result

    def act(self, rollout_id: str, action: str) -> dict[str, Any]:
        """``POST /v1/rollouts/{id}/{action}`` (pause, resume, abort, rollback, advance).

        Raises:
            OtaApiError: The action is not allowed now, or the rollout is unknown.
        """
        result: dict[str, Any] = self._call("POST", f"/v1/rollouts/{quote(rollout_id, safe='')}/{action}")
        return result

    def releases(self) -> list[dict[str, Any]]:
        """``GET /v1/releases`` (newest first).

        Raises:
            OtaApiError: The server refused or is unreachable.
        """
        result: list[dict[str, Any]] = self._call("GET", "/v1/releases")
        return result

    def devices(self) -> list[dict[str, Any]]:
        """``GET /v1/devices`` (every device, up to the API's limit of 10 000).

        Raises:
            OtaApiError: The server refused or is unreachable.
        """
        result: list[dict[str, Any]] = self._call("GET", "/v1/devices", params={"limit": 10000})
        return result


def release_source_uri(facts: VersionFacts) -> str:
    """The provenance a release records: ``models:/NAME/VERSION?run_id=…&data_fingerprint=…``."""
    query = urlencode({"run_id": facts.run_id, "data_fingerprint": facts.data_fingerprint})
    return f"{facts.model_uri}?{query}"


@dataclass(frozen=True)
class SourceRef:
    """A parsed release ``source_uri``."""

    name: str
    version: str
    run_id: str | None
    data_fingerprint: str | None

    @property
    def model_uri(self) -> str:
        """``models:/NAME/VERSION``."""
        return f"models:/{self.name}/{self.version}"


def parse_source_uri(uri: str) -> SourceRef:
    """Read ``models:/NAME/VERSION[?run_id=…&data_fingerprint=…]``.

    Raises:
        TraceError: Not a ``models:/NAME/VERSION`` URI with a numeric version.
    """
    parts = urlsplit(uri)
    if parts.scheme != "models":
        raise TraceError(f"release source {uri!r} is not an MLflow models:/ URI")
    name, _, version = parts.path.strip("/").rpartition("/")
    if not name or not version.isdigit():
        raise TraceError(f"release source {uri!r} does not name a model version (models:/NAME/VERSION)")
    query = parse_qs(parts.query)
    return SourceRef(
        name=name,
        version=version,
        run_id=next(iter(query.get("run_id", [])), None),
        data_fingerprint=next(iter(query.get("data_fingerprint", [])), None),
    )


@dataclass(frozen=True)
class TraceChain:
    """Every link from a device to the data and code behind the model it runs."""

    device: Mapping[str, Any]
    release: Mapping[str, Any]
    source: SourceRef
    version: VersionFacts
    run: RunFacts | None
    teacher: TeacherFacts | None

    def as_dict(self) -> dict[str, Any]:
        """The chain as JSON-able data (``edgefleet trace --json``)."""
        return {
            "device": {
                k: self.device.get(k) for k in ("id", "hardware_profile", "group", "state", "current_sha256")
            },
            "release": {
                k: self.release.get(k) for k in ("id", "model", "version", "profile", "sha256", "source_uri")
            },
            "model_version": {
                "name": self.version.name,
                "version": self.version.version,
                "model_uri": self.version.model_uri,
                "aliases": list(self.version.aliases),
                "sha256": self.version.sha256,
            },
            "training_run": None
            if self.run is None
            else {"run_id": self.run.run_id, "name": self.run.run_name, "status": self.run.status},
            "data_fingerprint": self.version.data_fingerprint,
            "git_commit": self.version.lineage.get("git_commit", "unknown"),
            "git_dirty": self.version.lineage.get("git_dirty", "unknown"),
            "config_hash": self.version.lineage.get("config_hash", "unknown"),
            "pipeline_run_id": self.version.lineage.get("pipeline_run_id", "unknown"),
            "init_from": self.version.lineage.get("init_from"),
            "teacher": None
            if self.teacher is None
            else {
                "model_id": self.teacher.model_id,
                "name": self.teacher.name,
                "metrics": dict(self.teacher.metrics),
            },
        }


def trace_device(device_id: str, *, api: OtaApi, tracking_uri: str | None = None) -> TraceChain:
    """Follow one device to the data, code and teacher behind the model it runs.

    Args:
        device_id: The device's id on the OTA server.
        api: Operator client of the OTA server (read scope).
        tracking_uri: MLflow tracking/registry URI; the process's configured one when None.

    Returns:
        The chain.

    Raises:
        OtaApiError: The OTA server refused or is unreachable.
        TraceError: Unknown device, no installed model, no release with its hash, a release without an
            MLflow source, or a registry version whose hash or provenance disagrees with the release.
        ModelNotFoundError: The release names a model version that no longer exists in MLflow.
    """
    device = next((d for d in api.devices() if d.get("id") == device_id), None)
    if device is None:
        raise TraceError(f"the OTA server knows no device {device_id!r}")
    sha = device.get("current_sha256")
    if not sha:
        raise TraceError(f"device {device_id} has not reported an installed model yet")
    # Newest first: when the same bytes were released twice, the newest release is the one in force.
    release = next((r for r in api.releases() if r.get("sha256") == sha), None)
    if release is None:
        raise TraceError(f"device {device_id} runs {sha[:12]}…, which no release on this server holds")
    source_uri = release.get("source_uri")
    if not source_uri:
        raise TraceError(f"release {release['id']} records no MLflow source")
    source = parse_source_uri(str(source_uri))
    # The release's own provenance fields (server migration 0002) win over the legacy query string.
    source = replace(
        source,
        run_id=release.get("mlflow_run_id") or source.run_id,
        data_fingerprint=release.get("data_fingerprint") or source.data_fingerprint,
    )
    version = version_facts(source.name, source.version, tracking_uri=tracking_uri)
    if version.sha256 and version.sha256 != sha:
        raise TraceError(
            f"{source.model_uri} has sha256 {version.sha256[:12]}…, but the device runs {sha[:12]}…"
        )
    if source.data_fingerprint and source.data_fingerprint != version.data_fingerprint:
        raise TraceError(
            f"release {release['id']} says data {source.data_fingerprint[:12]}…, "
            f"the registry says {version.data_fingerprint[:12]}…"
        )
    run = None
    if version.run_id:
        try:
            run = run_facts(version.run_id, tracking_uri=tracking_uri)
        except ModelNotFoundError:
            run = None  # deleted runs leave the version's own lineage tags, which still answer the trace
    teacher_id = version.lineage.get("teacher_model_id")
    teacher = None
    if teacher_id:
        try:
            teacher = teacher_facts(teacher_id, tracking_uri=tracking_uri)
        except ModelNotFoundError:
            teacher = None
    return TraceChain(
        device=device, release=release, source=source, version=version, run=run, teacher=teacher
    )


def render_trace(chain: TraceChain) -> list[str]:
    """The chain as indented plain-text lines, one link per line (what ``edgefleet trace`` prints)."""
    data = chain.as_dict()
    device, release, mv = data["device"], data["release"], data["model_version"]
    run = data["training_run"]
    teacher = data["teacher"]
    aliases = f" [{', '.join(mv['aliases'])}]" if mv["aliases"] else ""
    teacher_acc = ""
    if teacher and "teacher_test_accuracy" in teacher["metrics"]:
        teacher_acc = f", test accuracy {teacher['metrics']['teacher_test_accuracy']:.4f}"
    parent = data["init_from"] or "— (trained from random weights)"
    return [
        f"device        {device['id']} (profile {device['hardware_profile']}, {device['state']})",
        f"└ release     {release['id']}: {release['model']} v{release['version']} "
        f"sha256 {str(release['sha256'])[:16]}…",
        f"  └ model     {mv['model_uri']}{aliases}",
        "    └ run     "
        + (
            f"{run['run_id']} ({run['name']}, {run['status']})"
            if run
            else f"{chain.version.run_id} (not found)"
        ),
        f"      ├ data fingerprint  {data['data_fingerprint']}",
        f"      ├ git commit        {data['git_commit']} (dirty: {data['git_dirty']})",
        f"      ├ config hash       {data['config_hash']}",
        f"      ├ pipeline run      {data['pipeline_run_id']}",
        f"      ├ fine-tuned from   {parent}",
        "      └ teacher model     "
        + (f"{teacher['model_id']} ({teacher['name']}{teacher_acc})" if teacher else "unknown"),
    ]

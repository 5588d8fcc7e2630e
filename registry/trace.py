"""Links between the OTA server and the model registry: the provenance a release carries and
``edgefleet trace DEVICE_ID``'s chain. The operator HTTP client lives in :mod:`ota.client`.

The chain is device → installed release (OTA server API, through ``ota.client``) → model version
(MLflow) → training run → data fingerprint, git commit, config hash, teacher model and, for a fine-tune,
the parent version it started from. Every link is read from the real stores on every call; nothing is
cached. ``registry.trace_cli`` renders it.

A release records where it came from in its ``source_uri`` (signed into the TUF target's custom fields):
``models:/NAME/VERSION?run_id=RUN&data_fingerprint=FP``. Since the server's migration 0002 a release
also has proper ``mlflow_run_id`` and ``data_fingerprint`` fields, which the trace prefers; the query
string stays for releases published before (and :func:`parse_source_uri` reads it back).

Errors::

    RegistryError (registry.errors)
    └── TraceError    a link of the chain is missing or inconsistent

The OTA server's refusals are :class:`ota.client.errors.ClientError` (that package's own tree).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from ota.client.api import OperatorClient
from ota.client.errors import NotFoundError
from ota.client.models import Device, Release
from registry.errors import ModelNotFoundError, RegistryError
from registry.fetch import RunFacts, TeacherFacts, VersionFacts, run_facts, teacher_facts, version_facts


class TraceError(RegistryError):
    """A link of the device → data chain is missing or inconsistent."""


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

    device: Device
    release: Release
    source: SourceRef
    version: VersionFacts
    run: RunFacts | None
    teacher: TeacherFacts | None

    def as_dict(self) -> dict[str, Any]:
        """The chain as JSON-able data (``edgefleet trace --json``)."""
        device, release = asdict(self.device), asdict(self.release)
        return {
            "device": {k: device[k] for k in ("id", "hardware_profile", "group", "state", "current_sha256")},
            "release": {k: release[k] for k in ("id", "model", "version", "profile", "sha256", "source_uri")},
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


def trace_device(device_id: str, *, api: OperatorClient, tracking_uri: str | None = None) -> TraceChain:
    """Follow one device to the data, code and teacher behind the model it runs.

    Args:
        device_id: The device's id on the OTA server.
        api: Operator client of the OTA server (read scope).
        tracking_uri: MLflow tracking/registry URI; the process's configured one when None.

    Returns:
        The chain.

    Raises:
        ClientError: The OTA server refused or is unreachable (ota.client.errors).
        TraceError: Unknown device, no installed model, no release with its hash, a release without an
            MLflow source, or a registry version whose hash or provenance disagrees with the release.
        ModelNotFoundError: The release names a model version that no longer exists in MLflow.
    """
    try:
        device = api.device(device_id).device
    except NotFoundError as exc:
        raise TraceError(f"the OTA server at {api.base_url} knows no device {device_id!r}") from exc
    sha = device.current_sha256
    if not sha:
        raise TraceError(f"device {device_id} has not reported an installed model yet")
    # Newest first: when the same bytes were released twice, the newest release is the one in force.
    release = next((r for r in api.releases() if r.sha256 == sha), None)
    if release is None:
        raise TraceError(f"device {device_id} runs {sha[:12]}…, which no release on this server holds")
    if not release.source_uri:
        raise TraceError(f"release {release.id} records no MLflow source")
    source = parse_source_uri(release.source_uri)
    # The release's own provenance fields (server migration 0002) win over the legacy query string.
    source = replace(
        source,
        run_id=release.mlflow_run_id or source.run_id,
        data_fingerprint=release.data_fingerprint or source.data_fingerprint,
    )
    version = version_facts(source.name, source.version, tracking_uri=tracking_uri)
    if version.sha256 and version.sha256 != sha:
        raise TraceError(
            f"{source.model_uri} has sha256 {version.sha256[:12]}…, but the device runs {sha[:12]}…"
        )
    if source.data_fingerprint and source.data_fingerprint != version.data_fingerprint:
        raise TraceError(
            f"release {release.id} says data {source.data_fingerprint[:12]}…, "
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

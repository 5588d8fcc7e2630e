"""Publishing releases: blob upload, TUF target registration and deltas from earlier releases.

Publishing is idempotent: the same artifact under the same model, version and profile returns the
existing release; a different artifact under a taken model/version/profile is a conflict. Deltas come
from ``ota.core.delta`` (the delta engine) against the last N releases of the same model and profile, and
are TUF targets too, with custom fields naming their base and result hashes. Every target's custom fields are
the typed documents of :mod:`ota.core.targets`, which the agent reads back.

A release may carry self-test vectors (the ``.npz`` of ``ota.edge.health``): they are their own TUF
target ``{model}-{version}-{profile}.selftest.npz`` (custom ``kind: selftest``), and the model target's
custom field ``selftest`` names it, both in the same targets metadata version. Over HTTP the vectors are
staged first (``PUT /v1/releases/selftest``, content-addressed, see :func:`stage_selftest`) and the model
publish references them by sha256, so one publish call registers both.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from tuf.api.metadata import TargetFile

from ota.core.files import sha256_file
from ota.core.selftest import SelfTestFormatError, load_vectors
from ota.core.targets import (
    NAME_PATTERN,
    DeltaTargetCustom,
    ModelTargetCustom,
    SelfTestTargetCustom,
    tuf_fields,
)
from ota.server.blobstore import BlobStore
from ota.server.db import bump_counter, transaction
from ota.server.errors import ConflictError, InvalidRequestError, ServerError
from ota.server.housekeeping import upload_dir
from ota.server.models import AuditEntry, Delta, Release
from ota.server.tuf_repo import ImageRepository

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
SELFTEST_SUFFIX = ".selftest.npz"
SELFTEST_STAGING_PREFIX = "uploads/selftest/"
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def file_digest(path: Path) -> tuple[str, int]:
    """Return ``(sha256 hex, length)`` of a file, streamed.

    Raises:
        OSError: The file cannot be read.
    """
    return sha256_file(path, chunk=CHUNK)


def target_name(model: str, version: str, profile: str, suffix: str) -> str:
    """Return the flat TUF target name of an artifact: ``{model}-{version}-{profile}{suffix}``."""
    return f"{model}-{version}-{profile}{suffix}"


def blob_key(sha256: str, name: str) -> str:
    """Return the blob key of a target: the consistent-snapshot file name under ``targets/``."""
    return f"targets/{sha256}.{name}"


def selftest_staging_key(sha256: str) -> str:
    """Return the blob key of staged self-test vectors with this sha256.

    Raises:
        InvalidRequestError: ``sha256`` is not 64 lowercase hex digits.
    """
    if not SHA256_PATTERN.match(sha256):
        raise InvalidRequestError("selftest_sha256 must be 64 lowercase hex digits")
    return f"{SELFTEST_STAGING_PREFIX}{sha256}"


def _check_vectors(path: Path) -> tuple[str, int]:
    sha256, length = file_digest(path)
    if length == 0:
        raise InvalidRequestError("the self-test vectors file is empty")
    # The same reader the agent runs before committing a model: a file it would refuse is refused here.
    try:
        load_vectors(path, max_bytes=length)
    except SelfTestFormatError as exc:
        raise InvalidRequestError(f"bad self-test vectors: {exc}") from exc
    return sha256, length


def stage_selftest(blobs: BlobStore, vectors: Path) -> tuple[str, int]:
    """Upload self-test vectors to the staging area of the blob store, keyed by content (idempotent).

    Args:
        blobs: Blob store.
        vectors: The ``.npz`` file.

    Returns:
        ``(sha256, length)``; pass the sha256 to :func:`publish_release` via ``selftest_sha256``.

    Raises:
        InvalidRequestError: Empty or not an ``.npz`` file.
        BlobStoreError: Upload failed.
    """
    sha256, length = _check_vectors(vectors)
    key = selftest_staging_key(sha256)
    if not blobs.exists(key):
        blobs.put_file(key, vectors)
    return sha256, length


def fetch_staged_selftest(blobs: BlobStore, sha256: str, destination: Path) -> Path:
    """Download staged vectors to ``destination`` and check their hash.

    Raises:
        InvalidRequestError: Bad sha256, nothing staged under it, or the staged bytes do not match.
        BlobStoreError: Download failed.
    """
    key = selftest_staging_key(sha256)
    if not blobs.exists(key):
        raise InvalidRequestError(f"no self-test vectors staged with sha256 {sha256[:12]}…; PUT them first")
    blobs.download(key, destination)
    if file_digest(destination)[0] != sha256:
        raise InvalidRequestError(f"staged self-test vectors {sha256[:12]}… are corrupt; upload them again")
    return destination


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish_release` did."""

    release: Release
    created: bool
    deltas: list[Delta]


def _validate(model: str, version: str, profile: str) -> None:
    for label, value in (("model", model), ("version", version), ("profile", profile)):
        if not NAME_PATTERN.match(value):
            raise InvalidRequestError(f"{label} must match {NAME_PATTERN.pattern}, got {value!r}")


ARTIFACT_FORMATS = ("onnx", "raw")


def check_artifact(path: Path, artifact_format: str) -> None:
    """Refuse a model artifact that is not what it claims to be.

    ``onnx`` runs ONNX's checker on the file (from its path, so models over 2 GB and with external data
    parse in C++ without a Python copy); a truncated or foreign file fails to parse. ``raw`` accepts any
    bytes.

    Raises:
        InvalidRequestError: An unknown format, or a file the ONNX checker refuses.
    """
    if artifact_format not in ARTIFACT_FORMATS:
        raise InvalidRequestError(
            f"artifact_format must be one of {list(ARTIFACT_FORMATS)}, not {artifact_format!r}"
        )
    if artifact_format == "raw":
        return
    import onnx.checker  # the server's only use of onnx: kept off the import path of every other route

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # the checker raises its C++ ValidationError (and others) for any bad file
        message = str(exc).replace(str(path), "the artifact").splitlines()[0][:300]
        raise InvalidRequestError(
            f"the artifact is not a valid ONNX model ({message}); "
            "publish other formats with artifact_format=raw"
        ) from exc


def publish_release(
    *,
    factory: sessionmaker[Session],
    blobs: BlobStore,
    repository: ImageRepository,
    artifact: Path,
    model: str,
    version: str,
    profile: str,
    source_uri: str | None = None,
    delta_base_count: int = 3,
    actor: str = "cli",
    selftest: Path | None = None,
    mlflow_run_id: str | None = None,
    data_fingerprint: str | None = None,
    temp_dir: Path | None = None,
    artifact_format: str = "onnx",
) -> PublishResult:
    """Publish ``artifact`` as a release: upload, register the TUF target, build and register deltas.

    Args:
        factory: Session factory.
        blobs: Blob store for the artifact and patches.
        repository: The TUF repository manager.
        artifact: The model file.
        model: Model name.
        version: Model version.
        profile: Hardware profile the artifact is built for.
        source_uri: Where it came from (an MLflow model URI), stored as a custom target field.
        delta_base_count: Deltas are built from this many earlier releases of the same model and profile.
        actor: Who publishes (for the audit log).
        selftest: The release's self-test vectors (``.npz``), registered as their own TUF target.
        mlflow_run_id: The MLflow run that trained the model (provenance).
        data_fingerprint: Fingerprint of the training data (provenance).
        temp_dir: Where deltas are built (the server's swept temp folder; the system's when None).
        artifact_format: ``onnx`` (the default: the file must be a model ONNX's checker accepts, so a
            truncated or foreign file is never signed as a model) or ``raw`` (any bytes, an explicit choice
            kept in the audit log).

    Returns:
        The release, whether it was new, and its deltas.

    Raises:
        InvalidRequestError: Bad names, an empty artifact, an artifact that is not valid ONNX, or bad
            vectors.
        ConflictError: The model/version/profile exists with a different artifact or different vectors.
        BlobStoreError: Upload failed.
        RepositoryError: TUF signing failed.
    """
    _validate(model, version, profile)
    sha256, length = file_digest(artifact)
    if length == 0:
        raise InvalidRequestError("artifact is empty")
    check_artifact(artifact, artifact_format)
    selftest_sha: str | None = None
    selftest_len = 0
    if selftest is not None:
        selftest_sha, selftest_len = _check_vectors(selftest)
    with transaction(factory) as session:
        existing = _existing(session, model, version, profile, sha256, selftest_sha)
        if existing is not None:
            return PublishResult(existing, False, _deltas_of(session, existing.id))
        bases = _delta_bases(session, model, profile, sha256, delta_base_count)
    name = target_name(model, version, profile, artifact.suffix or ".bin")
    blobs.put_file(blob_key(sha256, name), artifact)
    selftest_name: str | None = None
    if selftest is not None and selftest_sha is not None:
        selftest_name = target_name(model, version, profile, SELFTEST_SUFFIX)
        blobs.put_file(blob_key(selftest_sha, selftest_name), selftest)
    release_id = (
        f"rel-{sha256[:12]}-{hashlib.sha256(f'{model}/{version}/{profile}'.encode()).hexdigest()[:8]}"
    )
    built = _build_deltas(blobs, artifact, sha256, bases, model, profile, temp_dir)

    model_custom = ModelTargetCustom(
        model=model,
        version=version,
        profile=profile,
        release_id=release_id,
        source_uri=source_uri,
        mlflow_run_id=mlflow_run_id,
        data_fingerprint=data_fingerprint,
        selftest=selftest_name if selftest_sha is not None else None,
    )
    targets = [TargetFile(length, {"sha256": sha256}, name, tuf_fields(model_custom))]
    if selftest_name is not None and selftest_sha is not None:
        vectors_custom = SelfTestTargetCustom(
            model=model, version=version, profile=profile, release_id=release_id
        )
        targets.append(
            TargetFile(selftest_len, {"sha256": selftest_sha}, selftest_name, tuf_fields(vectors_custom))
        )
    for delta in built:
        delta_custom = DeltaTargetCustom(
            model=model,
            profile=profile,
            base_sha256=delta.base_sha256,
            result_sha256=delta.result_sha256,
            base_release_id=delta.base_release_id,
            release_id=release_id,
        )
        targets.append(
            TargetFile(delta.length, {"sha256": delta.sha256}, delta.target_name, tuf_fields(delta_custom))
        )
    release = Release(
        id=release_id,
        model=model,
        version=version,
        profile=profile,
        sha256=sha256,
        length=length,
        target_name=name,
        source_uri=source_uri,
        mlflow_run_id=mlflow_run_id,
        data_fingerprint=data_fingerprint,
        selftest_target=selftest_name,
        selftest_sha256=selftest_sha,
    )
    try:
        with transaction(factory) as session:
            session.add(release)
            session.flush()
            for delta in built:
                delta.release_id = release_id
                session.add(delta)
            repository.add_targets(session, targets)
            # A new release (and its deltas, which lead to it) changes no device's assignment until a
            # rollout names it, and that rollout re-signs its own devices: no fleet-wide re-signing here.
            bump_counter(session, scoped=True)
            session.add(
                AuditEntry(
                    actor=actor,
                    action="release.publish",
                    subject=release_id,
                    details={
                        "model": model,
                        "version": version,
                        "profile": profile,
                        "sha256": sha256,
                        "artifact_format": artifact_format,
                    },
                )
            )
    except IntegrityError:
        # A concurrent publish of the same release won the race: answer as the idempotent repeat.
        with transaction(factory) as session:
            existing = _existing(session, model, version, profile, sha256, selftest_sha)
            if existing is None:
                raise
            return PublishResult(existing, False, _deltas_of(session, existing.id))
    return PublishResult(release, True, built)


def _existing(
    session: Session, model: str, version: str, profile: str, sha256: str, selftest_sha: str | None
) -> Release | None:
    found = session.scalar(
        select(Release).where(Release.model == model, Release.version == version, Release.profile == profile)
    )
    if found is not None and found.sha256 != sha256:
        raise ConflictError(
            f"{model} {version} for {profile} is already published with sha256 {found.sha256[:12]}…; "
            "publish a new version instead"
        )
    if found is not None and found.selftest_sha256 != selftest_sha:
        # The signed targets metadata already ties the model to its vectors: changing them silently
        # would change what devices check against without a new version.
        raise ConflictError(
            f"{model} {version} for {profile} is already published with different self-test vectors; "
            "publish a new version instead"
        )
    return found


def _delta_bases(session: Session, model: str, profile: str, sha256: str, count: int) -> list[Release]:
    """The newest ``count`` earlier artifacts (distinct bytes) that have no delta to ``sha256`` yet.

    The same bytes may be released under several versions (a re-release, or a model re-shipped with new
    self-test vectors); deltas are keyed by (base, result) hashes, which the director looks up, so an
    existing one serves the new release too, and building it again would break the unique constraint.
    """
    done = set(session.scalars(select(Delta.base_sha256).where(Delta.result_sha256 == sha256)))
    bases: list[Release] = []
    for release in session.scalars(
        select(Release)
        .where(Release.model == model, Release.profile == profile, Release.sha256 != sha256)
        .order_by(Release.created_at.desc())
    ):
        if len(bases) >= count:
            break
        if release.sha256 not in done:
            done.add(release.sha256)
            bases.append(release)
    return bases


def _deltas_of(session: Session, release_id: str) -> list[Delta]:
    return list(session.scalars(select(Delta).where(Delta.release_id == release_id)))


def _build_deltas(
    blobs: BlobStore,
    artifact: Path,
    sha256: str,
    bases: list[Release],
    model: str,
    profile: str,
    temp_dir: Path | None,
) -> list[Delta]:
    if not bases:
        return []
    try:
        from ota.core.delta import make_delta
    except ImportError:
        log.warning("ota.core.delta is not available: publishing without deltas")
        return []
    built: list[Delta] = []
    with upload_dir(temp_dir, kind="delta") as tmp:
        for base in bases:
            base_path = tmp / f"base-{base.sha256}"
            patch_path = tmp / f"patch-{base.sha256}"
            try:
                blobs.download(blob_key(base.sha256, base.target_name), base_path)
                make_delta(base_path, artifact, patch_path)
            except ServerError:
                raise
            except Exception as exc:  # a delta is an optimisation: a failed one must not block the release
                log.warning("delta from %s failed, skipped: %s", base.id, exc)
                continue
            patch_sha, patch_len = file_digest(patch_path)
            name = f"{model}-{profile}-{base.sha256[:16]}-to-{sha256[:16]}.patch"
            blobs.put_file(blob_key(patch_sha, name), patch_path)
            built.append(
                Delta(
                    release_id="",
                    base_release_id=base.id,
                    base_sha256=base.sha256,
                    result_sha256=sha256,
                    target_name=name,
                    sha256=patch_sha,
                    length=patch_len,
                )
            )
    return built

"""The custom fields of the image repository's TUF targets: what the server signs and the agent reads.

Every target the server registers (:mod:`ota.server.releases`) carries a ``custom`` object naming what it is;
the edge agent reads the same documents back from python-tuf's ``TargetFile.custom``. Like the documents of
:mod:`ota.core.manifest` they are frozen dataclasses with ``to_dict`` / ``from_dict``, strict both ways:
unknown or missing fields and wrong types raise :class:`~ota.core.errors.DocumentFormatError`, so a field one
side writes and the other never reads (or reads under another name, or one level down) cannot exist.

Documents, told apart by ``kind``::

    model     the full artifact: model, version, profile, release_id; provenance (source_uri,
              mlflow_run_id, data_fingerprint, each null when unknown); selftest: the name of the
              release's self-test vectors target, absent when it ships none
    selftest  the self-test vectors (format: :mod:`ota.core.selftest`): model, version, profile, release_id
    delta     a patch from one release to another: model, profile, base_sha256, result_sha256,
              base_release_id, release_id

There is no latency budget here: a release's budget travels inside its self-test vectors
(``latency_budget_ms``, :mod:`ota.core.selftest`), a signed target of its own, so one number has one home.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Self

from ota.core.errors import DocumentFormatError
from ota.core.manifest import SHA256_PATTERN, _obj, _opt_str, _str

#: Model, version and profile names, as the server accepts them at publish time.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
#: Release ids the server makes (``rel-<12 hex>-<8 hex>``); kept loose: any short label.
RELEASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Provenance strings (an MLflow model URI, a run id, a fingerprint) are free text of bounded length.
_PROVENANCE_MAX = 2048
_TARGET_NAME_MAX = 512


class TargetKind(StrEnum):
    """What a TUF target of the image repository holds."""

    MODEL = "model"
    SELFTEST = "selftest"
    DELTA = "delta"


def _kind(raw: Mapping[str, Any], expected: TargetKind) -> None:
    if raw.get("kind") != expected.value:
        raise DocumentFormatError(f"target custom kind must be {expected.value!r}, got {raw.get('kind')!r}")


def _provenance(raw: Mapping[str, Any], key: str) -> str | None:
    if raw.get(key) is None:
        return None
    return _str(raw, key, max_len=_PROVENANCE_MAX)


@dataclass(frozen=True)
class ModelTargetCustom:
    """The custom fields of a release's model target.

    Attributes:
        model: Model name.
        version: Release version.
        profile: Hardware profile the artifact is built for.
        release_id: The server's release id.
        source_uri: Where the artifact came from (an MLflow model URI), if known.
        mlflow_run_id: The training run, if known.
        data_fingerprint: Fingerprint of the training data, if known.
        selftest: TUF target name of the release's self-test vectors, None when it ships none.
    """

    model: str
    version: str
    profile: str
    release_id: str
    source_uri: str | None = None
    mlflow_run_id: str | None = None
    data_fingerprint: str | None = None
    selftest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able document: unknown provenance as null, ``selftest`` only when there is one."""
        document: dict[str, Any] = {
            "kind": TargetKind.MODEL.value,
            "model": self.model,
            "version": self.version,
            "profile": self.profile,
            "release_id": self.release_id,
            "source_uri": self.source_uri,
            "mlflow_run_id": self.mlflow_run_id,
            "data_fingerprint": self.data_fingerprint,
        }
        if self.selftest is not None:
            document["selftest"] = self.selftest
        return document

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """Parse the document.

        Raises:
            DocumentFormatError: A field is missing, unknown or invalid, or ``kind`` is not ``model``.
        """
        optional = {"source_uri", "mlflow_run_id", "data_fingerprint", "selftest"}
        required = {"kind", "model", "version", "profile", "release_id"}
        raw = _obj(raw, "model target custom", required | optional, required)
        _kind(raw, TargetKind.MODEL)
        selftest = _opt_str(raw, "selftest")
        if selftest is not None and len(selftest) > _TARGET_NAME_MAX:
            raise DocumentFormatError(f"selftest must be at most {_TARGET_NAME_MAX} characters")
        return cls(
            model=_str(raw, "model", pattern=NAME_PATTERN),
            version=_str(raw, "version", pattern=NAME_PATTERN),
            profile=_str(raw, "profile", pattern=NAME_PATTERN),
            release_id=_str(raw, "release_id", pattern=RELEASE_ID_PATTERN),
            source_uri=_provenance(raw, "source_uri"),
            mlflow_run_id=_provenance(raw, "mlflow_run_id"),
            data_fingerprint=_provenance(raw, "data_fingerprint"),
            selftest=selftest,
        )


@dataclass(frozen=True)
class SelfTestTargetCustom:
    """The custom fields of a release's self-test vectors target.

    Attributes:
        model: Model name.
        version: Release version.
        profile: Hardware profile.
        release_id: The release the vectors belong to.
    """

    model: str
    version: str
    profile: str
    release_id: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able document."""
        return {
            "kind": TargetKind.SELFTEST.value,
            "model": self.model,
            "version": self.version,
            "profile": self.profile,
            "release_id": self.release_id,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """Parse the document.

        Raises:
            DocumentFormatError: A field is missing, unknown or invalid, or ``kind`` is not ``selftest``.
        """
        keys = {"kind", "model", "version", "profile", "release_id"}
        raw = _obj(raw, "self-test target custom", keys, keys)
        _kind(raw, TargetKind.SELFTEST)
        return cls(
            model=_str(raw, "model", pattern=NAME_PATTERN),
            version=_str(raw, "version", pattern=NAME_PATTERN),
            profile=_str(raw, "profile", pattern=NAME_PATTERN),
            release_id=_str(raw, "release_id", pattern=RELEASE_ID_PATTERN),
        )


@dataclass(frozen=True)
class DeltaTargetCustom:
    """The custom fields of a delta patch target.

    Attributes:
        model: Model name.
        profile: Hardware profile.
        base_sha256: The model the patch applies to.
        result_sha256: The model it produces.
        base_release_id: The release of the base model.
        release_id: The release the patch produces.
    """

    model: str
    profile: str
    base_sha256: str
    result_sha256: str
    base_release_id: str
    release_id: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able document."""
        return {
            "kind": TargetKind.DELTA.value,
            "model": self.model,
            "profile": self.profile,
            "base_sha256": self.base_sha256,
            "result_sha256": self.result_sha256,
            "base_release_id": self.base_release_id,
            "release_id": self.release_id,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """Parse the document.

        Raises:
            DocumentFormatError: A field is missing, unknown or invalid, or ``kind`` is not ``delta``.
        """
        keys = {"kind", "model", "profile", "base_sha256", "result_sha256", "base_release_id", "release_id"}
        raw = _obj(raw, "delta target custom", keys, keys)
        _kind(raw, TargetKind.DELTA)
        return cls(
            model=_str(raw, "model", pattern=NAME_PATTERN),
            profile=_str(raw, "profile", pattern=NAME_PATTERN),
            base_sha256=_str(raw, "base_sha256", pattern=SHA256_PATTERN),
            result_sha256=_str(raw, "result_sha256", pattern=SHA256_PATTERN),
            base_release_id=_str(raw, "base_release_id", pattern=RELEASE_ID_PATTERN),
            release_id=_str(raw, "release_id", pattern=RELEASE_ID_PATTERN),
        )


def tuf_fields(custom: ModelTargetCustom | SelfTestTargetCustom | DeltaTargetCustom) -> dict[str, Any]:
    """The ``unrecognized_fields`` of a python-tuf ``TargetFile`` whose ``custom`` is ``custom``."""
    return {"custom": custom.to_dict()}

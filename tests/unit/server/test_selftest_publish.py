"""publish_release with self-test vectors, provenance fields and re-released bytes, on SQLite + local blobs.

The vectors become their own signed target in the same targets version as the model, the model target's
custom ``selftest`` field names it, bad vectors are refused with a typed error, and the same bytes published
under a new version (what re-shipping a model with new vectors does) neither crashes on the deltas' unique
constraint nor loses the delta the director serves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from ota.server.context import ServerContext
from ota.server.db import transaction
from ota.server.errors import ConflictError, InvalidRequestError
from ota.server.models import AuditEntry, Delta
from ota.server.releases import (
    fetch_staged_selftest,
    publish_release,
    selftest_staging_key,
    stage_selftest,
)
from ota.server.testing import write_selftest_vectors as npz
from tests.onnx_factory import linear_onnx


def model(path: Path, text: str) -> Path:
    path.write_bytes(text.encode() * 400)
    return path


def test_vectors_are_a_target_named_by_the_model_target(ctx: ServerContext, tmp_path: Path) -> None:
    with transaction(ctx.sessions) as session:
        before = ctx.repository.latest_version(session, "targets")
    result = publish_release(
        artifact_format="raw",
        factory=ctx.sessions,
        blobs=ctx.blobs,
        repository=ctx.repository,
        artifact=model(tmp_path / "m.onnx", "weights-1 "),
        model="net",
        version="1",
        profile="cpu",
        selftest=npz(tmp_path / "v.npz", b"vectors-1"),
        mlflow_run_id="run-1",
        data_fingerprint="fp-1",
    )
    release = result.release
    assert release.selftest_target == "net-1-cpu.selftest.npz"
    assert (release.mlflow_run_id, release.data_fingerprint) == ("run-1", "fp-1")
    with transaction(ctx.sessions) as session:
        assert ctx.repository.latest_version(session, "targets") == before + 1
        targets = ctx.repository.targets(session)
    model_target = targets[release.target_name]
    vectors_target = targets[release.selftest_target]
    assert model_target.custom["selftest"] == release.selftest_target
    assert model_target.custom["data_fingerprint"] == "fp-1"
    assert vectors_target.custom["kind"] == "selftest"
    assert vectors_target.hashes["sha256"] == release.selftest_sha256
    assert ctx.blobs.exists(f"targets/{release.selftest_sha256}.{release.selftest_target}")

    with pytest.raises(ConflictError):
        publish_release(
            artifact_format="raw",
            factory=ctx.sessions,
            blobs=ctx.blobs,
            repository=ctx.repository,
            artifact=tmp_path / "m.onnx",
            model="net",
            version="1",
            profile="cpu",
            selftest=npz(tmp_path / "v2.npz", b"vectors-2"),
        )


def test_bad_vectors_are_refused(ctx: ServerContext, tmp_path: Path) -> None:
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_bytes(b"plain text, not an archive")
    for name in ("empty.npz", "text.npz"):
        with pytest.raises(InvalidRequestError):
            stage_selftest(ctx.blobs, tmp_path / name)
        with pytest.raises(InvalidRequestError):
            publish_release(
                artifact_format="raw",
                factory=ctx.sessions,
                blobs=ctx.blobs,
                repository=ctx.repository,
                artifact=model(tmp_path / "m.onnx", "w "),
                model="net",
                version="9",
                profile="cpu",
                selftest=tmp_path / name,
            )
    with pytest.raises(InvalidRequestError):
        selftest_staging_key("../../etc/passwd")
    with pytest.raises(InvalidRequestError):
        fetch_staged_selftest(ctx.blobs, "a" * 64, tmp_path / "out.npz")


def test_staging_round_trips_and_is_content_addressed(ctx: ServerContext, tmp_path: Path) -> None:
    vectors = npz(tmp_path / "v.npz", b"abc")
    sha, length = stage_selftest(ctx.blobs, vectors)
    assert stage_selftest(ctx.blobs, vectors) == (sha, length)
    out = fetch_staged_selftest(ctx.blobs, sha, tmp_path / "out.npz")
    assert out.read_bytes() == vectors.read_bytes() and length == len(vectors.read_bytes())


def test_same_bytes_under_a_new_version_reuse_the_delta(ctx: ServerContext, tmp_path: Path) -> None:
    def publish(version: str, text: str, vectors: bytes) -> None:
        publish_release(
            artifact_format="raw",
            factory=ctx.sessions,
            blobs=ctx.blobs,
            repository=ctx.repository,
            artifact=model(tmp_path / f"m{version}.onnx", text),
            model="net",
            version=version,
            profile="cpu",
            selftest=npz(tmp_path / f"v{version}.npz", vectors),
        )

    publish("1", "weights-1 ", b"one")
    publish("2", "weights-2 ", b"two")
    publish("3", "weights-2 ", b"three")  # v2's bytes again, with new vectors: no IntegrityError
    publish("4", "weights-4 ", b"four")  # bases v3 and v2 share bytes: one delta from them, not two
    with transaction(ctx.sessions) as session:
        pairs = [(d.base_sha256, d.result_sha256) for d in session.scalars(select(Delta))]
    assert len(pairs) == len(set(pairs))
    assert len(pairs) == 3  # 1→2, 1→4, 2→4 (distinct bytes only)


def _tiny_onnx() -> bytes:
    return linear_onnx(np.arange(40, dtype=np.float32).reshape(4, 10))


@pytest.mark.parametrize("cut", [1, 20, 0.5, -1])
def test_a_truncated_onnx_model_is_refused_and_raw_is_an_explicit_audited_choice(
    client: TestClient, ctx: ServerContext, admin: dict[str, str], cut: float
) -> None:
    """Issue 9: any bytes, even a truncated ONNX file, used to be published and signed as a model."""
    model = _tiny_onnx()
    end = int(len(model) * cut) if isinstance(cut, float) else cut if cut > 0 else len(model) + cut
    headers = admin | {"Content-Type": "application/octet-stream"}
    params = {"model": "m", "version": "1", "profile": "p"}
    refused = client.put("/v1/releases", params=params, content=model[:end], headers=headers)
    assert refused.status_code == 422, refused.text
    assert "not a valid ONNX model" in refused.json()["message"]
    assert client.get("/v1/releases", headers=admin).json() == []
    accepted = client.put("/v1/releases", params=params, content=model, headers=headers)
    assert accepted.status_code == 201, accepted.text
    raw = client.put(
        "/v1/releases",
        params={**params, "version": "2", "artifact_format": "raw"},
        content=model[:end],
        headers=headers,
    )
    assert raw.status_code == 201, raw.text
    with ctx.sessions() as session:
        formats = [
            e.details["artifact_format"]
            for e in session.scalars(select(AuditEntry).where(AuditEntry.action == "release.publish"))
        ]
    assert formats == ["onnx", "raw"]

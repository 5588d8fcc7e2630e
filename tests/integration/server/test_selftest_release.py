"""A release carries its self-test vectors: staged with ``PUT /v1/releases/selftest``, attached by sha256
to the model publish, signed as their own TUF target in the same targets version as the model target, and
downloadable by python-tuf's own ``ngclient.Updater`` (no project code in between). Also: idempotence,
conflicts, provenance fields, bad uploads refused with 422, and the SQLite + local and PostgreSQL + S3 pair.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tuf.ngclient import Updater

from .conftest import LiveServer, live_server, settings_for

OCTET = {"Content-Type": "application/octet-stream"}


def artifact(seed: int, size: int = 32 * 1024) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(size))


def vectors(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        inputs=rng.normal(size=(4, 8)).astype(np.float32),
        expected_top1=rng.integers(0, 10, size=4),
        expected_logits=rng.normal(size=(4, 10)).astype(np.float32),
        tolerance=np.asarray(1e-3),
    )
    return buffer.getvalue()


def stage(http: httpx.Client, server: LiveServer, data: bytes) -> httpx.Response:
    return http.put("/v1/releases/selftest", content=data, headers=server.admin | OCTET)


def publish(
    http: httpx.Client, server: LiveServer, data: bytes, version: str, **extra: str
) -> httpx.Response:
    params = {
        "model": "digits",
        "version": version,
        "profile": "cpu-generic",
        "artifact_format": "raw",
        **extra,
    }
    return http.put("/v1/releases", params=params, content=data, headers=server.admin | OCTET)


def targets_doc(http: httpx.Client) -> dict[str, Any]:
    snapshot_version = http.get("/tuf/metadata/timestamp.json").json()["signed"]["meta"]["snapshot.json"][
        "version"
    ]
    snapshot = http.get(f"/tuf/metadata/{snapshot_version}.snapshot.json").json()
    version = snapshot["signed"]["meta"]["targets.json"]["version"]
    doc: dict[str, Any] = json.loads(http.get(f"/tuf/metadata/{version}.targets.json").content)
    return doc


def run_selftest_release(server: LiveServer, tmp_path: Path) -> None:
    model_bytes, vector_bytes = artifact(1), vectors(1)
    with server.client() as http:
        staged = stage(http, server, vector_bytes)
        assert staged.status_code == 201, staged.text
        assert staged.json() == {
            "sha256": hashlib.sha256(vector_bytes).hexdigest(),
            "length": len(vector_bytes),
        }
        assert stage(http, server, vector_bytes).json() == staged.json()  # content-addressed, idempotent
        targets_before = targets_doc(http)["signed"]["version"]
        answer = publish(
            http,
            server,
            model_bytes,
            "1",
            selftest_sha256=staged.json()["sha256"],
            mlflow_run_id="run-abc",
            data_fingerprint="fp-123",
        )
        assert answer.status_code == 201, answer.text
        release = answer.json()["release"]
        assert release["selftest_target"] == "digits-1-cpu-generic.selftest.npz"
        assert release["selftest_sha256"] == staged.json()["sha256"]
        assert release["mlflow_run_id"] == "run-abc" and release["data_fingerprint"] == "fp-123"
        # One targets version holds both the model target and its vectors target.
        doc = targets_doc(http)
        assert doc["signed"]["version"] == targets_before + 1
        assert {release["target_name"], release["selftest_target"]} <= set(doc["signed"]["targets"])

        # Same artifact + same vectors: the same release, not a new one; no new targets version.
        again = publish(http, server, model_bytes, "1", selftest_sha256=staged.json()["sha256"])
        assert again.status_code == 201 and again.json()["created"] is False
        assert again.json()["release"]["id"] == release["id"]
        assert targets_doc(http)["signed"]["version"] == doc["signed"]["version"]
        # Same artifact, other vectors (or none): a conflict, because devices would check something else.
        other = stage(http, server, vectors(2)).json()["sha256"]
        assert publish(http, server, model_bytes, "1", selftest_sha256=other).status_code == 409
        assert publish(http, server, model_bytes, "1").status_code == 409
        # Unknown staged sha, malformed sha, empty or non-npz vectors: the server's 422 invalid_request.
        for bad in (
            publish(http, server, artifact(3), "3", selftest_sha256="0" * 64),
            publish(http, server, artifact(3), "3", selftest_sha256="xyz"),
            stage(http, server, b""),
            stage(http, server, b"not a zip file"),
        ):
            assert bad.status_code == 422, bad.text
        assert all(r["version"] != "3" for r in http.get("/v1/releases", headers=server.admin).json())
        # Without vectors the old API still works (backward compatible) and names no self-test target.
        plain = publish(http, server, artifact(4), "4", source_uri="models:/d/4")
        assert plain.status_code == 201 and plain.json()["release"]["selftest_target"] is None
        listed = {r["id"]: r for r in http.get("/v1/releases", headers=server.admin).json()}
        assert listed[release["id"]]["selftest_target"] == release["selftest_target"]
        root = http.get("/tuf/metadata/1.root.json").content

    (tmp_path / "metadata").mkdir()
    (tmp_path / "targets").mkdir()
    updater = Updater(
        metadata_dir=str(tmp_path / "metadata"),
        metadata_base_url=f"{server.url}/tuf/metadata/",
        target_dir=str(tmp_path / "targets"),
        target_base_url=f"{server.url}/tuf/targets/",
        bootstrap=root,
    )
    updater.refresh()
    model_info = updater.get_targetinfo(release["target_name"])
    assert model_info is not None
    assert model_info.custom["selftest"] == release["selftest_target"]
    assert model_info.custom["mlflow_run_id"] == "run-abc"
    vectors_info = updater.get_targetinfo(model_info.custom["selftest"])
    assert vectors_info is not None
    assert vectors_info.custom == {
        "kind": "selftest",
        "model": "digits",
        "version": "1",
        "profile": "cpu-generic",
        "release_id": release["id"],
    }
    assert Path(updater.download_target(vectors_info)).read_bytes() == vector_bytes
    assert Path(updater.download_target(model_info)).read_bytes() == model_bytes
    plain_info = updater.get_targetinfo(plain.json()["release"]["target_name"])
    assert plain_info is not None and "selftest" not in plain_info.custom


def test_selftest_release_sqlite_local(tmp_path: Path) -> None:
    with live_server(settings_for(tmp_path)) as server:
        run_selftest_release(server, tmp_path)


@pytest.mark.usefixtures("s3_endpoint")
def test_selftest_release_postgres_s3(tmp_path: Path, pg_url: str, s3_endpoint: str) -> None:
    settings = settings_for(
        tmp_path,
        database_url=pg_url,
        blob_url="s3://edgefleet-it/blobs",
        s3_endpoint_url=s3_endpoint,
        s3_presign=True,
    )
    with live_server(settings) as server:
        assert type(server.ctx.blobs).__name__ == "S3BlobStore"
        run_selftest_release(server, tmp_path)

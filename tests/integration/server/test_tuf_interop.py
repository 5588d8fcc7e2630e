"""python-tuf's own ngclient.Updater, with no project code in between, refreshes against the running
server and downloads both releases and the delta: on SQLite + local blobs and on PostgreSQL + S3 (moto)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from tuf.ngclient import Updater

from .conftest import LiveServer, live_server, settings_for


def artifact(seed: int, size: int = 96 * 1024) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(size))


def run_interop(server: LiveServer, tmp_path: Path) -> None:
    v1 = artifact(1)
    v2 = bytearray(v1)
    v2[1000:1100] = bytes(100)  # a small change, so the delta is worth having
    releases = []
    with server.client() as http:
        for version, data in (("1", v1), ("2", bytes(v2))):
            answer = http.put(
                "/v1/releases",
                params={
                    "model": "digits",
                    "version": version,
                    "profile": "cpu-generic",
                    "source_uri": "models:/d/1",
                    "artifact_format": "raw",
                },
                content=data,
                headers=server.admin | {"Content-Type": "application/octet-stream"},
            )
            assert answer.status_code == 201, answer.text
            releases.append(answer.json())
        root = http.get("/tuf/metadata/1.root.json").content
    assert releases[0]["deltas"] == []
    assert len(releases[1]["deltas"]) == 1

    metadata_dir = tmp_path / "metadata"
    targets_dir = tmp_path / "targets"
    metadata_dir.mkdir()
    targets_dir.mkdir()
    updater = Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=f"{server.url}/tuf/metadata/",
        target_dir=str(targets_dir),
        target_base_url=f"{server.url}/tuf/targets/",
        bootstrap=root,
    )
    updater.refresh()
    names = [r["release"]["target_name"] for r in releases] + [releases[1]["deltas"][0]["target_name"]]
    for name, expected in zip(names, [v1, bytes(v2), None], strict=True):
        info = updater.get_targetinfo(name)
        assert info is not None, name
        path = updater.download_target(info)
        data = Path(path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info.hashes["sha256"]
        if expected is not None:
            assert data == expected
    delta_info = updater.get_targetinfo(names[2])
    assert delta_info is not None
    assert delta_info.custom["base_sha256"] == releases[0]["release"]["sha256"]
    assert delta_info.custom["result_sha256"] == releases[1]["release"]["sha256"]
    model_info = updater.get_targetinfo(names[0])
    assert model_info is not None
    assert model_info.custom["model"] == "digits" and model_info.custom["source_uri"] == "models:/d/1"
    # The delta really turns v1 into v2.
    from ota.core.delta import apply_delta

    base = tmp_path / "v1.bin"
    base.write_bytes(v1)
    out = tmp_path / "v2.bin"
    cached = updater.find_cached_target(delta_info)
    assert cached is not None
    apply_delta(base, Path(cached), out)
    assert out.read_bytes() == bytes(v2)


def test_ngclient_sqlite_local(tmp_path: Path) -> None:
    with live_server(settings_for(tmp_path)) as server:
        run_interop(server, tmp_path)


@pytest.mark.usefixtures("s3_endpoint")
def test_ngclient_postgres_s3(tmp_path: Path, pg_url: str, s3_endpoint: str) -> None:
    settings = settings_for(
        tmp_path,
        database_url=pg_url,
        blob_url="s3://edgefleet-it/blobs",
        s3_endpoint_url=s3_endpoint,
        s3_presign=True,
    )
    with live_server(settings) as server:
        assert type(server.ctx.blobs).__name__ == "S3BlobStore"
        assert server.ctx.engine.dialect.name == "postgresql"
        run_interop(server, tmp_path)
        # Targets are presigned redirects to S3 (ngclient followed them above); ranged reads work too.
        with server.client() as http:
            release = http.get("/v1/releases", headers=server.admin).json()[0]
            name = f"{release['sha256']}.{release['target_name']}"
            answer = http.get(f"/tuf/targets/{name}")
            assert answer.status_code == 307
            assert answer.headers["location"].startswith(s3_endpoint)
        chunk = b"".join(server.ctx.blobs.open_range(f"targets/{name}", 10, 19))
        assert len(chunk) == 10

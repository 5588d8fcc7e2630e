"""Two server processes on one PostgreSQL: a change made through one invalidates the other's cached
assignment (the shared generation counter), so a device polling the second sees the new answer.

Server A runs in this process (uvicorn in a thread); server B is a real `edgefleet server run` subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from ota.core.manifest import verify_assignment
from ota.core.signing import key_from_dict
from ota.server.testing import SimDevice

from .conftest import free_port, live_server, settings_for


@contextmanager
def cli_server(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    command = [str(Path(sys.executable).parent / "edgefleet"), "server", "run", "--port", str(port)]
    process = subprocess.Popen(
        command, env=os.environ | env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "edgefleet server run did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_change_through_one_server_reaches_the_other(tmp_path: Path, pg_url: str) -> None:
    common = {"database_url": pg_url, "blob_url": (tmp_path / "blobs").as_uri(), "key_dir": tmp_path / "keys"}
    env_b = {
        "EDGEFLEET_HOME": str(tmp_path / "b"),
        "EDGEFLEET_DATABASE_URL": pg_url,
        "EDGEFLEET_BLOB_URL": common["blob_url"],
        "EDGEFLEET_KEY_DIR": str(tmp_path / "keys"),
        "EDGEFLEET_TOKEN_SECRET": "integration-secret",
        "EDGEFLEET_CACHE_REFRESH_INTERVAL": "0.2",
    }
    with (
        live_server(settings_for(tmp_path / "a", **common)) as a,
        cli_server(env_b) as url_b,
        a.client() as http_a,
        httpx.Client(base_url=url_b, timeout=30) as http_b,
    ):
        device = SimDevice("car-1")
        enrolled = device.enrol(http_a, a.provisioning_token)
        assert enrolled.status_code == 201
        director = key_from_dict(enrolled.json()["director_key"])
        device.login(http_b)  # both processes share the token secret
        releases = []
        for version in ("1", "2"):
            answer = http_a.put(
                "/v1/releases",
                params={"model": "m", "version": version, "profile": "cpu-generic", "artifact_format": "raw"},
                content=f"model {version}".encode() * 100,
                headers=a.admin,
            )
            releases.append(answer.json()["release"])
        first = http_a.post(
            "/v1/rollouts",
            json={"release_id": releases[0]["id"], "phases": [{"percent": 100}]},
            headers=a.admin,
        ).json()
        polled = device.poll(http_b)
        assert polled.status_code == 200
        old = verify_assignment(polled.content, director, device_id="car-1")
        assert old.target is not None and old.target.sha256 == releases[0]["sha256"]
        etag = polled.headers["etag"]
        assert device.poll(http_b, etag=etag).status_code == 304

        assert http_a.post(f"/v1/rollouts/{first['id']}/abort", headers=a.admin).status_code == 200
        http_a.post(
            "/v1/rollouts",
            json={"release_id": releases[1]["id"], "phases": [{"percent": 100}]},
            headers=a.admin,
        )
        changed_at = time.monotonic()
        while True:
            answer = device.poll(http_b, etag=etag)
            if answer.status_code == 200:
                break
            assert time.monotonic() - changed_at < 5, "server B kept serving the stale assignment"
            time.sleep(0.05)
        new = verify_assignment(answer.content, director, device_id="car-1", last_counter=old.counter)
        assert new.target is not None and new.target.sha256 == releases[1]["sha256"]
        assert new.counter > old.counter

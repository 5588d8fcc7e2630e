"""Bytes off the API tier: target downloads redirect to a CDN, timestamp.json may be cached briefly by it,
and the per-device director answer is never cacheable."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ota.server.app import create_app
from ota.server.context import ServerContext
from ota.server.testing import SimDevice

from .conftest import make_provisioning, make_token


def test_targets_redirect_to_the_cdn_and_timestamp_gets_a_short_max_age(ctx: ServerContext) -> None:
    ctx.settings = ctx.settings.model_copy(
        update={"targets_cdn_url": "https://cdn.example.com/fleet/", "timestamp_max_age": 5}
    )
    admin = {"Authorization": f"Bearer {make_token(ctx, 'admin', 'release', 'rollout', 'read')}"}
    with TestClient(create_app(ctx=ctx)) as client:
        release = client.put(
            "/v1/releases",
            params={"model": "m", "version": "1", "profile": "cpu-generic", "artifact_format": "raw"},
            content=b"m" * 100,
            headers=admin,
        ).json()["release"]
        name = f"{release['sha256']}.{release['target_name']}"
        answer = client.get(f"/tuf/targets/{name}", follow_redirects=False)
        assert answer.status_code == 307
        assert answer.headers["location"] == f"https://cdn.example.com/fleet/{name}"
        assert (
            client.get("/tuf/targets/" + "0" * 64 + ".nothing.onnx").status_code == 404
        )  # no blind redirect
        assert client.get("/tuf/metadata/timestamp.json").headers["cache-control"] == "public, max-age=5"
        device = SimDevice("dev-cdn")
        assert device.enrol(client, make_provisioning(ctx)).status_code == 201
        device.login(client)
        poll = device.poll(client)
        assert poll.status_code == 200 and poll.headers["cache-control"] == "no-store"
        again = device.poll(client, etag=poll.headers["etag"])  # the hot path's 304
        assert again.status_code == 304 and again.headers["cache-control"] == "no-store"

"""TUF image repository: online roles re-signed before expiry, root and targets key rotation that
python-tuf's ngclient follows, and the metadata routes' answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface, Updater

from ota.server.context import ServerContext
from ota.server.db import transaction
from ota.server.keys import load_keyring, rotate_role_key
from ota.server.tuf_repo import Expiries, ImageRepository


class TestClientFetcher(FetcherInterface):
    """Lets ngclient fetch through the in-process app (ngclient itself is unchanged)."""

    __test__ = False  # a fetcher named Test*, not a test class

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def _fetch(self, url: str) -> Iterator[bytes]:
        answer = self.client.get(url.replace("http://testserver", ""))
        if answer.status_code != 200:
            raise DownloadHTTPError(f"{answer.status_code} for {url}", answer.status_code)
        return iter([answer.content])


def updater_for(client: TestClient, tmp_path: Path, root: bytes) -> Updater:
    (tmp_path / "meta").mkdir(parents=True, exist_ok=True)
    (tmp_path / "targets").mkdir(parents=True, exist_ok=True)
    return Updater(
        metadata_dir=str(tmp_path / "meta"),
        metadata_base_url="http://testserver/tuf/metadata/",
        target_dir=str(tmp_path / "targets"),
        target_base_url="http://testserver/tuf/targets/",
        fetcher=TestClientFetcher(client),
        bootstrap=root,
    )


def test_online_roles_are_resigned_before_expiry(ctx: ServerContext) -> None:
    with transaction(ctx.sessions) as session:
        assert ctx.repository.refresh_online_roles(session) == []
        before = ctx.repository.latest_version(session, "timestamp")
    # Seen by a repository whose timestamp lifetime is far longer, the stored one is near its end.
    longer = ImageRepository(keyring=ctx.keyring, expiries=Expiries(timestamp=10 * 86400))
    with transaction(ctx.sessions) as session:
        assert longer.refresh_online_roles(session) == ["timestamp"]
        assert longer.latest_version(session, "timestamp") == before + 1
    with transaction(ctx.sessions) as session:
        assert longer.refresh_online_roles(session) == []


def test_metadata_routes(client: TestClient) -> None:
    assert client.get("/tuf/metadata/1.root.json").status_code == 200
    assert client.get("/tuf/metadata/timestamp.json").headers["cache-control"] == "no-store"
    for bad in ("2.root.json", "0.root.json", "../x", "root.json", "1.timestamp.json"):
        assert client.get(f"/tuf/metadata/{bad}").status_code == 404, bad
    assert client.get("/tuf/targets/" + "a" * 64 + ".missing.onnx").status_code == 404


@pytest.mark.parametrize("role", ["root", "targets"])
def test_key_rotation_is_followed_by_ngclient(
    client: TestClient, ctx: ServerContext, tmp_path: Path, role: str
) -> None:
    root_v1 = client.get("/tuf/metadata/1.root.json").content
    updater = updater_for(client, tmp_path, root_v1)
    updater.refresh()
    old_ids = {k.keyid for k in ctx.keyring.public_keys(role)}
    new_keyring = rotate_role_key(ctx.keyring, role)
    with transaction(ctx.sessions) as session:
        assert ctx.repository.rotate_root(session, new_keyring) == 2
        ctx.repository.add_targets(session, [TargetFile(3, {"sha256": "a" * 64}, "after-rotation.bin")])
    new_keyring.save()
    assert {k.keyid for k in load_keyring(ctx.keyring.folder).public_keys(role)}.isdisjoint(old_ids)
    fresh = updater_for(client, tmp_path / "fresh", root_v1)
    fresh.refresh()
    assert fresh.get_targetinfo("after-rotation.bin") is not None

"""Issue 9, item 6: what a SIGKILLed upload or publish leaves (working folders in the server's temp folder,
``.part`` / ``.tmp`` files in the blob store) is swept at start and periodically; live work is kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ota.server.app import create_app
from ota.server.blobstore import LocalBlobStore
from ota.server.context import ServerContext
from ota.server.housekeeping import sweep_stale_temp, upload_dir


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _leftover(folder: Path, size: int = 4096, age: float = 0.0) -> Path:
    folder.mkdir(parents=True)
    (folder / "artifact.onnx").write_bytes(b"x" * size)
    if age:
        old = time.time() - age
        for path in (folder / "artifact.onnx", folder):
            os.utime(path, (old, old))
    return folder


def test_sweep_removes_dead_and_old_leftovers_and_keeps_live_work(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    blobs = tmp_path / "blobs"
    dead = _leftover(temp / f"upload-p{_dead_pid()}-abc")
    old = _leftover(temp / f"delta-p{os.getpid()}-old", age=7200)
    stray_old = _leftover(temp / "something-else", age=7200)
    (blobs / "targets").mkdir(parents=True)
    part = blobs / "targets" / ".abc.m.onnx.part"
    part.write_bytes(b"p" * 1000)
    os.utime(part, (time.time() - 7200, time.time() - 7200))
    fresh_part = blobs / "targets" / ".def.m.onnx.part"
    fresh_part.write_bytes(b"p")
    blob = blobs / "targets" / "abc.m.onnx"
    blob.write_bytes(b"real")
    os.utime(blob, (time.time() - 7200, time.time() - 7200))
    with upload_dir(temp) as live:
        (live / "artifact.onnx").write_bytes(b"live")
        result = sweep_stale_temp(temp, blobs, older_than=3600)
        assert live.exists()
    assert set(result.removed) == {dead, old, stray_old, part}
    assert result.bytes == 3 * 4096 + 1000
    assert fresh_part.exists() and blob.exists()


def test_the_app_sweeps_at_start(ctx: ServerContext) -> None:
    assert isinstance(ctx.blobs, LocalBlobStore)
    leftover = _leftover(ctx.settings.temp_dir / f"upload-p{_dead_pid()}-killed", size=1 << 20)
    part = ctx.blobs.root / "targets" / ".x.onnx.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"x")
    os.utime(part, (time.time() - 7200, time.time() - 7200))
    with TestClient(create_app(ctx=ctx)) as client:
        assert client.get("/healthz").status_code == 200
        assert not leftover.exists() and not part.exists()


def test_uploads_work_in_the_swept_folder(
    ctx: ServerContext, admin: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []
    import ota.server.routes.operators as operators

    original = operators.upload_dir

    def spy(parent: Path | None, **kwargs: str) -> object:
        seen.append(Path(str(parent)))
        return original(parent, **kwargs)

    monkeypatch.setattr(operators, "upload_dir", spy)
    with TestClient(create_app(ctx=ctx)) as client:
        answer = client.put(
            "/v1/releases",
            params={"model": "m", "version": "1", "profile": "p", "artifact_format": "raw"},
            content=b"m" * 10,
            headers=admin,
        )
        assert answer.status_code == 201, answer.text
    assert seen == [ctx.settings.temp_dir]
    assert list(ctx.settings.temp_dir.iterdir()) == []

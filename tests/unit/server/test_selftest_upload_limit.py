"""Issue 9, item 2: self-test vectors written by the project's own writer (``ota.core.selftest.save_vectors``)
for ordinary models are megabytes; staging them through the API works up to EDGEFLEET_MAX_SELFTEST_BYTES
(64 MiB by default) while other JSON bodies keep the 64 KiB limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ota.core.selftest import load_vectors, save_vectors
from ota.server.context import ServerContext
from ota.server.releases import selftest_staging_key
from ota.server.settings import ServerSettings

OCTET = {"Content-Type": "application/octet-stream"}


def realistic_vectors(path: Path, *, samples: int, shape: tuple[int, ...], classes: int = 10) -> Path:
    rng = np.random.default_rng(samples)
    logits = rng.normal(size=(samples, classes)).astype(np.float32)
    save_vectors(
        path,
        inputs=rng.random((samples, *shape), dtype=np.float32),
        expected_top1=logits.argmax(axis=1),
        expected_logits=logits,
        tolerance=1e-3,
        latency_budget_ms=50.0,
    )
    return path


@pytest.mark.parametrize(
    ("samples", "shape"),
    [pytest.param(300, (1, 28, 28), id="300x28x28"), pytest.param(400, (3, 64, 64), id="400x3x64x64")],
)
def test_realistic_vectors_stage_through_the_api(
    client: TestClient, ctx: ServerContext, admin: dict, tmp_path: Path, samples: int, shape: tuple[int, ...]
) -> None:
    vectors = realistic_vectors(tmp_path / "v.npz", samples=samples, shape=shape)
    assert vectors.stat().st_size > 64 * 1024
    staged = client.put("/v1/releases/selftest", content=vectors.read_bytes(), headers=admin | OCTET)
    assert staged.status_code == 201, staged.text
    assert staged.json()["length"] == vectors.stat().st_size
    copy = tmp_path / "staged.npz"
    ctx.blobs.download(selftest_staging_key(staged.json()["sha256"]), copy)
    assert len(load_vectors(copy, max_bytes=10**9).inputs) == samples


def test_selftest_limit_is_a_setting_and_other_bodies_keep_theirs(
    client: TestClient, ctx: ServerContext, admin: dict
) -> None:
    assert ServerSettings.model_fields["max_selftest_bytes"].default == 64 * 1024**2
    too_big = b"PK" + b"\0" * (ctx.settings.max_selftest_bytes + 1)
    answer = client.put("/v1/releases/selftest", content=too_big, headers=admin | OCTET)
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"
    big_json = {"name": "x" * (ctx.settings.max_body_bytes + 10), "scopes": ["read"]}
    assert client.post("/v1/tokens", json=big_json, headers=admin).status_code == 413

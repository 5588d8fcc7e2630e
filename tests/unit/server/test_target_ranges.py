"""Issue 9, item 5: RFC 9110 ranges on target downloads, as data rows: single and suffix ranges are 206
with the right Content-Range, several ranges or a malformed header are ignored (200 in full), a range past
the end is 416 with ``Content-Range: bytes */LEN``."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

DATA = bytes(range(256)) * 40  # 10240 bytes
SIZE = len(DATA)

# (Range header, status, served slice or None, Content-Range)
ROWS = [
    ("bytes=100-199", 206, slice(100, 200), f"bytes 100-199/{SIZE}"),
    ("bytes=5000-", 206, slice(5000, SIZE), f"bytes 5000-{SIZE - 1}/{SIZE}"),
    ("bytes=10000-99999", 206, slice(10000, SIZE), f"bytes 10000-{SIZE - 1}/{SIZE}"),
    ("bytes=-500", 206, slice(SIZE - 500, SIZE), f"bytes {SIZE - 500}-{SIZE - 1}/{SIZE}"),
    ("bytes=-1", 206, slice(SIZE - 1, SIZE), f"bytes {SIZE - 1}-{SIZE - 1}/{SIZE}"),
    (f"bytes=-{SIZE * 2}", 206, slice(0, SIZE), f"bytes 0-{SIZE - 1}/{SIZE}"),
    ("bytes=0-0", 206, slice(0, 1), f"bytes 0-0/{SIZE}"),
    ("bytes=0-99,200-299", 200, slice(0, SIZE), None),
    ("bytes=-500,0-1", 200, slice(0, SIZE), None),
    ("bytes=" + ",".join(f"{i}-{i}" for i in range(200)), 200, slice(0, SIZE), None),
    ("bytes=200-100", 200, slice(0, SIZE), None),
    ("bytes=-", 200, slice(0, SIZE), None),
    ("items=0-10", 200, slice(0, SIZE), None),
    ("garbage", 200, slice(0, SIZE), None),
    (f"bytes={SIZE}-", 416, None, f"bytes */{SIZE}"),
    (f"bytes={SIZE + 10}-{SIZE + 20}", 416, None, f"bytes */{SIZE}"),
    ("bytes=-0", 416, None, f"bytes */{SIZE}"),
]


@pytest.fixture
def target_url(client: TestClient, admin: dict) -> str:
    published = client.put(
        "/v1/releases",
        params={"model": "m", "version": "1", "profile": "p", "artifact_format": "raw"},
        content=DATA,
        headers=admin,
    ).json()["release"]
    return f"/tuf/targets/{published['sha256']}.{published['target_name']}"


@pytest.mark.parametrize(("header", "status", "part", "content_range"), ROWS, ids=[r[0][:40] for r in ROWS])
def test_range_rows(
    client: TestClient,
    target_url: str,
    header: str,
    status: int,
    part: slice | None,
    content_range: str | None,
) -> None:
    answer = client.get(target_url, headers={"Range": header})
    assert answer.status_code == status, answer.text[:200]
    assert answer.headers.get("content-range") == content_range
    if part is not None:
        assert answer.content == DATA[part]
        assert int(answer.headers["content-length"]) == len(DATA[part])

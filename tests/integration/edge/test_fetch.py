"""Integration tests of ota.edge.fetch against a real local HTTP server that cuts, stalls and lies."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from ota.edge.config import AgentConfig
from ota.edge.errors import (
    DownloadTooLargeError,
    HashMismatchError,
    HttpStatusError,
    RetriesExhaustedError,
    SlowRetrievalError,
)
from ota.edge.fetch import Fetcher

from .conftest import Behaviour, FaultyServer


def _fetcher(sleeps: list[float] | None = None, **overrides) -> Fetcher:
    config = AgentConfig(retry_base_s=0.01, retry_cap_s=0.05, read_timeout_s=2.0, **overrides)
    recorder = sleeps if sleeps is not None else []
    return Fetcher(config=config, rng=random.Random(7), sleep=recorder.append)


def test_resume_after_cuts_downloads_at_most_five_percent_twice(faulty_server: FaultyServer, tmp_path):
    data = os.urandom(4 * 1024 * 1024)
    url = faulty_server.add("model.onnx", data, Behaviour(cut_after=700_000, cut_times=5))
    fetcher = _fetcher()
    stats = fetcher.fetch(
        url, tmp_path / "model.onnx", length=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    assert (tmp_path / "model.onnx").read_bytes() == data
    sent = faulty_server.sent("model.onnx")
    duplicated = (sent - len(data)) / len(data)
    print(f"served {sent} bytes for {len(data)}: {duplicated:.2%} twice, {stats.retries} cuts")
    assert stats.retries == 5
    assert duplicated <= 0.05
    assert stats.bytes_transferred == sent
    assert fetcher.total_bytes_transferred == sent


def test_partial_file_from_an_earlier_run_is_resumed_with_range(faulty_server: FaultyServer, tmp_path):
    data = os.urandom(300_000)
    url = faulty_server.add("t.bin", data)
    (tmp_path / "t.bin.part").write_bytes(data[:100_000])
    stats = _fetcher().fetch(
        url, tmp_path / "t.bin", length=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    assert stats.resumed_from == 100_000
    assert faulty_server.sent("t.bin") == 200_000
    assert (tmp_path / "t.bin").read_bytes() == data


def test_corrupted_cached_partial_is_discarded_and_downloaded_again(faulty_server: FaultyServer, tmp_path):
    data = os.urandom(300_000)
    url = faulty_server.add("t.bin", data)
    (tmp_path / "t.bin.part").write_bytes(os.urandom(100_000))  # a corrupted cache, not our bytes
    stats = _fetcher().fetch(
        url, tmp_path / "t.bin", length=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    assert (tmp_path / "t.bin").read_bytes() == data
    assert stats.bytes_transferred == 200_000 + 300_000  # the resumed tail, then the whole file once more


def test_server_ignoring_range_restarts_cleanly(faulty_server: FaultyServer, tmp_path):
    data = os.urandom(50_000)
    url = faulty_server.add("t.bin", data, Behaviour(ignore_range=True))
    (tmp_path / "t.bin.part").write_bytes(data[:10_000])
    _fetcher().fetch(url, tmp_path / "t.bin", length=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert (tmp_path / "t.bin").read_bytes() == data


def test_wrong_hash_is_refused_and_partial_deleted(faulty_server: FaultyServer, tmp_path):
    data = os.urandom(10_000)
    url = faulty_server.add("t.bin", data)
    with pytest.raises(HashMismatchError) as info:
        _fetcher().fetch(url, tmp_path / "t.bin", length=len(data), sha256="0" * 64)
    assert info.value.attack
    assert not (tmp_path / "t.bin").exists()
    assert not (tmp_path / "t.bin.part").exists()


def test_endless_data_is_capped_at_the_declared_length(faulty_server: FaultyServer, tmp_path):
    data = os.urandom(10_000)
    url = faulty_server.add("t.bin", data, Behaviour(endless=True))
    fetcher = _fetcher()
    with pytest.raises(DownloadTooLargeError) as info:
        fetcher.fetch(url, tmp_path / "t.bin", length=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert info.value.attack
    assert not (tmp_path / "t.bin").exists()
    assert (tmp_path / "t.bin.part").stat().st_size <= len(data)
    # The fetcher stopped reading soon after the cap: far less than the 13 MB the server tries to push.
    assert fetcher.total_bytes_transferred < len(data) + 1024 * 1024


def test_declared_length_above_the_limit_is_refused_before_any_request(faulty_server: FaultyServer, tmp_path):
    url = faulty_server.add("t.bin", b"x")
    with pytest.raises(DownloadTooLargeError):
        _fetcher(max_download_bytes=1000).fetch(url, tmp_path / "t.bin", length=1001, sha256="0" * 64)
    assert faulty_server.requests == []


def test_slow_retrieval_is_refused(faulty_server: FaultyServer, tmp_path):
    data = os.urandom(2000)
    url = faulty_server.add("t.bin", data, Behaviour(trickle_delay_s=0.01))
    fetcher = _fetcher(min_download_rate_bps=10_000, slow_retrieval_grace_s=0.3)
    with pytest.raises(SlowRetrievalError) as info:
        fetcher.fetch(url, tmp_path / "t.bin", length=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert info.value.attack
    assert not (tmp_path / "t.bin").exists()


def test_500_answers_back_off_exponentially_with_a_cap(faulty_server: FaultyServer, tmp_path):
    data = os.urandom(1000)
    url = faulty_server.add("t.bin", data, Behaviour(fail_first=6))
    sleeps: list[float] = []
    fetcher = Fetcher(
        config=AgentConfig(retry_base_s=1.0, retry_cap_s=8.0, max_download_retries=10),
        rng=random.Random(1),
        sleep=sleeps.append,
    )
    fetcher.fetch(url, tmp_path / "t.bin", length=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert len(sleeps) == 6
    # Full jitter: each wait is in [0, min(cap, base·2^n)], never above the cap.
    for attempt, wait in enumerate(sleeps, start=1):
        assert 0 <= wait <= min(8.0, 2.0**attempt)
    assert max(sleeps) <= 8.0
    assert sum(sleeps) > 0


def test_retries_are_capped(faulty_server: FaultyServer, tmp_path):
    url = faulty_server.add("t.bin", b"abc", Behaviour(fail_first=100))
    sleeps: list[float] = []
    with pytest.raises(RetriesExhaustedError):
        _fetcher(sleeps, max_download_retries=3).fetch(url, tmp_path / "t.bin", length=3, sha256="0" * 64)
    assert len(sleeps) == 4


def test_404_is_not_retried(faulty_server: FaultyServer, tmp_path):
    sleeps: list[float] = []
    with pytest.raises(HttpStatusError) as info:
        _fetcher(sleeps).fetch(faulty_server.url("missing"), tmp_path / "t.bin", length=3, sha256="0" * 64)
    assert info.value.status_code == 404
    assert sleeps == []

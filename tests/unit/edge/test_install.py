"""Unit tests of ota.edge.install.Installer with an in-memory HTTP transport (no network).

A fake delta format (``FAKE`` + zstd of the new file, checked against the base's hash) stands in for
``ota.core.delta`` so these tests pin the installer's behaviour, not the delta engine's.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import httpx
import pytest
import zstandard

from ota.core.files import atomic_write_bytes
from ota.core.manifest import ReportStatus
from ota.edge.config import AgentConfig
from ota.edge.fetch import Fetcher, make_client
from ota.edge.health import HealthResult
from ota.edge.install import Installer, InstallEvent
from ota.edge.state import ArtifactRef, Phase, UpdatePlan


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_patch(base: bytes, new: bytes) -> bytes:
    return b"FAKE" + bytes.fromhex(sha(base)) + zstandard.ZstdCompressor().compress(new)


def fake_apply(base: Path | None, patch: Path, out: Path, *, max_output_bytes: int | None = None) -> None:
    raw = patch.read_bytes()
    if not raw.startswith(b"FAKE") or base is None or raw[4:36] != bytes.fromhex(sha(base.read_bytes())):
        raise ValueError("wrong base or not a patch")
    data = zstandard.ZstdDecompressor().decompress(raw[36:], max_output_size=max_output_bytes or 0)
    atomic_write_bytes(out, data)


class Files:
    """In-memory 'server' for httpx.MockTransport; counts bytes served per path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.served: dict[str, int] = {}

    def add(self, name: str, data: bytes) -> ArtifactRef:
        self.files[f"/{name}"] = data
        return ArtifactRef(name=name, url=f"http://repo.test/{name}", length=len(data), sha256=sha(data))

    def handler(self, request: httpx.Request) -> httpx.Response:
        data = self.files.get(request.url.path)
        if data is None:
            return httpx.Response(404)
        start = 0
        if request.headers.get("range"):
            start = int(request.headers["range"].split("=")[1].rstrip("-"))
        body = data[start:]
        self.served[request.url.path] = self.served.get(request.url.path, 0) + len(body)
        headers = {"content-length": str(len(body))}
        if start:
            headers["content-range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return httpx.Response(206 if start else 200, stream=httpx.ByteStream(body), headers=headers)


class Harness:
    def __init__(self, root: Path, *, healthy: bool = True, **config_overrides) -> None:
        self.root = root
        self.files = Files()
        self.events: list[InstallEvent] = []
        self.health_calls: list[tuple[Path, Path | None]] = []
        self.healthy = healthy
        config = AgentConfig(retry_base_s=0.001, retry_cap_s=0.002, **config_overrides)
        fetcher = Fetcher(
            config=config,
            client=make_client(config, transport=httpx.MockTransport(self.files.handler)),
            rng=random.Random(0),
            sleep=lambda _s: None,
        )
        self.installer = Installer(
            state_dir=root,
            config=config,
            fetcher=fetcher,
            health_check=self.health,
            apply_delta=fake_apply,
            on_event=self.events.append,
        )
        self.installer.startup()

    def health(self, model: Path, vectors: Path | None, budget: float | None) -> HealthResult:
        self.health_calls.append((model, vectors))
        if self.healthy:
            return HealthResult(ok=True, stage="ok")
        return HealthResult(ok=False, stage="selftest", reason="top-1 disagrees")

    def statuses(self) -> list[ReportStatus]:
        return [event.status for event in self.events]


def plan_for(target: ArtifactRef, version: str, **kwargs) -> UpdatePlan:
    return UpdatePlan(target=target, version=version, **kwargs)


def test_first_install_commits_and_points_current(tmp_path):
    h = Harness(tmp_path)
    model = os.urandom(5000)
    outcome = h.installer.install(plan_for(h.files.add("m/1.onnx", model), "1"))
    assert outcome.status is ReportStatus.COMMITTED
    state = h.installer.state()
    assert state.phase is Phase.COMMITTED and state.committed_slot == "a"
    assert (tmp_path / "current" / "model.onnx").read_bytes() == model
    assert h.statuses() == [
        ReportStatus.DOWNLOADING,
        ReportStatus.DOWNLOADED,
        ReportStatus.INSTALLED,
        ReportStatus.COMMITTED,
    ]
    assert outcome.bytes_downloaded == len(model)


def test_delta_is_used_when_the_base_is_installed(tmp_path):
    h = Harness(tmp_path)
    old, new = os.urandom(20_000), os.urandom(20_000)
    h.installer.install(plan_for(h.files.add("m/1.onnx", old), "1"))
    patch = h.files.add("m/1-2.patch", make_patch(old, new))
    outcome = h.installer.install(
        plan_for(h.files.add("m/2.onnx", new), "2", delta=patch, delta_base_sha256=sha(old))
    )
    assert outcome.status is ReportStatus.COMMITTED and outcome.used_delta
    assert "/m/2.onnx" not in h.files.served
    assert (tmp_path / "current" / "model.onnx").read_bytes() == new
    assert (tmp_path / "slots" / "a" / "model.onnx").read_bytes() == old  # previous slot kept


def test_delta_for_another_base_takes_the_full_target(tmp_path):
    h = Harness(tmp_path)
    old, new = os.urandom(1000), os.urandom(1000)
    h.installer.install(plan_for(h.files.add("m/1.onnx", old), "1"))
    patch = h.files.add("m/0-2.patch", make_patch(b"other", new))
    outcome = h.installer.install(
        plan_for(h.files.add("m/2.onnx", new), "2", delta=patch, delta_base_sha256=sha(b"other"))
    )
    assert outcome.status is ReportStatus.COMMITTED and not outcome.used_delta
    assert "/m/0-2.patch" not in h.files.served


@pytest.mark.parametrize("fallback", [True, False])
def test_corrupt_delta_falls_back_or_waits_by_policy(tmp_path, fallback):
    h = Harness(tmp_path, allow_full_fallback=fallback)
    old, new = os.urandom(1000), os.urandom(1000)
    h.installer.install(plan_for(h.files.add("m/1.onnx", old), "1"))
    # Signed correctly, but the patch itself does not reconstruct the target (a broken publish).
    patch = h.files.add("m/1-2.patch", make_patch(old, os.urandom(1000)))
    outcome = h.installer.install(
        plan_for(h.files.add("m/2.onnx", new), "2", delta=patch, delta_base_sha256=sha(old))
    )
    if fallback:
        assert outcome.status is ReportStatus.COMMITTED and not outcome.used_delta
        assert h.files.served["/m/2.onnx"] == len(new)
        assert (tmp_path / "current" / "model.onnx").read_bytes() == new
    else:
        assert outcome.status is ReportStatus.FAILED
        assert "fallback is disabled" in (outcome.reason or "")
        assert "/m/2.onnx" not in h.files.served
        assert (tmp_path / "current" / "model.onnx").read_bytes() == old
        assert h.installer.state().phase is Phase.IDLE


def test_health_failure_rolls_back_and_reports(tmp_path):
    h = Harness(tmp_path)
    old = os.urandom(1000)
    h.installer.install(plan_for(h.files.add("m/1.onnx", old), "1"))
    h.healthy = False
    outcome = h.installer.install(plan_for(h.files.add("m/2.onnx", os.urandom(1000)), "2"))
    assert outcome.status is ReportStatus.ROLLED_BACK
    assert "top-1" in (outcome.reason or "")
    state = h.installer.state()
    assert state.phase is Phase.ROLLED_BACK and state.active_slot == "a"
    assert state.committed is not None and state.committed.version == "1"
    assert (tmp_path / "current" / "model.onnx").read_bytes() == old
    assert h.statuses()[-2:] == [ReportStatus.HEALTH_CHECK_FAILED, ReportStatus.ROLLED_BACK]


def test_wrong_hash_is_an_attack_and_keeps_the_old_model(tmp_path):
    h = Harness(tmp_path)
    old = os.urandom(1000)
    h.installer.install(plan_for(h.files.add("m/1.onnx", old), "1"))
    good = h.files.add("m/2.onnx", os.urandom(1000))
    h.files.files["/m/2.onnx"] = os.urandom(1000)  # the server now serves other bytes
    outcome = h.installer.install(plan_for(good, "2"))
    assert outcome.status is ReportStatus.FAILED and outcome.attack
    assert h.events[-1].attack
    assert (tmp_path / "current" / "model.onnx").read_bytes() == old
    assert h.installer.state().active_slot == "a"


def test_selftest_vectors_are_downloaded_into_the_trial_slot(tmp_path):
    h = Harness(tmp_path)
    vectors = h.files.add("m/1.selftest.npz", b"vectors")
    h.installer.install(plan_for(h.files.add("m/1.onnx", b"model"), "1", selftest=vectors))
    model, vectors_path = h.health_calls[-1]
    assert vectors_path is not None and vectors_path.read_bytes() == b"vectors"
    assert vectors_path.parent == model.parent


def test_boot_counter_rolls_back_a_model_that_keeps_crashing(tmp_path):
    h = Harness(tmp_path, max_trial_boots=3)
    old = os.urandom(100)
    h.installer.install(plan_for(h.files.add("m/1.onnx", old), "1"))

    def crash(point: str) -> None:
        if point == "health-check":
            raise KeyboardInterrupt  # stands in for the process dying while the model runs

    h.installer._fault = crash
    with pytest.raises(KeyboardInterrupt):
        h.installer.install(plan_for(h.files.add("m/2.onnx", os.urandom(100)), "2"))
    for boot in (1, 2):
        state = h.installer.startup()
        assert state.phase is Phase.INSTALLED_PENDING_HEALTH and state.trial_boots == boot
        with pytest.raises(KeyboardInterrupt):
            h.installer.resume()
    state = h.installer.startup()
    assert state.phase is Phase.ROLLED_BACK
    assert "restarted 3 times" in (state.last_outcome or "")
    assert state.active_slot == "a"
    assert (tmp_path / "current" / "model.onnx").read_bytes() == old
    assert h.installer.resume() is None


def test_install_while_an_update_is_in_flight_is_refused(tmp_path):
    from ota.edge.errors import StateError

    h = Harness(tmp_path)
    h.installer._fault = lambda point: (
        (_ for _ in ()).throw(KeyboardInterrupt) if point == "downloaded" else None
    )
    with pytest.raises(KeyboardInterrupt):
        h.installer.install(plan_for(h.files.add("m/1.onnx", b"x"), "1"))
    with pytest.raises(StateError, match="in flight"):
        h.installer.install(plan_for(h.files.add("m/2.onnx", b"y"), "2"))
    h.installer._fault = None
    outcome = h.installer.resume()
    assert outcome is not None and outcome.status is ReportStatus.COMMITTED


def test_models_from_delta_and_full_download_are_both_private(tmp_path):
    """Both land 0600 (issue 9, E: state files are private), whichever way they were made."""

    def private_apply(
        base: Path | None, patch: Path, out: Path, *, max_output_bytes: int | None = None
    ) -> None:
        # Like the real delta engine, which writes through mkstemp: the result starts 0600.
        fake_apply(base, patch, out, max_output_bytes=max_output_bytes)
        out.chmod(0o600)

    h = Harness(tmp_path)
    h.installer._apply_delta = private_apply
    old, new = os.urandom(20_000), os.urandom(20_000)
    h.installer.install(plan_for(h.files.add("m/1.onnx", old), "1"))
    full = tmp_path / "current" / "model.onnx"
    assert full.stat().st_mode & 0o777 == 0o600
    patch = h.files.add("m/1-2.patch", make_patch(old, new))
    outcome = h.installer.install(
        plan_for(h.files.add("m/2.onnx", new), "2", delta=patch, delta_base_sha256=sha(old))
    )
    assert outcome.status is ReportStatus.COMMITTED and outcome.used_delta
    assert full.read_bytes() == new
    assert full.stat().st_mode & 0o777 == 0o600

"""Attack suite: a compromised server or a man in the middle serves bad data; the agent must refuse it,
keep its current model, and report an attack.

One table of rows, two tiers: here against the real server on a socket (uvicorn), and in
``tests/unit/edge/test_attacks_in_process.py`` against the same app in-process (no socket), which imports
these tests and overrides the ``ota_server`` fixture.

Each row starts from a device running release 1 (installed honestly from the real OTA server), then
offers release 2 through a :class:`Mitm` httpx transport that rewrites what the server sends. Forged
metadata and assignments are signed with the server's own keys where the attack needs valid signatures
(a compromised online key), so only the checks under test can catch them.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tuf.api.metadata import Metadata

from ota.core.manifest import Assignment, sign_assignment
from ota.edge.agent import Agent, PollResult
from ota.edge.config import AgentConfig
from ota.server.db import transaction
from ota.server.tuf_repo import ImageRepository

from .conftest import LiveServer
from .test_agent_server import PROFILE, linear_onnx

Rule = Callable[[httpx.Request, httpx.Response], httpx.Response | None]


@dataclass
class Mitm(httpx.BaseTransport):
    """Forwards to the real server; the first rule that returns a response replaces the real one."""

    inner: httpx.BaseTransport = field(default_factory=httpx.HTTPTransport)
    rules: list[Rule] = field(default_factory=list)
    rewrite_path: dict[str, str] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path in self.rewrite_path:
            request = httpx.Request(
                request.method, request.url.copy_with(path=self.rewrite_path[path]), headers=request.headers
            )
        if request.method == "POST" and path.endswith("/reports"):
            self.reports.append(json.loads(request.content)["signed"])
        response = self.inner.handle_request(request)
        if not self.rules:
            return response
        response.read()
        for rule in self.rules:
            replaced = rule(request, response)
            if replaced is not None:
                return replaced
        # The body was read for the rules: hand the client a fresh stream of it (it may stream the body).
        return httpx.Response(
            response.status_code, headers=response.headers, stream=httpx.ByteStream(response.content)
        )


def body(response: httpx.Response, content: bytes | Any, *, status: int = 200) -> httpx.Response:
    """A response with new content (streamable, without the old length)."""
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    headers = {k: v for k, v in response.headers.items() if k.lower() not in {"content-length", "etag"}}
    headers["content-length"] = str(len(data))
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(data))


@dataclass
class Scene:
    server: LiveServer
    agent: Agent
    mitm: Mitm
    v1: bytes
    v2: bytes
    release2: dict[str, Any]
    v1_assignment: bytes

    def sign_tuf(self, raw: bytes, role: str, **changes: Any) -> bytes:
        metadata = Metadata.from_bytes(raw)
        for name, value in changes.items():
            setattr(metadata.signed, name, value)
        metadata.signatures.clear()
        for signer in self.server.ctx.keyring.signers(role):
            metadata.sign(signer, append=True)
        return metadata.to_bytes()

    def forge_assignment(self, raw: bytes, **changes: Any) -> dict[str, Any]:
        signed = json.loads(raw)["signed"]
        signed.update(changes)
        return sign_assignment(Assignment.from_dict(signed), self.server.ctx.keyring.signer("director"))


def _is(path_part: str) -> Callable[[httpx.Request], bool]:
    return lambda request: path_part in request.url.path


@pytest.fixture
def scene(ota_server: LiveServer, tmp_path: Path) -> Scene:
    # The same rows run here over a socket and in tests/unit/edge/test_attacks_in_process.py in-process.
    mitm = Mitm(inner=ota_server.agent_transport())
    client = httpx.Client(transport=mitm, follow_redirects=True, timeout=httpx.Timeout(5.0, connect=5.0))
    config = AgentConfig(
        poll_interval_min_s=0.1,
        poll_interval_default_s=1,
        retry_base_s=0.01,
        retry_cap_s=0.05,
        max_download_retries=2,
        warmup_runs=1,
        latency_runs=3,
        ort_intra_op_threads=1,
        min_download_rate_bps=200_000,
        slow_retrieval_grace_s=0.3,
        read_timeout_s=2.0,
    )
    agent = Agent(
        server_url=ota_server.url,
        state_dir=tmp_path / "agent",
        config=config,
        provisioning_token=ota_server.provisioning_token,
        profile=PROFILE,
        client=client,
        rng=random.Random(0),
    )
    v1, v2 = linear_onnx(11, size=256), linear_onnx(12, size=256)
    release1 = ota_server.publish(v1, model="m", version="1", profile=PROFILE)["release"]
    ota_server.rollout(release1["id"])
    assert _poll_until(agent, {"installed"}).outcome == "installed"
    with ota_server.http() as http:
        token = agent._ensure_token()
        v1_assignment = http.get(
            f"/v1/devices/{agent.device_id}/assignment", headers={"Authorization": f"Bearer {token}"}
        ).content
    _poll_until(agent, {"up-to-date", "unchanged"})
    release2 = ota_server.publish(v2, model="m", version="2", profile=PROFILE)["release"]
    ota_server.rollout(release2["id"])
    agent._etag = None
    return Scene(ota_server, agent, mitm, v1, v2, release2, v1_assignment)


def _poll_until(agent: Agent, wanted: set[str], attempts: int = 15) -> PollResult:
    result = agent.poll_once()
    for _ in range(attempts):
        if result.outcome in wanted:
            return result
        result = agent.poll_once()
    raise AssertionError(f"never reached {wanted}: {result}")


def assert_refused(scene: Scene, result: PollResult, *, expect: str | None = None) -> None:
    state = scene.agent.installer.state()
    assert result.attack, result
    if expect is not None:
        assert expect.lower() in (result.detail or "").lower(), result.detail
    assert state.committed is not None and state.committed.version == "1"
    assert (scene.agent.state_dir / "current" / "model.onnx").read_bytes() == scene.v1
    attack_reports = [r for r in scene.mitm.reports if r["attack"]]
    assert attack_reports, "no attack report reached the server"


def _target_rule(change: Callable[[bytes], bytes]) -> Rule:
    def rule(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if "/tuf/targets/" in request.url.path and response.status_code in (200, 206):
            return body(response, change(response.content))
        return None

    return rule


def _metadata_rule(name: str, change: Callable[[Scene, bytes], bytes], scene: Scene) -> Rule:
    def rule(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if request.url.path.endswith(name) and response.status_code == 200:
            return body(response, change(scene, response.content))
        return None

    return rule


def _assignment_rule(scene: Scene, forge: Callable[[Scene, bytes], Any]) -> Rule:
    def rule(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if request.url.path.endswith("/assignment"):
            real = response.content if response.status_code == 200 else scene.v1_assignment
            forged = forge(scene, real)
            return body(response, forged if isinstance(forged, bytes) else json.dumps(forged).encode())
        return None

    return rule


PAST = datetime.now(UTC) - timedelta(days=1)


def _expired(role: str) -> Callable[[Scene, bytes], bytes]:
    return lambda scene, raw: scene.sign_tuf(raw, role, expires=PAST)


def _next_version_root(scene: Scene, raw: bytes) -> bytes:
    return scene.sign_tuf(raw, "root", expires=PAST)


# (row id, how to attack, what the refusal should mention)
def _rows() -> list[tuple[str, Callable[[Scene], None], str | None]]:
    def target_hash(s: Scene) -> None:
        s.mitm.rules.append(_target_rule(lambda data: bytes(len(data))))

    def endless_announced(s: Scene) -> None:
        s.mitm.rules.append(_target_rule(lambda data: data + bytes(1_000_000)))

    def endless_streamed(s: Scene) -> None:
        def rule(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
            if "/tuf/targets/" not in request.url.path:
                return None
            data = response.content

            class Endless(httpx.SyncByteStream):
                def __iter__(self):
                    yield data
                    for _ in range(10_000):  # 640 MB if nobody stops reading
                        yield bytes(65536)

            headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
            return httpx.Response(response.status_code, headers=headers, stream=Endless())

        s.mitm.rules.append(rule)

    def slow(s: Scene) -> None:
        def rule(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
            if "/tuf/targets/" not in request.url.path:
                return None
            data = response.content

            class Trickle(httpx.SyncByteStream):
                def __iter__(self):
                    for offset in range(0, len(data), 64):
                        time.sleep(0.05)
                        yield data[offset : offset + 64]

            headers = dict(response.headers.items())
            return httpx.Response(response.status_code, headers=headers, stream=Trickle())

        s.mitm.rules.append(rule)

    def oversized_metadata(s: Scene) -> None:
        s.mitm.rules.append(
            _metadata_rule("timestamp.json", lambda _s, raw: raw[:-1] + b" " * 200_000 + raw[-1:], s)
        )

    def expired(role: str, filename: str) -> Callable[[Scene], None]:
        return lambda s: s.mitm.rules.append(_metadata_rule(filename, _expired(role), s))

    def expired_root(s: Scene) -> None:
        current = Metadata.from_bytes(_read(s, "root"))
        version = current.signed.version
        forged = s.sign_tuf(current.to_bytes(), "root", expires=PAST, version=version + 1)

        def rule(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
            if request.url.path.endswith(f"/{version + 1}.root.json"):
                return body(response, forged)
            return None

        s.mitm.rules.append(rule)

    def unsigned(s: Scene) -> None:
        def strip(_s: Scene, raw: bytes) -> bytes:
            document = json.loads(raw)
            document["signatures"] = []
            return json.dumps(document).encode()

        s.mitm.rules.append(_metadata_rule("timestamp.json", strip, s))

    def rollback_timestamp(s: Scene) -> None:
        old = _read(s, "timestamp")
        # Trust the newest timestamp first, then serve one with a lower version, validly signed.
        enrolment = s.agent.identity.load_enrolment()
        assert enrolment is not None
        s.agent._updater(enrolment)  # honest refresh
        lower = Metadata.from_bytes(old)
        forged = s.sign_tuf(old, "timestamp", version=max(1, lower.signed.version - 1))
        s.mitm.rules.append(_metadata_rule("timestamp.json", lambda _s, _raw: forged, s))

    def mix_and_match(s: Scene) -> None:
        latest = Metadata.from_bytes(_read(s, "targets")).signed.version
        s.mitm.rewrite_path[f"/tuf/metadata/{latest}.targets.json"] = (
            f"/tuf/metadata/{latest - 1}.targets.json"
        )

    def disagree(s: Scene) -> None:
        def forge(scene: Scene, raw: bytes) -> Any:
            signed = json.loads(raw)["signed"]
            target = dict(signed["target"], length=signed["target"]["length"] + 1)
            return scene.forge_assignment(raw, target=target, delta=None, counter=signed["counter"] + 1)

        s.mitm.rules.append(_assignment_rule(s, forge))

    def other_device(s: Scene) -> None:
        s.mitm.rules.append(
            _assignment_rule(s, lambda sc, raw: sc.forge_assignment(raw, device_id="dev-someone-else"))
        )

    def other_profile(s: Scene) -> None:
        s.mitm.rules.append(
            _assignment_rule(s, lambda sc, raw: sc.forge_assignment(raw, hardware_profile="gpu-x"))
        )

    def replay(s: Scene) -> None:
        # Accept the real release-2 assignment (higher counter) first, then replay release 1's.
        s.mitm.rules.append(_target_rule(lambda data: bytes(len(data))))  # keep the device on release 1
        s.agent.poll_once()
        s.mitm.rules.clear()
        s.agent._etag = None
        s.mitm.rules.append(_assignment_rule(s, lambda sc, _raw: sc.v1_assignment))
        s.mitm.reports.clear()

    def traversal(s: Scene) -> None:
        def forge(scene: Scene, raw: bytes) -> Any:
            signed = json.loads(raw)["signed"]
            target = dict(signed["target"], name="../../../etc/passwd")
            return scene.forge_assignment(raw, target=target, delta=None, counter=signed["counter"] + 1)

        s.mitm.rules.append(_assignment_rule(s, forge))

    def bad_signature(s: Scene) -> None:
        def forge(_scene: Scene, raw: bytes) -> Any:
            document = json.loads(raw)
            document["signed"]["counter"] += 1000
            return document

        s.mitm.rules.append(_assignment_rule(s, forge))

    return [
        ("target-hash-mismatch", target_hash, "sha256"),
        ("endless-data-announced", endless_announced, "announces"),
        ("endless-data-streamed", endless_streamed, "more than the declared length"),
        ("slow-retrieval", slow, "B/s"),
        ("oversized-metadata", oversized_metadata, "TUF"),
        ("expired-timestamp", expired("timestamp", "timestamp.json"), "Expired"),
        ("expired-snapshot", expired("snapshot", ".snapshot.json"), "Expired"),
        ("expired-targets", expired("targets", ".targets.json"), "Expired"),
        ("expired-root", expired_root, "Expired"),
        ("below-threshold-signatures", unsigned, "TUF"),
        ("rollback-timestamp", rollback_timestamp, "TUF"),
        ("mix-and-match", mix_and_match, "TUF"),
        ("director-tuf-disagree", disagree, "disagree"),
        ("other-device-id", other_device, "device"),
        ("other-hardware-profile", other_profile, "profile"),
        ("replayed-assignment", replay, "counter"),
        ("path-traversal-name", traversal, "traversal"),
        ("director-signature", bad_signature, "signature"),
    ]


def _read(scene: Scene, role: str) -> bytes:
    """The newest metadata of ``role`` as the server stores it."""
    with scene.server.ctx.sessions() as session:
        data = scene.server.ctx.repository.read(session, role)
    assert data is not None
    return bytes(data)


ROWS = _rows()


@pytest.mark.parametrize(("row", "attack", "expect"), ROWS, ids=[r[0] for r in ROWS])
def test_attack_is_refused_and_reported(scene: Scene, row: str, attack, expect: str | None):
    attack(scene)
    result = scene.agent.poll_once()
    print(f"{row}: {result.outcome} attack={result.attack} — {result.detail}")
    assert_refused(scene, result, expect=expect)


# ---- freeze: a genuine timestamp, replayed after it expired -----------------------------------------


def _sign_timestamp(scene: Scene, lifetime_s: int | None = None) -> bytes:
    """Have the server sign a new timestamp (with its normal lifetime, or ``lifetime_s``); return it."""
    repository = scene.server.ctx.repository
    if lifetime_s is not None:  # the same keys and code, only a shorter timestamp lifetime
        repository = ImageRepository(
            keyring=repository.keyring, expiries=replace(repository.expiries, timestamp=lifetime_s)
        )
    with transaction(scene.server.ctx.sessions) as session:
        assert repository.refresh_online_roles(session, force=True) == ["timestamp"]
    return _read(scene, "timestamp")


def test_freeze_an_old_timestamp_served_after_it_expires_is_refused(scene: Scene) -> None:
    """The freeze row, literally: nothing here is forged or re-signed by the test.

    The server signs a timestamp that lives one hour, and the device refreshes against it. The server
    then moves on and signs a newer one. Two hours later (the device's clock is moved on) an attacker
    still serves the old one: a valid signature, the very version the device trusts, but expired.
    """
    enrolment = scene.agent.identity.load_enrolment()
    assert enrolment is not None
    old = _sign_timestamp(scene, lifetime_s=3600)
    old_version = Metadata.from_bytes(old).signed.version
    scene.agent._updater(enrolment)  # honest refresh: the device now trusts the one-hour timestamp
    newer = _sign_timestamp(scene)
    assert Metadata.from_bytes(newer).signed.version == old_version + 1
    scene.mitm.rules.append(_metadata_rule("timestamp.json", lambda _s, _raw: old, scene))

    # Within its hour the replayed timestamp is still valid: serving it is no attack yet.
    assert scene.agent._updater(enrolment).get_targetinfo(scene.release2["target_name"]) is not None

    scene.agent.clock_offset_s = 2 * 3600  # two hours later; the director's assignment lives 24 h
    result = scene.agent.poll_once()
    print(f"freeze: {result.outcome} attack={result.attack} — {result.detail}")
    assert_refused(scene, result, expect="expired")

    # The honest server at the same device time is accepted: the refusal was the freeze, not the clock.
    # (A fresh poll would not retry: a target refused for verification waits for a new assignment.)
    scene.mitm.rules.clear()
    honest = scene.agent._updater(enrolment)
    assert honest.get_targetinfo(scene.release2["target_name"]) is not None


# ---- an older release than the installed one: refused without the operator rollback flag -------------


def _on_release_2(scene: Scene) -> bytes:
    """Let the device install release 2 honestly; return the real (signed) release-2 assignment."""
    assert _poll_until(scene.agent, {"installed"}).outcome == "installed"
    state = scene.agent.installer.state()
    assert state.committed is not None and state.committed.version == "2"
    with scene.server.http() as http:
        token = scene.agent._ensure_token()
        return http.get(
            f"/v1/devices/{scene.agent.device_id}/assignment",
            headers={"Authorization": f"Bearer {token}"},
        ).content


def _older_release(scene: Scene, v2_assignment: bytes, *, rollback: bool) -> Rule:
    """A director-signed assignment (compromised director key) sending the device back to release 1."""
    v1 = json.loads(scene.v1_assignment)["signed"]
    v2 = json.loads(v2_assignment)["signed"]
    assert v1["release_seq"] < v2["release_seq"]
    changes: dict[str, Any] = {
        "target": v1["target"],
        "delta": None,
        "release_id": v1["release_id"],
        "release_seq": v1["release_seq"],
        "counter": v2["counter"] + 1,  # a fresh decision, so the counter check cannot be what refuses it
    }
    if rollback:
        changes["rollback"] = True
    forged = scene.forge_assignment(v2_assignment, **changes)
    return _assignment_rule(scene, lambda _s, _raw: forged)


def test_older_release_without_rollback_flag_is_refused(scene: Scene) -> None:
    v2_assignment = _on_release_2(scene)
    scene.mitm.reports.clear()
    scene.agent._etag = None
    scene.mitm.rules.append(_older_release(scene, v2_assignment, rollback=False))
    result = scene.agent.poll_once()
    print(f"older-release-without-rollback-flag: {result.outcome} attack={result.attack} — {result.detail}")
    assert result.attack and "rollback flag" in (result.detail or ""), result
    state = scene.agent.installer.state()
    assert state.committed is not None and state.committed.version == "2"
    assert (scene.agent.state_dir / "current" / "model.onnx").read_bytes() == scene.v2
    assert [r for r in scene.mitm.reports if r["attack"]], "no attack report reached the server"


def test_older_release_with_rollback_flag_is_installed(scene: Scene) -> None:
    v2_assignment = _on_release_2(scene)
    scene.agent._etag = None
    scene.mitm.rules.append(_older_release(scene, v2_assignment, rollback=True))
    result = _poll_until(scene.agent, {"installed"})
    assert not result.attack
    state = scene.agent.installer.state()
    assert state.committed is not None and state.committed.version == "1"
    assert (scene.agent.state_dir / "current" / "model.onnx").read_bytes() == scene.v1


def test_operator_rollback_brings_the_device_back_to_release_1(scene: Scene) -> None:
    _on_release_2(scene)
    rollout = next(r for r in scene.server.get("/v1/rollouts") if r["release_id"] == scene.release2["id"])
    with scene.server.http() as http:
        answer = http.post(f"/v1/rollouts/{rollout['id']}/rollback", headers=scene.server.admin)
    assert answer.status_code == 200, answer.text
    result = _poll_until(scene.agent, {"installed"})
    assert not result.attack
    state = scene.agent.installer.state()
    assert state.committed is not None and state.committed.version == "1"
    assert (scene.agent.state_dir / "current" / "model.onnx").read_bytes() == scene.v1

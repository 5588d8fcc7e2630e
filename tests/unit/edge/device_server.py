"""An in-memory simulator of the OTA server's device side, for unit tests of the agent (no network).

Like python-tuf's ``tests/repository_simulator.py``: it builds a real signed TUF repository (one Ed25519 key
for every role) and a director key in memory, and answers the agent's requests through an
``httpx.MockTransport``: enrolment, challenge, token, the signed assignment, reports, TUF metadata and the
model target. A test replaces the answer of any endpoint with ``sim.override[endpoint] = handler``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from ota.core.manifest import Assignment, TargetRef, format_time, sign_assignment
from ota.core.signing import generate_ed25519_signer, key_to_dict
from ota.core.targets import ModelTargetCustom, tuf_fields
from ota.edge.agent import Agent
from ota.edge.config import AgentConfig
from ota.edge.health import HealthResult

PROFILE = "test-profile"
DEVICE_ID = "dev-fuzz"
BASE = "http://ota.test"
TARGET_NAME = "m/1.onnx"
ENDPOINTS = ("enrol", "challenge", "token", "assignment", "reports", "metadata", "target")

Handler = Callable[[httpx.Request], httpx.Response]


class EndlessStream(httpx.SyncByteStream):
    """A body that never ends (64 KiB chunks); counts what the client pulled."""

    def __init__(self, chunk: bytes = b"x" * 65536) -> None:
        self.chunk = chunk
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.pulled += len(self.chunk)
            yield self.chunk


@dataclass
class DeviceServerSimulator:
    """A director and an image repository answering one device."""

    model: bytes = b"model-bytes" * 100
    override: dict[str, Handler] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    reports: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.director = generate_ed25519_signer()
        self.tuf_signer = CryptoSigner.generate_ed25519()
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
        root = Root(expires=expires)
        for role in ("root", "timestamp", "snapshot", "targets"):
            root.add_key(self.tuf_signer.public_key, role)
        targets = Targets(expires=expires)
        target = TargetFile.from_data(TARGET_NAME, self.model)
        # The custom fields the real server signs (ota.core.targets); the agent refuses a target without them.
        target.unrecognized_fields.update(
            tuf_fields(ModelTargetCustom(model="m", version="1", profile=PROFILE, release_id="r1"))
        )
        targets.targets[TARGET_NAME] = target
        snapshot = Snapshot(expires=expires)
        snapshot.meta["targets.json"] = MetaFile(version=1)
        timestamp = Timestamp(expires=expires)
        timestamp.snapshot_meta = MetaFile(version=1)
        self.metadata: dict[str, bytes] = {}
        for name, signed in (
            ("1.root.json", root),
            ("1.targets.json", targets),
            ("1.snapshot.json", snapshot),
            ("timestamp.json", timestamp),
        ):
            document = Metadata(signed)
            document.sign(self.tuf_signer)
            self.metadata[name] = document.to_bytes()
        self.root = json.loads(self.metadata["1.root.json"])
        self.sha256 = target.hashes["sha256"]
        self.expires = expires
        self.reassign(counter=1)

    def reassign(self, *, counter: int) -> None:
        """Have the director sign the same target again under a new counter (a new decision)."""
        self.assignment = sign_assignment(
            Assignment(
                device_id=DEVICE_ID,
                hardware_profile=PROFILE,
                counter=counter,
                expires=format_time(self.expires),
                poll_interval=60,
                poll_jitter=0,
                target=TargetRef(name=TARGET_NAME, length=len(self.model), sha256=self.sha256),
                release_id="r1",
            ),
            self.director,
        )

    def endpoint(self, request: httpx.Request) -> str:
        path = request.url.path
        if path == "/v1/enrol":
            return "enrol"
        if path.startswith("/tuf/metadata/"):
            return "metadata"
        if path.startswith("/tuf/targets/"):
            return "target"
        return path.rsplit("/", 1)[-1]

    def handle(self, request: httpx.Request) -> httpx.Response:
        endpoint = self.endpoint(request)
        self.calls[endpoint] = self.calls.get(endpoint, 0) + 1
        if endpoint in self.override:
            return self.override[endpoint](request)
        return self.honest(request)

    def honest(self, request: httpx.Request) -> httpx.Response:
        endpoint = self.endpoint(request)
        later = format_time(datetime.now(UTC) + timedelta(hours=1))
        if endpoint == "enrol":
            return httpx.Response(
                201,
                json={
                    "device_id": DEVICE_ID,
                    "state": "accepted",
                    "tuf_root": self.root,
                    "director_key": key_to_dict(self.director.public_key),
                    "metadata_url": f"{BASE}/tuf/metadata/",
                    "targets_url": f"{BASE}/tuf/targets/",
                    "poll_interval": 60,
                },
            )
        if endpoint == "challenge":
            return httpx.Response(200, json={"nonce": "n" * 32, "expires": later})
        if endpoint == "token":
            return httpx.Response(200, json={"token": "t" * 32, "expires": later})
        if endpoint == "assignment":
            return httpx.Response(
                200, json=self.assignment, headers={"etag": '"a1"', "x-poll-interval": "60"}
            )
        if endpoint == "reports":
            self.reports.append(json.loads(request.content)["signed"])
            return httpx.Response(200, json={"accepted": True})
        if endpoint == "metadata":
            name = request.url.path.rsplit("/", 1)[-1]
            data = self.metadata.get(name)
            return httpx.Response(200, content=data) if data is not None else httpx.Response(404)
        if endpoint == "target":
            return httpx.Response(200, stream=httpx.ByteStream(self.model))
        return httpx.Response(404)


def healthy(model: Path, vectors: Path | None, budget: float | None) -> HealthResult:
    return HealthResult(ok=True, stage="ok")


def make_agent(state_dir: Path, sim: DeviceServerSimulator, *, config: AgentConfig | None = None) -> Agent:
    """A fresh agent talking to ``sim`` through a mock transport, with a health check that passes."""
    return Agent(
        server_url=BASE,
        state_dir=state_dir,
        config=config or AgentConfig(poll_interval_min_s=5, retry_base_s=1, retry_cap_s=60),
        provisioning_token="prov",
        profile=PROFILE,
        device_id=DEVICE_ID,
        client=httpx.Client(transport=httpx.MockTransport(sim.handle)),
        health_check=healthy,
        rng=random.Random(0),
    )

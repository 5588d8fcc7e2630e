"""MQTT push nudges against a real Mosquitto broker, the real OTA server and real agents.

Each test starts its own ``mosquitto`` on a free port (so one test can kill and restart it without touching
a system broker) and uses its own topic prefix. Covered: a nudge on each assignment-changing rollout event
(and none on pause/resume), forged and garbage nudges that install nothing (only the signed assignment
does), a broker restart while agents and the server are connected, and the documented ACL
(docker/mosquitto/): a device reads only its own topics, a wrong password leaves it polling.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from ota.core.nudge import Nudge, device_topic, parse_nudge
from ota.edge.agent import Agent
from ota.edge.nudge import NudgeListener
from ota.server.nudges import MqttNudgePublisher, PahoSink
from ota.server.rollout_machine import in_cohort
from ota.server.testing import SimDevice
from ota.server.testing_broker import MosquittoProcess, free_port, mosquitto_binary

from .conftest import LiveServer, serve_ota
from .test_agent_server import PROFILE, linear_onnx, make_agent

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")
REPO = Path(__file__).resolve().parents[3]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    with MosquittoProcess(tmp_path / "broker") as process:
        yield process


@pytest.fixture
def prefix() -> str:
    return f"it-{secrets.token_hex(4)}"


def nudge_server(tmp_path: Path, broker: MosquittoProcess, prefix: str, **settings: Any):
    return serve_ota(
        tmp_path / "server",
        port=free_port(),
        mqtt_url=broker.url,
        mqtt_topic_prefix=prefix,
        mqtt_coalesce_seconds=0.2,
        **settings,
    )


class Recorder:
    """A plain MQTT client subscribed to ``<prefix>/#`` (and able to publish, like an attacker could)."""

    def __init__(self, url: str, prefix: str, *, username: str | None = None, password: str | None = None):
        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert self.subscribed.wait(10), "the recorder could not subscribe"

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def take(self) -> list[tuple[str, bytes]]:
        with self.lock:
            taken, self.messages = self.messages, []
        return taken

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_nudge_on_each_assignment_changing_event(tmp_path: Path, broker: MosquittoProcess, prefix: str):
    with nudge_server(tmp_path, broker, prefix) as server, server.http() as http:
        ids = [f"dev-{i:03d}" for i in range(40)]
        for device_id in ids:
            assert (
                SimDevice(device_id, profile=PROFILE).enrol(http, server.provisioning_token).status_code
                == 201
            )
        release = server.publish(linear_onnx(1), model="m", version="1", profile=PROFILE)["release"]
        recorder = Recorder(broker.url, prefix)

        def act(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
            answer = http.post(path, json=body, headers=server.admin)
            assert answer.status_code in (200, 201), answer.text
            return answer.json()

        def expect(wanted: set[str], reason: str) -> None:
            topics = {device_topic(prefix, d) for d in wanted}
            got: list[tuple[str, bytes]] = []
            deadline = time.monotonic() + 10
            while {t for t, _ in got} != topics and time.monotonic() < deadline:
                time.sleep(0.05)
                got += recorder.take()
            time.sleep(0.5)  # nothing more may follow
            got += recorder.take()
            assert sorted(t for t, _ in got) == sorted(topics), reason
            assert {parse_nudge(p).reason for _, p in got} <= {reason}

        soak = {"min_soak_seconds": 3600}
        phases = [{"percent": 10, **soak}, {"percent": 50, **soak}, {"percent": 100}]
        rollout = act("/v1/rollouts", {"release_id": release["id"], "phases": phases})["id"]

        def cohort(low: float, high: float) -> set[str]:
            return {d for d in ids if in_cohort(d, rollout, high) and not in_cohort(d, rollout, low)}

        expect(cohort(0, 10), "rollout.create")
        act(f"/v1/rollouts/{rollout}/advance")
        expect(cohort(10, 50), "rollout.advance")
        act(f"/v1/rollouts/{rollout}/pause")
        act(f"/v1/rollouts/{rollout}/resume")
        expect(set(), "pause and resume change no assignment")
        act(f"/v1/rollouts/{rollout}/abort")
        expect(cohort(0, 50), "rollout.abort")

        second = act("/v1/rollouts", {"release_id": release["id"], "phases": [{"percent": 100, **soak}]})[
            "id"
        ]
        expect(set(ids), "rollout.create")
        act(f"/v1/rollouts/{second}/advance")  # the last phase: completed, every device already has it
        expect(set(), "completion changes no assignment")
        act(f"/v1/rollouts/{second}/rollback")
        expect(set(ids), "rollout.rollback")
        recorder.close()


def run_agent(agent: Agent, listener: NudgeListener | None, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(
        target=agent.run, kwargs={"stop": stop, "wake": listener.wake if listener else None}, daemon=True
    )
    thread.start()
    return thread


def listen(agent: Agent, url: str, prefix: str, **kwargs: Any) -> NudgeListener:
    listener = NudgeListener(
        url=url, device_id=agent.device_id, profile=PROFILE, prefix=prefix, spread_s=0.3, **kwargs
    )
    listener.start()
    return listener


def committed_sha(agent: Agent) -> str | None:
    state = agent.installer.state()
    return state.committed.sha256 if state.committed else None


def polls(server: LiveServer) -> int:
    return server.ctx.metrics.polls_200 + server.ctx.metrics.polls_304


def test_forged_and_garbage_nudges_install_nothing(tmp_path: Path, broker: MosquittoProcess, prefix: str):
    # The server's poll interval (60 s) is longer than the test: every poll after the first is a nudge's.
    with nudge_server(tmp_path, broker, prefix) as server:
        v1, v2 = linear_onnx(1), linear_onnx(2)
        r1 = server.publish(v1, model="m", version="1", profile=PROFILE)["release"]
        r2 = server.publish(v2, model="m", version="2", profile=PROFILE)["release"]
        agent = make_agent(server, tmp_path / "agent")
        assert agent.poll_once().outcome == "no-target"  # enrolled, nothing assigned
        listener = listen(agent, broker.url, prefix)
        stop = threading.Event()
        thread = run_agent(agent, listener, stop)
        attacker = Recorder(broker.url, prefix)
        try:
            assert listener.subscribed.wait(10)
            mine = device_topic(prefix, agent.device_id)
            for garbage in (b"install r2 now", b'{"v": 1, "reason": "x", "release": ' + b"9" * 600 + b"}"):
                attacker.publish(mine, garbage)
            wait_until(lambda: listener.garbage == 2, 10, "the garbage to arrive")
            assert listener.wakes == 0
            # A well-formed but forged nudge: the agent polls, the director assigns nothing, nothing installs.
            before = polls(server)
            attacker.publish(mine, Nudge("rollout.create", "ro-forged").to_bytes())
            wait_until(lambda: polls(server) > before, 10, "the nudged poll")
            time.sleep(0.5)
            assert listener.wakes == 1 and committed_sha(agent) is None

            # The real rollout's nudge: the agent installs through the signed assignment within seconds.
            started = time.monotonic()
            server.rollout(r1["id"])
            wait_until(
                lambda: committed_sha(agent) == hashlib.sha256(v1).hexdigest(), 30, "the install of r1"
            )
            print(f"nudged install after {time.monotonic() - started:.1f} s (poll interval 60 s)")

            # r2 is published but assigned to no one: a forged nudge naming it changes nothing.
            before = polls(server)
            attacker.publish(mine, Nudge("rollout.create", r2["id"][:64].replace(":", "-")).to_bytes())
            wait_until(lambda: polls(server) > before, 10, "the second nudged poll")
            time.sleep(1.0)
            assert committed_sha(agent) == hashlib.sha256(v1).hexdigest()
        finally:
            stop.set()
            thread.join(timeout=30)
            listener.stop()
            attacker.close()


def test_broker_restart_while_agents_are_connected(tmp_path: Path, broker: MosquittoProcess, prefix: str):
    # Poll interval 10 s: with the broker down the agents converge by polling; once it is back, nudges again.
    with nudge_server(tmp_path, broker, prefix, poll_interval=10) as server:
        publisher = server.ctx.nudges
        assert isinstance(publisher, MqttNudgePublisher) and isinstance(publisher.sink, PahoSink)
        models = [linear_onnx(seed) for seed in (1, 2)]
        releases = [
            server.publish(m, model="m", version=str(i + 1), profile=PROFILE)["release"]
            for i, m in enumerate(models)
        ]
        agents = [make_agent(server, tmp_path / f"agent-{i}") for i in range(2)]
        for agent in agents:
            assert agent.poll_once().outcome == "no-target"
        listeners = [listen(agent, broker.url, prefix) for agent in agents]
        stop = threading.Event()
        threads = [run_agent(a, lst, stop) for a, lst in zip(agents, listeners, strict=True)]
        try:
            wait_until(
                lambda: all(lst.subscribed.is_set() for lst in listeners), 15, "the agents to subscribe"
            )
            wait_until(publisher.sink.connected, 15, "the server to connect")

            broker.stop()
            wait_until(
                lambda: not any(lst.subscribed.is_set() for lst in listeners), 10, "the agents to notice"
            )
            wait_until(lambda: not publisher.sink.connected(), 10, "the server to notice")
            server.rollout(releases[0]["id"])
            wanted = hashlib.sha256(models[0]).hexdigest()
            wait_until(lambda: all(committed_sha(a) == wanted for a in agents), 40, "convergence by polling")
            assert publisher.stats.dropped >= 2 and all(lst.wakes == 0 for lst in listeners)

            broker.start()  # same port: the clients reconnect on their own
            wait_until(
                lambda: all(lst.subscribed.is_set() for lst in listeners), 60, "the agents to resubscribe"
            )
            wait_until(publisher.sink.connected, 60, "the server to reconnect")
            sent = publisher.stats.sent
            server.rollout(releases[1]["id"])
            wanted = hashlib.sha256(models[1]).hexdigest()
            wait_until(lambda: all(committed_sha(a) == wanted for a in agents), 40, "the nudged install")
            assert publisher.stats.sent >= sent + 2
            assert all(lst.wakes >= 1 for lst in listeners)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            for lst in listeners:
                lst.stop()


def test_documented_acl_confines_each_device_to_its_own_topics(tmp_path: Path, prefix: str):
    folder = tmp_path / "acl-broker"
    folder.mkdir()
    acl = (REPO / "docker" / "mosquitto" / "acl").read_text().replace("edgefleet/", f"{prefix}/")
    (folder / "acl").write_text(acl)
    passwords = folder / "passwd"
    passwords.touch(mode=0o600)
    for user, password in (("edgefleet-server", "server-pw"), ("dev-a", "a-pw"), ("dev-b", "b-pw")):
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
    config = f"allow_anonymous false\npassword_file {passwords}\nacl_file {folder / 'acl'}\n"
    with MosquittoProcess(folder, extra_config=config) as broker:
        url = broker.url
        a = NudgeListener(
            url=url,
            device_id="dev-a",
            profile=PROFILE,
            prefix=prefix,
            spread_s=0,
            username="dev-a",
            password="a-pw",
        )
        b = NudgeListener(
            url=url,
            device_id="dev-b",
            profile=PROFILE,
            prefix=prefix,
            spread_s=0,
            username="dev-b",
            password="b-pw",
        )
        wrong = NudgeListener(
            url=url,
            device_id="dev-c",
            profile=PROFILE,
            prefix=prefix,
            spread_s=0,
            username="dev-c",
            password="guess",
        )
        for listener in (a, b, wrong):
            listener.start()
        server = Recorder(url, prefix, username="edgefleet-server", password="server-pw")
        # A device that could read every topic: dev-a subscribing to the whole prefix gets nothing of dev-b's.
        snoop = Recorder(url, prefix, username="dev-a", password="a-pw")
        try:
            wait_until(lambda: a.subscribed.is_set() and b.subscribed.is_set(), 15, "devices to subscribe")
            nudge = Nudge("rollout.create", "ro-1").to_bytes()
            server.publish(device_topic(prefix, "dev-b"), nudge)
            wait_until(lambda: b.wakes == 1, 10, "dev-b's nudge")
            time.sleep(0.5)
            assert a.received == 0 and snoop.take() == []
            # A device cannot nudge another (its publish is dropped by the broker).
            snoop.publish(device_topic(prefix, "dev-b"), nudge)
            time.sleep(0.5)
            assert b.wakes == 1
            assert not wrong.subscribed.is_set() and wrong.received == 0  # refused: it keeps polling
        finally:
            for listener in (a, b, wrong):
                listener.stop()
            server.close()
            snoop.close()

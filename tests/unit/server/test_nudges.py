"""Server-side nudges on SQLite with a recording sink in place of the broker: which devices each rollout
event nudges, coalescing of bursts, the profile topic for large fan-outs, pacing, a broker that is down,
and a rolled-back transaction that sends nothing. The real broker is in tests/integration/edge."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ota.core.nudge import device_topic, parse_nudge, profile_topic
from ota.server.context import ServerContext
from ota.server.db import transaction
from ota.server.errors import ConfigError
from ota.server.nudges import MqttNudgePublisher, NullPublisher, TokenBucket
from ota.server.rollout_machine import Phase, RolloutEvent, in_cohort
from ota.server.rollouts import control_rollout, create_rollout
from ota.server.settings import load_settings

from .test_rollouts import add_devices, publish

PREFIX = "unit"


class RecordingSink:
    def __init__(self, *, up: bool = True) -> None:
        self.up = up
        self.sent: list[tuple[str, bytes, float]] = []
        self.lock = threading.Lock()

    def connected(self) -> bool:
        return self.up

    def send(self, topic: str, payload: bytes) -> bool:
        with self.lock:
            self.sent.append((topic, payload, time.monotonic()))
        return True

    def close(self) -> None:
        self.up = False

    def take(self) -> list[tuple[str, bytes, float]]:
        with self.lock:
            sent, self.sent = self.sent, []
        return sent


def use_sink(ctx: ServerContext, sink: RecordingSink, **kwargs) -> MqttNudgePublisher:
    options = {"prefix": PREFIX, "rate": 100_000.0, "fanout_max": 10_000, "coalesce_s": 0.1} | kwargs
    publisher = MqttNudgePublisher(sink, ctx.sessions, **options)
    ctx.nudges = publisher
    return publisher


def wait_batches(publisher: MqttNudgePublisher, count: int) -> None:
    deadline = time.monotonic() + 10
    while publisher.stats.batches < count:
        assert time.monotonic() < deadline, f"only {publisher.stats.batches} batches"
        time.sleep(0.02)
    time.sleep(0.05)  # the batch's messages go out right after it is counted


def topics(sent: list[tuple[str, bytes, float]]) -> set[str]:
    return {topic for topic, _, _ in sent}


def band(ids: list[str], rollout_id: str, low: float, high: float) -> set[str]:
    return {
        device_topic(PREFIX, d)
        for d in ids
        if in_cohort(d, rollout_id, high) and not in_cohort(d, rollout_id, low)
    }


def test_each_assignment_changing_event_nudges_exactly_the_devices_it_moves(
    ctx: ServerContext, tmp_path: Path
):
    ids = add_devices(ctx, 200)
    release = publish(ctx, tmp_path, "1")
    sink = RecordingSink()
    publisher = use_sink(ctx, sink)
    phases = [Phase(10, min_soak_seconds=3600), Phase(50, min_soak_seconds=3600), Phase(100)]
    with transaction(ctx.sessions) as session:
        rollout_id = create_rollout(session, release_id=release, phases=phases, actor="t").id
    wait_batches(publisher, 1)
    sent = sink.take()
    assert topics(sent) == band(ids, rollout_id, 0, 10)
    assert 5 < len(sent) < 40  # about 10 % of 200
    assert {parse_nudge(p).reason for _, p, _ in sent} == {"rollout.create"}
    assert {parse_nudge(p).rollout_id for _, p, _ in sent} == {rollout_id}

    with transaction(ctx.sessions) as session:
        control_rollout(session, rollout_id, RolloutEvent.ADVANCE, actor="t")
    wait_batches(publisher, 2)
    assert topics(sink.take()) == band(ids, rollout_id, 10, 50)

    for event in (RolloutEvent.PAUSE, RolloutEvent.RESUME):  # no assignment changes: nothing sent
        with transaction(ctx.sessions) as session:
            control_rollout(session, rollout_id, event, actor="t")
    time.sleep(0.3)
    assert publisher.stats.batches == 2 and sink.take() == []

    with transaction(ctx.sessions) as session:
        control_rollout(session, rollout_id, RolloutEvent.ABORT, actor="t")
    wait_batches(publisher, 3)
    sent = sink.take()
    assert topics(sent) == band(ids, rollout_id, 0, 50)
    assert {parse_nudge(p).reason for _, p, _ in sent} == {"rollout.abort"}

    # A completed rollout rolled back: every device of the selector goes back.
    with transaction(ctx.sessions) as session:
        second = create_rollout(session, release_id=release, phases=[Phase(100)], actor="t").id
    wait_batches(publisher, 4)
    assert topics(sink.take()) == {device_topic(PREFIX, d) for d in ids}
    with transaction(ctx.sessions) as session:
        control_rollout(session, second, RolloutEvent.ADVANCE, actor="t")  # → completed: nothing moves
        control_rollout(session, second, RolloutEvent.ROLLBACK, actor="t")
    wait_batches(publisher, 5)
    sent = sink.take()
    assert topics(sent) == {device_topic(PREFIX, d) for d in ids}
    assert len(sent) == len(ids)  # advance + rollback in one transaction: one message per device


def test_a_burst_coalesces_into_one_message_per_device(ctx: ServerContext, tmp_path: Path):
    ids = add_devices(ctx, 50)
    release = publish(ctx, tmp_path, "1")
    sink = RecordingSink()
    publisher = use_sink(ctx, sink, coalesce_s=0.5)
    phases = [Phase(50, min_soak_seconds=3600), Phase(100)]
    with transaction(ctx.sessions) as session:
        rollout_id = create_rollout(session, release_id=release, phases=phases, actor="t").id
    for event in (RolloutEvent.ADVANCE, RolloutEvent.ROLLBACK):  # separate commits, inside the window
        with transaction(ctx.sessions) as session:
            control_rollout(session, rollout_id, event, actor="t")
    wait_batches(publisher, 1)
    sent = sink.take()
    assert publisher.stats.notes == 3 and publisher.stats.batches == 1
    assert sorted(topic for topic, _, _ in sent) == sorted(device_topic(PREFIX, d) for d in ids)


def test_a_large_fanout_goes_to_the_profile_topic(ctx: ServerContext, tmp_path: Path):
    add_devices(ctx, 30)
    release = publish(ctx, tmp_path, "1")
    sink = RecordingSink()
    publisher = use_sink(ctx, sink, fanout_max=10)
    with transaction(ctx.sessions) as session:
        create_rollout(session, release_id=release, phases=[Phase(100)], actor="t")
    wait_batches(publisher, 1)
    assert [topic for topic, _, _ in sink.take()] == [profile_topic(PREFIX, "cpu-generic")]


def test_publishing_is_paced_by_the_rate(ctx: ServerContext, tmp_path: Path):
    add_devices(ctx, 40)
    release = publish(ctx, tmp_path, "1")
    sink = RecordingSink()
    publisher = use_sink(ctx, sink, rate=100.0)  # burst of 10, then one every 10 ms
    with transaction(ctx.sessions) as session:
        create_rollout(session, release_id=release, phases=[Phase(100)], actor="t")
    wait_batches(publisher, 1)
    deadline = time.monotonic() + 5
    while len(sink.sent) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    stamps = [at for _, _, at in sink.take()]
    assert len(stamps) == 40
    assert stamps[-1] - stamps[0] >= 0.25  # 30 messages beyond the burst at 100/s


def test_token_bucket_waits():
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=2, clock=lambda: now[0])
    assert [bucket.wait_time() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]
    now[0] = 1.0  # refilled (capped at the burst)
    assert [bucket.wait_time() for _ in range(2)] == [0.0, 0.0]


def test_broker_down_drops_and_counts(ctx: ServerContext, tmp_path: Path):
    add_devices(ctx, 5)
    release = publish(ctx, tmp_path, "1")
    sink = RecordingSink(up=False)
    publisher = use_sink(ctx, sink)
    started = time.monotonic()
    with transaction(ctx.sessions) as session:
        create_rollout(session, release_id=release, phases=[Phase(100)], actor="t")
    assert time.monotonic() - started < 1  # the request never waits for the broker
    wait_batches(publisher, 1)
    assert sink.sent == [] and publisher.stats.dropped == 5 and publisher.stats.sent == 0


def test_a_rolled_back_transaction_sends_nothing(ctx: ServerContext, tmp_path: Path):
    add_devices(ctx, 5)
    release = publish(ctx, tmp_path, "1")
    sink = RecordingSink()
    publisher = use_sink(ctx, sink)
    with pytest.raises(RuntimeError), transaction(ctx.sessions) as session:
        create_rollout(session, release_id=release, phases=[Phase(100)], actor="t")
        raise RuntimeError("the request failed after the rollout was written")
    time.sleep(0.3)
    assert publisher.stats.notes == 0 and sink.sent == []


def test_settings_without_url_give_the_null_publisher(ctx: ServerContext):
    assert isinstance(ctx.nudges, NullPublisher)


def test_a_malformed_broker_url_is_a_config_error(tmp_path: Path, template_home: Path):
    from ota.server.context import build_context

    for url in ("http://broker:1883", "mqtt://", "mqtt://host:99999", "mqtt://host/path"):
        settings = load_settings(home=tmp_path / "h", token_secret="unit-test-secret", mqtt_url=url)
        with pytest.raises(ConfigError, match="MQTT"):
            build_context(settings)

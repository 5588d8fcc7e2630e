"""The agent's nudge listener without a broker (messages handed to it as paho would): garbage is logged and
ignored, a valid nudge wakes the poll loop after its spread, bursts coalesce, wakes keep their gap; the
poll-loop wait; and the shared nudge format (ota.core.nudge). The real broker is in tests/integration/edge."""

from __future__ import annotations

import json
import logging
import random
import threading
import time

import pytest

from ota.core.errors import DocumentFormatError
from ota.core.nudge import Nudge, device_topic, parse_broker_url, parse_nudge, profile_topic
from ota.edge.nudge import NudgeListener, wait_for_poll

GOOD = Nudge(reason="rollout.create", rollout_id="ro-1").to_bytes()


def listener(**kwargs) -> NudgeListener:
    options = {"spread_s": 0.0, "min_gap_s": 0.0, "rng": random.Random(0)} | kwargs
    return NudgeListener(url="mqtt://127.0.0.1:1", device_id="dev-1", profile="cpu/x+1", **options)


GARBAGE = [
    b"",
    b"\xff\xfe not utf-8",
    b"poll now!",
    b"[1, 2]",
    b'"a string"',
    b'{"v": 2, "reason": "rollout.create"}',
    b'{"v": true, "reason": "rollout.create"}',
    b'{"v": 1}',
    b'{"v": 1, "reason": "Rollout Create!"}',
    b'{"v": 1, "reason": "rollout.create", "rollout": 7}',
    json.dumps({"v": 1, "reason": "rollout.create", "pad": "x" * 600}).encode(),
    b"{" * 100_000,
]


def test_garbage_is_logged_and_ignored(caplog: pytest.LogCaptureFixture):
    nudges = listener()
    caplog.set_level(logging.WARNING, logger="ota.edge.nudge")
    for payload in GARBAGE:
        assert nudges.handle(nudges.topics[0], payload) is False
    time.sleep(0.1)
    assert not nudges.wake.is_set()
    assert nudges.garbage == len(GARBAGE) and nudges.wakes == 0
    assert "nudge ignored (1 so far)" in caplog.text  # logged, but not once per message
    assert len(caplog.records) == 1


def test_a_message_on_another_topic_is_ignored():
    nudges = listener()
    assert nudges.handle(device_topic("edgefleet", "someone-else"), GOOD) is False
    assert not nudges.wake.wait(0.1)


def test_a_nudge_on_either_topic_wakes_the_loop():
    nudges = listener()
    assert nudges.topics == (
        "edgefleet/devices/dev-1/nudge",
        "edgefleet/profiles/cpu%2Fx%2B1/nudge",
    )
    for topic in nudges.topics:
        nudges.wake.clear()
        assert nudges.handle(topic, GOOD) is True
        assert nudges.wake.wait(2)


def test_the_wake_comes_within_the_spread():
    nudges = listener(spread_s=0.4, rng=random.Random(3))
    started = time.monotonic()
    nudges.handle(nudges.topics[0], GOOD)
    assert nudges.wake.wait(2)
    assert 0 <= time.monotonic() - started <= 0.6


def test_a_burst_coalesces_into_one_wake_and_wakes_keep_their_gap():
    nudges = listener(spread_s=0.2, min_gap_s=0.5)
    for _ in range(100):
        nudges.handle(nudges.topics[0], GOOD)
    assert nudges.wake.wait(2)
    first = time.monotonic()
    nudges.wake.clear()
    time.sleep(0.3)
    assert nudges.wakes == 1
    nudges.handle(nudges.topics[1], GOOD)
    assert nudges.wake.wait(2)
    assert time.monotonic() - first >= 0.45 and nudges.wakes == 2


def test_stop_cancels_a_pending_wake():
    nudges = listener(spread_s=0.0, min_gap_s=0.3)
    nudges.handle(nudges.topics[0], GOOD)
    assert nudges.wake.wait(2)
    nudges.wake.clear()
    nudges.handle(nudges.topics[0], GOOD)  # delayed by the gap
    nudges.stop()
    assert not nudges.wake.wait(0.5)


def test_wait_for_poll():
    stop, wake = threading.Event(), threading.Event()
    started = time.monotonic()
    assert wait_for_poll(stop, wake, 0.2) is False  # the interval passed
    assert time.monotonic() - started >= 0.2
    threading.Timer(0.1, wake.set).start()
    started = time.monotonic()
    assert wait_for_poll(stop, wake, 30) is False  # woken early, and the event is reset
    assert time.monotonic() - started < 2 and not wake.is_set()
    threading.Timer(0.1, stop.set).start()
    assert wait_for_poll(stop, wake, 30) is True
    assert wait_for_poll(stop, None, 30) is True


def test_bad_listener_settings_are_refused():
    with pytest.raises(DocumentFormatError):
        NudgeListener(url="tcp://host", device_id="d", profile="p")
    with pytest.raises(DocumentFormatError):
        NudgeListener(url="mqtt://host", device_id="bad/id+#", profile="p")
    with pytest.raises(DocumentFormatError):
        NudgeListener(url="mqtt://host", device_id="d", profile="p", prefix="a/+/b")
    with pytest.raises(DocumentFormatError):
        NudgeListener(url="mqtt://host", device_id="d", profile="p", spread_s=-1)


def test_nudge_format_round_trip_and_topics():
    nudge = Nudge(reason="rollout.advance", rollout_id="ro-abc")
    assert parse_nudge(nudge.to_bytes()) == nudge
    assert parse_nudge(b'{"v":1,"reason":"rollout.abort","extra":1}') == Nudge("rollout.abort")
    assert profile_topic("fleet/a", "x/y") == "fleet/a/profiles/x%2Fy/nudge"
    with pytest.raises(DocumentFormatError):
        Nudge(reason="bad reason").to_bytes()
    with pytest.raises(DocumentFormatError):
        device_topic("$SYS", "d")


def test_broker_urls():
    url = parse_broker_url("mqtts://dev%40x:p%3Ass@broker.example")
    assert (url.host, url.port, url.tls, url.username, url.password) == (
        "broker.example",
        8883,
        True,
        "dev@x",
        "p:ss",
    )
    assert url.redacted() == "mqtts://dev@x:***@broker.example:8883"
    assert parse_broker_url("mqtt://127.0.0.1").port == 1883
    for bad in ("http://h", "mqtt://", "mqtt://h:0x", "mqtt://h/x", "mqtt://h?q=1"):
        with pytest.raises(DocumentFormatError):
            parse_broker_url(bad)


def test_agent_cli_refuses_a_bad_broker_url(tmp_path):
    from typer.testing import CliRunner

    from ota.edge.cli import agent_app

    args = ["run", "--server", "http://127.0.0.1:9", "--state-dir", str(tmp_path / "s"), "--profile", "p"]
    result = CliRunner().invoke(agent_app, [*args, "--mqtt", "http://broker:1883"])
    assert result.exit_code == 1
    assert "--mqtt" in result.output and "mqtt://" in result.output

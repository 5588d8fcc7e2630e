"""Push nudges over MQTT: tell the devices whose assignment changed to poll now.

Optional: without ``EDGEFLEET_MQTT_URL`` the publisher is a no-op and the fleet learns of changes at its next
poll, as before. A nudge carries no authority (see :mod:`ota.core.nudge`); the device still verifies the
signed assignment it then fetches.

How it flows, without ever blocking a request or the rollout tick on the broker:

1. The rollout service notes what changed in the session (:func:`note_created`, :func:`note_transition`):
   the rollout, and the band of cohort points whose assignment moved (an advance from 10 % to 50 % changes
   the devices whose point lies in [10, 50); an abort or rollback the whole current cohort; pause and resume
   change no assignment, see ``ota.server.director.decide_release``, and send nothing).
2. When that transaction commits, a session listener (:func:`attach`) hands the notes to the publisher's
   queue (a rolled-back transaction sends nothing). It also makes this process's assignment cache observe
   the new generation at once, so a nudged device never gets the old answer from this process.
3. The publisher's own thread waits ``coalesce_s`` after the first note of a batch (at least the cache
   refresh interval, so every server process has dropped its stale answers by the time devices poll),
   merges every note that arrived meanwhile, reads the recipients from the database (its own session), and
   publishes one QoS 1 message per device on ``<prefix>/devices/<id>/nudge``, paced by a token bucket
   (``rate`` messages/s). A note that would reach more than ``fanout_max`` devices is sent instead as one
   message on the profile topic ``<prefix>/profiles/<profile>/nudge`` (cheaper for a large phase; devices
   outside the band also wake, and most get a 304).
4. paho's network thread keeps the connection and reconnects with backoff. While the broker is unreachable
   a batch is dropped and counted (``stats``): polling delivers those changes.

Corner case left to polling: a rollout whose selector overlaps a newer one on another selector; the band
names the devices whose target the rollout itself moves.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import event, select
from sqlalchemy.orm import Session, load_only, sessionmaker

from ota.core.manifest import AdmissionState
from ota.core.nudge import BrokerUrl, Nudge, device_topic, parse_broker_url, profile_topic
from ota.server.db import BUMPED_KEY
from ota.server.models import Device, Rollout
from ota.server.rollout_machine import RolloutEvent, RolloutState, cohort_point

log = logging.getLogger(__name__)

PENDING_KEY = "edgefleet_nudges"
MAX_PENDING_NOTES = 10_000


@dataclass(frozen=True)
class NudgeNote:
    """One assignment change to announce: the devices of ``selector`` whose cohort point is in [low, high).

    Attributes:
        rollout_id: The rollout that changed.
        reason: ``rollout.<event>`` (``rollout.create`` for a start).
        selector: The rollout's selector (profile, group, tags) as stored.
        low: Lower bound of the band of cohort points, 0-100.
        high: Upper bound (exclusive), 0-100.
    """

    rollout_id: str
    reason: str
    selector: dict[str, Any]
    low: float
    high: float


def _effective_percent(state: str, phases: list[dict[str, Any]], index: int) -> float:
    return 100.0 if state == RolloutState.COMPLETED.value else float(phases[index]["percent"])


def _note(session: Session, note: NudgeNote) -> None:
    if note.high > note.low:
        session.info.setdefault(PENDING_KEY, []).append(note)


def note_created(session: Session, rollout: Rollout) -> None:
    """Note a new rollout: the devices of its first phase's cohort get its release."""
    high = _effective_percent(rollout.state, rollout.phases, rollout.phase_index)
    _note(session, NudgeNote(rollout.id, "rollout.create", dict(rollout.selector), 0.0, high))


def note_transition(
    session: Session, rollout: Rollout, event: RolloutEvent, *, old_state: str, old_index: int
) -> None:
    """Note an applied rollout event (manual or automatic), if it changes any device's assignment.

    Args:
        session: The transaction that applied it.
        rollout: The rollout, already updated.
        event: The event.
        old_state: The state before the event.
        old_index: The phase index before the event.
    """
    before = _effective_percent(old_state, rollout.phases, old_index)
    if event is RolloutEvent.ADVANCE:
        low, high = before, _effective_percent(rollout.state, rollout.phases, rollout.phase_index)
    elif event in {RolloutEvent.ABORT, RolloutEvent.ROLLBACK}:
        low, high = 0.0, before  # the cohort goes back to the previous release
    else:
        return  # pause and resume leave every assignment as it was
    _note(session, NudgeNote(rollout.id, f"rollout.{event.value}", dict(rollout.selector), low, high))


# ---- recipients ----------------------------------------------------------------------------------------


@dataclass
class Batch:
    """What one coalesced batch sends: device ids and profile-wide topics, each once, with a reason each."""

    devices: dict[str, Nudge] = field(default_factory=dict)
    profiles: dict[str, Nudge] = field(default_factory=dict)

    def __len__(self) -> int:
        """Messages the batch sends."""
        return len(self.devices) + len(self.profiles)


def recipients(session: Session, note: NudgeNote) -> list[str]:
    """The accepted devices matching the note's selector whose cohort point is in its band."""
    from ota.server.rollouts import Selector  # rollouts imports this module

    selector = Selector.from_dict(note.selector)
    query = (
        select(Device)
        .options(load_only(Device.id, Device.hardware_profile, Device.group, Device.tags))
        .where(Device.hardware_profile == selector.profile, Device.state == AdmissionState.ACCEPTED.value)
    )
    if selector.group is not None:
        query = query.where(Device.group == selector.group)
    everyone = note.low <= 0 and note.high >= 100
    return [
        d.id
        for d in session.scalars(query)
        if selector.matches(d) and (everyone or note.low <= cohort_point(d.id, note.rollout_id) < note.high)
    ]


def plan_batch(session: Session, notes: Iterable[NudgeNote], *, fanout_max: int) -> Batch:
    """Coalesce notes into one batch: each device or profile nudged once, however many notes name it.

    A note reaching more than ``fanout_max`` devices goes to its profile's topic instead.
    """
    batch = Batch()
    for note in notes:
        nudge = Nudge(reason=note.reason, rollout_id=note.rollout_id)
        profile = str(note.selector["profile"])
        if profile in batch.profiles:
            continue  # the whole profile wakes anyway
        devices = recipients(session, note)
        if len(devices) > fanout_max:
            batch.profiles[profile] = nudge
            continue
        for device_id in devices:
            batch.devices.setdefault(device_id, nudge)
    return batch


class TokenBucket:
    """Paces messages to ``rate`` per second with bursts of up to ``burst``.

    Args:
        rate: Messages per second.
        burst: Bucket size.
        clock: Monotonic clock (tests).
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.stamp = clock()

    def wait_time(self) -> float:
        """Take one token; return how long to wait before sending (0 when one was available)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


# ---- publishers ----------------------------------------------------------------------------------------


class NudgePublisher(Protocol):
    """What the server holds: submit notes after commit, close at shutdown."""

    def submit(self, notes: list[NudgeNote]) -> None:
        """Queue notes for publishing; never blocks on the broker."""

    def close(self) -> None:
        """Stop the publisher (pending notes are dropped)."""


class NullPublisher:
    """No broker configured: nudges are not sent, devices learn at their next poll."""

    def submit(self, notes: list[NudgeNote]) -> None:
        """Drop the notes."""

    def close(self) -> None:
        """Nothing to stop."""


class MessageSink(Protocol):
    """Where messages go (the paho client in production, a list in unit tests)."""

    def connected(self) -> bool:
        """Whether the broker connection is up."""

    def send(self, topic: str, payload: bytes) -> bool:
        """Publish one QoS 1 message; False when it could not be queued."""

    def close(self) -> None:
        """Disconnect."""


@dataclass
class PublisherStats:
    """Counters of the publisher (read by tests, the bench and logs)."""

    notes: int = 0
    batches: int = 0
    sent: int = 0
    dropped: int = 0
    failed: int = 0


class MqttNudgePublisher:
    """Coalesces notes, resolves recipients and publishes paced nudges from its own thread.

    Args:
        sink: Where messages go.
        sessions: Session factory to read recipients.
        prefix: Topic prefix.
        rate: Messages per second at most.
        fanout_max: Devices per note above which the profile topic is used.
        coalesce_s: Wait after a batch's first note before sending it.
    """

    def __init__(
        self,
        sink: MessageSink,
        sessions: sessionmaker[Session],
        *,
        prefix: str,
        rate: float,
        fanout_max: int,
        coalesce_s: float,
    ) -> None:
        self.sink = sink
        self.sessions = sessions
        self.prefix = prefix
        self.fanout_max = fanout_max
        self.coalesce_s = coalesce_s
        self.bucket = TokenBucket(rate, burst=max(1.0, rate / 10))
        self.stats = PublisherStats()
        self._notes: list[NudgeNote] = []
        self._first_at: float | None = None
        self._wake = threading.Condition()
        self._closed = False
        self._warned_down = False
        self._thread = threading.Thread(target=self._run, name="edgefleet-nudges", daemon=True)
        self._thread.start()

    def submit(self, notes: list[NudgeNote]) -> None:
        """Queue notes (bounded: past :data:`MAX_PENDING_NOTES` the oldest are dropped and counted)."""
        with self._wake:
            self.stats.notes += len(notes)
            self._notes.extend(notes)
            if len(self._notes) > MAX_PENDING_NOTES:
                excess = len(self._notes) - MAX_PENDING_NOTES
                self.stats.dropped += excess
                del self._notes[:excess]
            if self._first_at is None:
                self._first_at = time.monotonic()
            self._wake.notify()

    def _take(self) -> list[NudgeNote] | None:
        """Wait for a due batch; None once closed."""
        with self._wake:
            while not self._closed:
                if self._first_at is None:
                    self._wake.wait()
                    continue
                left = self._first_at + self.coalesce_s - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                notes, self._notes, self._first_at = self._notes, [], None
                return notes
            return None

    def _run(self) -> None:
        while (notes := self._take()) is not None:
            try:
                self._send(notes)
            except Exception:  # the thread must outlive a database hiccup; polling covers the batch
                self.stats.failed += len(notes)
                log.exception("nudges: a batch of %d change(s) could not be sent", len(notes))

    def _send(self, notes: list[NudgeNote]) -> None:
        with self.sessions() as session:
            batch = plan_batch(session, notes, fanout_max=self.fanout_max)
        self.stats.batches += 1
        if not self.sink.connected():
            self.stats.dropped += len(batch)
            if not self._warned_down:
                log.warning("nudges: broker unreachable; %d nudge(s) dropped, devices will poll", len(batch))
                self._warned_down = True
            return
        self._warned_down = False
        messages = [(profile_topic(self.prefix, p), n) for p, n in batch.profiles.items()]
        messages += [(device_topic(self.prefix, d), n) for d, n in batch.devices.items()]
        for topic, nudge in messages:
            if self._closed:
                return
            pause = self.bucket.wait_time()
            if pause > 0:
                time.sleep(pause)
            if self.sink.send(topic, nudge.to_bytes()):
                self.stats.sent += 1
            else:
                self.stats.dropped += 1
        log.info("nudges: sent %d message(s) for %d change(s)", len(messages), len(notes))

    def close(self) -> None:
        """Stop the thread and disconnect."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)
        self.sink.close()


class PahoSink:
    """The paho-mqtt client: its own network thread, QoS 1, reconnect with backoff.

    Args:
        broker: Where the broker is.
        client_id: MQTT client id.
        username: Overrides the URL's user name.
        password: Overrides the URL's password.
        ca_file: CA bundle for ``mqtts://`` (system CAs when None).
    """

    def __init__(
        self,
        broker: BrokerUrl,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt

        self.broker = broker
        self._up = threading.Event()
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
        )
        user = username or broker.username
        if user:
            client.username_pw_set(user, password or broker.password)
        if broker.tls:
            client.tls_set(ca_certs=ca_file)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(100_000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        self.client = client
        client.connect_async(broker.host, broker.port, keepalive=30)
        client.loop_start()

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.warning("nudges: broker %s refused the connection: %s", self.broker.redacted(), reason)
            return
        log.info("nudges: connected to %s", self.broker.redacted())
        self._up.set()

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self._up.is_set():
            log.warning("nudges: lost the broker %s (%s); reconnecting", self.broker.redacted(), reason)
        self._up.clear()

    def _on_connect_fail(self, _client: Any, _userdata: Any) -> None:
        self._up.clear()

    def connected(self) -> bool:
        """Whether the connection is up (CONNACK accepted)."""
        return self._up.is_set()

    def send(self, topic: str, payload: bytes) -> bool:
        """Queue one QoS 1 message (paho sends it from its network thread)."""
        info = self.client.publish(topic, payload, qos=1)
        return bool(info.rc == 0)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._up.clear()  # a deliberate disconnect: not "lost"
        self.client.disconnect()
        self.client.loop_stop()


def default_client_id() -> str:
    """``edgefleet-server-<host>-<pid>``: unique per server process (a duplicate id kicks the other off)."""
    return f"edgefleet-server-{socket.gethostname()[:40]}-{os.getpid()}"


def make_publisher(
    sessions: sessionmaker[Session],
    *,
    url: str,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    prefix: str,
    rate: float,
    fanout_max: int,
    coalesce_s: float,
) -> NudgePublisher:
    """The publisher for the settings: a no-op without ``url``, else paho behind :class:`MqttNudgePublisher`.

    Raises:
        DocumentFormatError: A malformed URL or prefix.
    """
    if not url:
        return NullPublisher()
    broker = parse_broker_url(url)
    device_topic(prefix, "check")  # validate the prefix now, not at the first rollout
    sink = PahoSink(
        broker, client_id=default_client_id(), username=username, password=password, ca_file=ca_file
    )
    log.info("nudges: publishing to %s under %s/", broker.redacted(), prefix)
    return MqttNudgePublisher(
        sink, sessions, prefix=prefix, rate=rate, fanout_max=fanout_max, coalesce_s=coalesce_s
    )


def attach(
    sessions: sessionmaker[Session],
    publisher: Callable[[], NudgePublisher],
    *,
    observe: Callable[[int], None],
) -> None:
    """Send the notes of each committed transaction to the publisher (a rolled-back one sends nothing).

    Args:
        sessions: The server's session factory.
        publisher: Returns where notes go now (the context's current publisher).
        observe: Called with a bumped generation before the notes are queued (the assignment cache's
            ``observe``), so this process answers nudged devices with the new assignment.
    """

    def after_commit(session: Session) -> None:
        notes = session.info.pop(PENDING_KEY, None)
        if not notes:
            return
        bumped = session.info.get(BUMPED_KEY)
        if bumped is not None:
            observe(int(bumped))
        publisher().submit(notes)

    def after_rollback(session: Session) -> None:
        session.info.pop(PENDING_KEY, None)

    event.listen(sessions, "after_commit", after_commit)
    event.listen(sessions, "after_soft_rollback", lambda session, _previous: after_rollback(session))

"""MQTT nudge listener: wake the poll loop early when the server says the assignment may have changed.

Optional (``edgefleet-agent --mqtt URL``). paho-mqtt runs in its own network thread, subscribes only to
this device's topics (its own and its hardware profile's, see :mod:`ota.core.nudge`) and reconnects with
backoff. A valid nudge sets :attr:`NudgeListener.wake` after a random spread of up to ``spread_s`` seconds,
so a 100 % phase does not reach the server in one instant; nudges that arrive while a wake is pending are
coalesced, and wakes are at least ``min_gap_s`` apart (a flood of messages costs at most one poll per gap).

Nothing received is trusted: a nudge only makes the agent poll now, and the poll verifies the signed
assignment and the TUF metadata as always. Garbage on a topic (not a nudge document) is logged and ignored.
A broker that is down or refuses the credentials is logged; the agent keeps polling on its interval.
Nudges sent while this device was disconnected are not replayed: the next poll picks the change up.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Protocol

from ota.core.errors import DocumentFormatError
from ota.core.nudge import DEFAULT_TOPIC_PREFIX, device_topic, parse_broker_url, parse_nudge, profile_topic

log = logging.getLogger(__name__)

DEFAULT_SPREAD_S = 2.0
DEFAULT_MIN_GAP_S = 1.0
_LOG_EVERY = 100  # after the first, log one garbage message in this many


class StopFlag(Protocol):
    """A ``threading.Event`` or a ``multiprocessing`` event: anything with ``is_set`` and ``wait``."""

    def is_set(self) -> bool:
        """Whether the loop must end."""

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until set or the timeout passes; return whether it is set."""


def wait_for_poll(stop: StopFlag, wake: threading.Event | None, delay_s: float) -> bool:
    """Wait ``delay_s`` seconds, or less when ``wake`` is set (a nudge); return True once ``stop`` is set.

    ``stop`` is checked at least twice a second while a wake event is given (two events cannot be waited on
    at once); without one this is ``stop.wait(delay_s)``.
    """
    if wake is None:
        return stop.wait(delay_s)
    deadline = time.monotonic() + delay_s
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if wake.wait(min(left, 0.5)):
            wake.clear()
            return stop.is_set()
    return True


class NudgeListener:
    """Subscribes to a device's nudge topics and sets :attr:`wake` when one arrives.

    Args:
        url: ``mqtt[s]://[user[:password]@]host[:port]``.
        device_id: This device's id.
        profile: This device's hardware profile.
        prefix: Topic prefix (the server's ``EDGEFLEET_MQTT_TOPIC_PREFIX``).
        username: Overrides the URL's user name.
        password: Overrides the URL's password.
        ca_file: CA bundle for ``mqtts://`` (the system's when None).
        spread_s: A wake comes a uniform random 0 to ``spread_s`` seconds after the nudge.
        min_gap_s: Wakes are at least this far apart.
        rng: Randomness for the spread.

    Raises:
        DocumentFormatError: A malformed URL, prefix, device id or profile.
    """

    def __init__(
        self,
        *,
        url: str,
        device_id: str,
        profile: str,
        prefix: str = DEFAULT_TOPIC_PREFIX,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        spread_s: float = DEFAULT_SPREAD_S,
        min_gap_s: float = DEFAULT_MIN_GAP_S,
        rng: random.Random | None = None,
    ) -> None:
        if spread_s < 0 or min_gap_s < 0:
            raise DocumentFormatError("nudge spread and gap must be ≥ 0")
        self.broker = parse_broker_url(url)
        self.device_id = device_id
        self.topics = (device_topic(prefix, device_id), profile_topic(prefix, profile))
        self.username = username or self.broker.username
        self.password = password or self.broker.password
        self.ca_file = ca_file
        self.spread_s = spread_s
        self.min_gap_s = min_gap_s
        self.rng = rng or random.Random()
        self.wake = threading.Event()
        self.subscribed = threading.Event()
        self.received = 0
        self.garbage = 0
        self.wakes = 0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._last_wake = -float("inf")
        self._refused_logged = False
        self._client: Any = None

    # ---- messages (called from paho's thread; tests call it directly) ------------------------------------

    def handle(self, topic: str, payload: bytes) -> bool:
        """Take one received message: schedule a wake for a valid nudge, log and ignore anything else.

        Returns:
            True when it was a nudge (a wake is pending or was coalesced into a pending one).
        """
        self.received += 1
        try:
            if topic not in self.topics:
                raise DocumentFormatError(f"message on a topic not subscribed to: {topic[:120]!r}")
            nudge = parse_nudge(payload)
        except DocumentFormatError as exc:
            self.garbage += 1
            if self.garbage == 1 or self.garbage % _LOG_EVERY == 0:
                log.warning("nudge ignored (%d so far): %s", self.garbage, exc)
            return False
        log.info("nudged on %s (%s %s): polling soon", topic, nudge.reason, nudge.rollout_id or "")
        self._schedule()
        return True

    def _schedule(self) -> None:
        with self._lock:
            if self._timer is not None:
                return  # a wake is already on its way: one poll answers both nudges
            now = time.monotonic()
            delay = max(self.rng.uniform(0, self.spread_s), self._last_wake + self.min_gap_s - now, 0.0)
            self._timer = threading.Timer(delay, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            self._last_wake = time.monotonic()
            self.wakes += 1
        self.wake.set()

    # ---- the connection --------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (paho's own thread); returns at once, even when the broker is down."""
        import paho.mqtt.client as mqtt

        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"edgefleet-{self.device_id}",
            protocol=mqtt.MQTTv311,
        )
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.broker.tls:
            client.tls_set(ca_certs=self.ca_file)
        # A fleet reconnecting after a broker restart should not arrive in one instant either.
        client.reconnect_delay_set(min_delay=self.rng.randint(1, 3), max_delay=120)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        client.connect_async(self.broker.host, self.broker.port, keepalive=60)
        client.loop_start()

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            if not self._refused_logged:
                log.warning(
                    "MQTT broker %s refused this device (%s); polling on the interval, retrying with backoff",
                    self.broker.redacted(),
                    reason,
                )
                self._refused_logged = True
            return
        self._refused_logged = False
        log.info("MQTT connected to %s; listening on %s", self.broker.redacted(), ", ".join(self.topics))
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(self, _client: Any, _userdata: Any, _mid: int, reasons: Any, _props: Any) -> None:
        if any(code.is_failure for code in reasons):
            log.warning("MQTT broker refused a nudge subscription (%s): polling on the interval", reasons)
            return
        self.subscribed.set()

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self.subscribed.is_set():
            log.warning("MQTT connection lost (%s); polling on the interval while reconnecting", reason)
        self.subscribed.clear()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.handle(str(message.topic), bytes(message.payload))

    def stop(self) -> None:
        """Disconnect, stop paho's thread and cancel a pending wake."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

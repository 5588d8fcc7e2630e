"""MQTT push nudges: the topics, the message and the broker URL, shared by the server and the agent.

A nudge tells a device "your assignment may have changed: poll now". It carries no authority: the agent
only polls earlier and still verifies the signed assignment and TUF metadata as on any poll, so a forged,
replayed or garbled nudge can at worst cost one poll. Polling stays the source of truth; a fleet without
a broker works exactly as before.

Topics (``prefix`` is ``edgefleet`` unless configured)::

    <prefix>/devices/<device id>/nudge       one device (the usual case)
    <prefix>/profiles/<profile>/nudge        every device of a hardware profile (large phases: one
                                             message instead of thousands; see ota.server.nudges)

Device ids are topic-safe (``DEVICE_ID_PATTERN``); profiles may hold ``/`` and ``+``, so they are
percent-encoded. The message is a small JSON object::

    {"v": 1, "reason": "rollout.advance", "rollout": "ro-…"}

Anything else on a topic (not JSON, not an object, another version, over :data:`MAX_NUDGE_BYTES`) is
garbage: :func:`parse_nudge` raises and the agent logs and ignores it.

This module needs the base install only (no MQTT client): it formats and parses, the clients live in
``ota.server.nudges`` and ``ota.edge.nudge``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from ota.core.errors import DocumentFormatError
from ota.core.manifest import DEVICE_ID_PATTERN

NUDGE_VERSION = 1
MAX_NUDGE_BYTES = 512
DEFAULT_TOPIC_PREFIX = "edgefleet"
_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_REASON_PATTERN = re.compile(r"^[a-z0-9._-]{1,64}$")
_ROLLOUT_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid topic prefix (no wildcards, no empty levels, no leading ``$``).

    Raises:
        DocumentFormatError: It is not.
    """
    if len(prefix) > 128 or not _PREFIX_PATTERN.match(prefix):
        raise DocumentFormatError(
            f"MQTT topic prefix {prefix[:80]!r} must be levels of [A-Za-z0-9._-] separated by '/'"
        )
    return prefix


def device_topic(prefix: str, device_id: str) -> str:
    """The topic that nudges one device.

    Raises:
        DocumentFormatError: A bad prefix or device id.
    """
    if not DEVICE_ID_PATTERN.match(device_id):
        raise DocumentFormatError(f"device id {device_id[:80]!r} has an invalid format")
    return f"{check_prefix(prefix)}/devices/{device_id}/nudge"


def profile_topic(prefix: str, profile: str) -> str:
    """The topic that nudges every device of a hardware profile (the profile percent-encoded).

    Raises:
        DocumentFormatError: A bad prefix or an empty profile.
    """
    if not profile or len(profile) > 64:
        raise DocumentFormatError("a hardware profile is 1 to 64 characters")
    return f"{check_prefix(prefix)}/profiles/{quote(profile, safe='')}/nudge"


@dataclass(frozen=True)
class Nudge:
    """A nudge message: why the server sent it (for logs only; nothing in it is trusted).

    Attributes:
        reason: What changed, e.g. ``rollout.create`` or ``rollout.advance``.
        rollout_id: The rollout it concerns, if any.
    """

    reason: str
    rollout_id: str | None = None

    def to_bytes(self) -> bytes:
        """The message's wire form (compact JSON).

        Raises:
            DocumentFormatError: A field has an invalid format.
        """
        self.check()
        body: dict[str, Any] = {"v": NUDGE_VERSION, "reason": self.reason}
        if self.rollout_id is not None:
            body["rollout"] = self.rollout_id
        return json.dumps(body, separators=(",", ":")).encode()

    def check(self) -> None:
        """Validate the fields.

        Raises:
            DocumentFormatError: A field has an invalid format.
        """
        if not _REASON_PATTERN.match(self.reason):
            raise DocumentFormatError(f"nudge reason {self.reason[:80]!r} has an invalid format")
        if self.rollout_id is not None and not _ROLLOUT_PATTERN.match(self.rollout_id):
            raise DocumentFormatError(f"nudge rollout {self.rollout_id[:80]!r} has an invalid format")


def parse_nudge(payload: bytes) -> Nudge:
    """Parse a message received on a nudge topic.

    Args:
        payload: The raw MQTT payload.

    Returns:
        The nudge.

    Raises:
        DocumentFormatError: Too large, not JSON, not an object, another version, or bad fields.
    """
    if len(payload) > MAX_NUDGE_BYTES:
        raise DocumentFormatError(f"nudge of {len(payload)} bytes is over {MAX_NUDGE_BYTES}")
    try:
        raw = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DocumentFormatError("nudge is not JSON") from exc
    if not isinstance(raw, dict):
        raise DocumentFormatError("nudge is not a JSON object")
    if raw.get("v") != NUDGE_VERSION or isinstance(raw.get("v"), bool):
        raise DocumentFormatError(f"nudge version {str(raw.get('v'))[:20]!r} is not {NUDGE_VERSION}")
    reason, rollout = raw.get("reason"), raw.get("rollout")
    if not isinstance(reason, str) or not (rollout is None or isinstance(rollout, str)):
        raise DocumentFormatError("nudge reason and rollout must be strings")
    nudge = Nudge(reason=reason, rollout_id=rollout)
    nudge.check()
    return nudge


@dataclass(frozen=True)
class BrokerUrl:
    """Where an MQTT broker is and how to log in.

    Attributes:
        host: Host name or address.
        port: TCP port (1883 for ``mqtt://``, 8883 for ``mqtts://`` unless given).
        tls: Whether to use TLS (``mqtts://``).
        username: User name (from the URL), or None.
        password: Password (from the URL), or None.
    """

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    def redacted(self) -> str:
        """The URL without its password, for logs."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}:***@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://…`` (TLS).

    Raises:
        DocumentFormatError: Another scheme, no host, a bad port, or a path.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DocumentFormatError(f"bad MQTT URL: {exc}") from exc
    if parts.scheme not in {"mqtt", "mqtts"}:
        raise DocumentFormatError(f"MQTT URL must start with mqtt:// or mqtts://, got {url[:80]!r}")
    if not parts.hostname:
        raise DocumentFormatError("MQTT URL has no host")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise DocumentFormatError("MQTT URL must be mqtt[s]://[user[:password]@]host[:port], no path")
    tls = parts.scheme == "mqtts"
    return BrokerUrl(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )

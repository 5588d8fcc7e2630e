"""Typed errors of the edge agent (``ota.edge``), the one exceptions module of this subsystem.

Every failure the agent can meet maps to one of these at the boundary where it happens
(``raise FetchError(...) from exc``), so the poll loop can decide between retry, report and refuse
without string matching. Errors that mean somebody is serving bad data on purpose carry
``attack = True``; the agent reports them with the attack flag, like Uptane's version report.

Tree::

    EdgeError
    ├── ConfigError              a limit in AgentConfig makes no sense
    ├── StateError               the persisted state file is unreadable or inconsistent
    ├── SlotError                a slot or the slot pointer cannot be read or written (disk full, …)
    │   └── InsufficientSpaceError  not enough free space for an update's download and install
    ├── FetchError               a download failed and may be retried later
    │   ├── HttpStatusError      the server answered with an unexpected status
    │   ├── ApiTransportError    a device API call failed in transport (connect, timeout, protocol)
    │   ├── AnswerFormatError    a device API answer is not the document expected (HTML, bad JSON, …)
    │   ├── AnswerTooLargeError  a device API answer exceeds its per-endpoint cap (endless data)    [attack]
    │   ├── SlowRetrievalError   the server sends too slowly (slow-retrieval attack or bad link)  [attack]
    │   ├── RetriesExhaustedError  every retry failed; the partial file is kept for later
    │   ├── DownloadTooLargeError  more bytes than declared (endless-data attack)                [attack]
    │   ├── LengthMismatchError  the finished download has the wrong length                     [attack]
    │   └── HashMismatchError    the finished download has the wrong sha256                     [attack]
    ├── HealthCheckError         the self-test vectors cannot be read (the model itself failing is a
    │                            HealthResult, not an exception)
    ├── ProfileError             the hardware profile cannot be detected
    ├── IdentityError            the device key or trusted metadata is unreadable
    └── VerificationError        signed metadata or an assignment failed verification           [attack]
        └── TargetMetadataError  a signed TUF target's custom fields are not the document expected [attack]

``transient`` marks the failures a later try may get past without a new assignment (network trouble, a
5xx): the poll loop backs off and retries those instead of remembering the assignment as failed.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Root of every error raised by ``ota.edge``."""

    #: True when the error means bad data was served on purpose; reports carry it as the attack flag.
    attack: bool = False
    #: True when a later try may succeed without anything changing at the server (network trouble).
    transient: bool = False


class ConfigError(EdgeError):
    """A value in :class:`ota.edge.config.AgentConfig` is out of range or inconsistent."""


class StateError(EdgeError):
    """The persisted agent state cannot be read, or contradicts the slots on disk."""


class SlotError(EdgeError):
    """A slot, its files or the slot pointer cannot be read or written (for example, the disk is full)."""


class InsufficientSpaceError(SlotError):
    """The disk has too little free space for an update's download and install; nothing was started."""


class FetchError(EdgeError):
    """A download failed; the partial file is kept so that a later attempt can resume."""


class HttpStatusError(FetchError):
    """The server answered with a status the fetcher cannot use.

    Attributes:
        status_code: The HTTP status code received.
    """

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.transient = status_code >= 500


class ApiTransportError(FetchError):
    """A call to a device endpoint failed below HTTP: connect error, timeout, protocol error, redirects."""

    transient = True


class AnswerFormatError(FetchError):
    """A device endpoint answered 2xx with a body that is not the expected document.

    HTML from a captive portal, bytes that are not JSON or not UTF-8, a JSON list where an object is
    expected, a missing key or a value of the wrong type. Not an attack flag: proxies and portals do this
    innocently; anything signed that is wrong is a :class:`VerificationError` instead.
    """


class AnswerTooLargeError(FetchError):
    """A device endpoint's answer is larger than that endpoint's cap (endless-data attack on the API)."""

    attack = True


class SlowRetrievalError(FetchError):
    """The server sent data slower than the configured minimum rate (slow-retrieval attack)."""

    attack = True


class RetriesExhaustedError(FetchError):
    """Every retry of a download failed; the last cause is chained as ``__cause__``."""

    transient = True


class DownloadTooLargeError(FetchError):
    """The server sent more bytes than the signed length (endless-data attack)."""

    attack = True


class LengthMismatchError(FetchError):
    """A finished download does not have the signed length."""

    attack = True


class HashMismatchError(FetchError):
    """A finished download does not have the signed sha256."""

    attack = True


class HealthCheckError(EdgeError):
    """The self-test vectors file is missing, malformed or too large."""


class ProfileError(EdgeError):
    """The hardware profile cannot be detected."""


class IdentityError(EdgeError):
    """The device key or the stored trusted metadata cannot be read or written."""


class VerificationError(EdgeError):
    """Signed metadata or a director assignment failed verification; nothing is installed."""

    attack = True


class TargetMetadataError(VerificationError):
    """A signed TUF target's custom fields are not the :mod:`ota.core.targets` document expected.

    Unknown, missing or mistyped fields, or a delta whose signed base and result differ from the director's.
    Signed and wrong: an attack flag like every verification failure.
    """

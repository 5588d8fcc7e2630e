"""The OTA server's one settings class (pydantic-settings, env prefix ``EDGEFLEET_``).

Nothing is read at import time: the app factory and the CLI call :func:`load_settings`. In development mode
(the default) everything lives under ``$EDGEFLEET_HOME`` (or ``./.edgefleet``): SQLite database, blob folder,
key folder and the device-token secret, all created on first start (owner-only: 0700 folders, 0600 files).
Outside development mode the server refuses to start on a weak token secret (see :func:`check_secret`) or on
keys it generated itself; in development mode a weak secret only logs a warning.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ota.core.files import atomic_write_bytes
from ota.core.nudge import DEFAULT_TOPIC_PREFIX
from ota.server.errors import ConfigError
from ota.server.rollout_machine import (
    DEFAULT_MIN_REPORTS,
    DEFAULT_MIN_SOAK_SECONDS,
    DEFAULT_MIN_SUCCESS_RATIO,
    DEFAULT_PERCENTS,
    Phase,
)

log = logging.getLogger(__name__)

DEFAULT_SECRET = "change-me"  # noqa: S105 - the sentinel that production mode refuses
# The token secret keys the MAC of every device poll token: anyone who guesses it forges tokens offline.
MIN_SECRET_BYTES = 32
MIN_SECRET_BITS = 128
MAKE_SECRET = 'python -c "import secrets; print(secrets.token_urlsafe(48))"'  # noqa: S105 - the command that makes one, not a secret


def secret_weakness(secret: str) -> str | None:
    """Say why ``secret`` is too weak to key device tokens, or return None when it is strong enough.

    The rule: at least :data:`MIN_SECRET_BYTES` UTF-8 bytes, and an estimated strength of at least
    :data:`MIN_SECRET_BITS` bits, estimated as ``length × log2(distinct characters)`` (what the string could
    hold if each character were drawn at random from the characters it uses). That refuses short secrets,
    the default, and long low-diversity ones (``aaaa…``, ``abab…``); ``secrets.token_urlsafe(48)`` gives
    about 340 bits.
    """
    if secret == DEFAULT_SECRET:
        return "it is the built-in default"
    size = len(secret.encode())
    if size < MIN_SECRET_BYTES:
        return f"it is {size} bytes long, under the minimum of {MIN_SECRET_BYTES}"
    distinct = len(set(secret))
    bits = len(secret) * math.log2(distinct) if distinct > 1 else 0.0
    if bits < MIN_SECRET_BITS:
        return (
            f"it uses only {distinct} distinct characters (about {bits:.0f} bits, "
            f"under the floor of {MIN_SECRET_BITS})"
        )
    return None


#: Bind addresses that listen on every interface: the URL devices use cannot be derived from them.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names the wildcard, binds nothing
#: A Host header we are willing to echo back to the device that sent it: a name or address and a port.
_HOST_HEADER = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")


def edgefleet_home() -> Path:
    """Return the state folder: ``$EDGEFLEET_HOME`` or ``./.edgefleet``."""
    return Path(os.environ.get("EDGEFLEET_HOME", ".edgefleet")).resolve()


class ServerSettings(BaseSettings):
    """Every knob of the OTA server; each field reads ``EDGEFLEET_<NAME>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="ignore")

    mode: Literal["development", "production"] = "development"
    home: Path = Field(default_factory=edgefleet_home)
    database_url: str = ""
    blob_url: str = ""
    s3_endpoint_url: str | None = None
    s3_presign: bool = False
    # Lifetime of a presigned target URL (short: a leaked URL soon stops working; devices fetch at once).
    s3_presign_expiry: int = Field(default=300, ge=1, le=7 * 86400)
    # A CDN (or any static origin) serving the blob store's ``targets/`` folder: target downloads redirect
    # to ``{targets_cdn_url}/{sha256}.{name}``. Devices check every target's TUF length and hashes anyway.
    targets_cdn_url: str = ""
    # ``max-age`` of timestamp.json, the same for every device (0: no-store). A few seconds let a CDN
    # absorb a fleet's metadata polls; devices then see a new release that much later.
    timestamp_max_age: int = Field(default=0, ge=0, le=3600)
    key_dir: Path | None = None
    # The URL devices are told to use (enrolment answer: metadata and targets URLs). Empty (the default):
    # derived from how the server was started, see advertised_base_url.
    public_base_url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    migrate_on_start: bool = True
    token_secret: str = DEFAULT_SECRET
    # Database connections per process. The worker-thread limit of sync routes is set to their sum, so a
    # thread never waits for a connection (each request holds at most one, only while its thread runs).
    db_pool_size: int = Field(default=10, ge=1, le=1000)
    db_max_overflow: int = Field(default=30, ge=0, le=1000)
    db_pool_timeout: float = Field(default=30.0, gt=0)

    # Polling and expiry periods, in seconds.
    poll_interval: int = Field(default=60, ge=1)
    poll_jitter: int = Field(default=15, ge=0)
    assignment_expiry: int = Field(default=24 * 3600, ge=60)
    device_token_ttl: int = Field(default=900, ge=30)
    challenge_ttl: int = Field(default=120, ge=5)
    timestamp_expiry: int = Field(default=24 * 3600, ge=60)
    snapshot_expiry: int = Field(default=7 * 24 * 3600, ge=60)
    targets_expiry: int = Field(default=365 * 24 * 3600, ge=60)
    root_expiry: int = Field(default=365 * 24 * 3600, ge=60)
    # The background task re-signs timestamp/snapshot when less than this fraction of their life is left.
    resign_fraction: float = Field(default=0.5, gt=0, lt=1)
    resign_check_interval: float = Field(default=60.0, gt=0)
    # How often each process checks the shared generation counter to drop stale cached assignments.
    cache_refresh_interval: float = Field(default=0.5, gt=0)

    delta_base_count: int = Field(default=3, ge=0)
    max_artifact_bytes: int = Field(default=2 * 1024**3, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Self-test vectors (.npz) staged through PUT /v1/releases/selftest; streamed to disk, never held whole.
    max_selftest_bytes: int = Field(default=64 * 1024**2, ge=1024)
    # Slow clients: a request's headers must arrive within header_timeout seconds of the connection (or of
    # the previous request on a kept-alive one), an idle kept-alive connection closes after keep_alive_timeout
    # and a header block over max_header_bytes is refused.
    header_timeout: float = Field(default=10.0, gt=0)
    keep_alive_timeout: float = Field(default=5.0, gt=0)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    # Temp files of interrupted uploads and publishes older than this are swept at start and periodically.
    stale_temp_seconds: float = Field(default=3600.0, ge=0)
    temp_sweep_interval: float = Field(default=900.0, gt=0)
    # /docs, /redoc and /openapi.json: None means on in development, off in production.
    expose_docs: bool | None = None
    # /metrics needs an operator token with the read scope unless this is true.
    metrics_public: bool = False
    rollout_tick_interval: float = Field(default=10.0, gt=0)
    # How often each process looks for bulk assignment jobs (queued by rollout changes) to work on.
    assignment_job_interval: float = Field(default=1.0, gt=0)
    # Default phases of a rollout when the API or CLI gives none (EDGEFLEET_ROLLOUT_PHASES='[1,10,50,100]'),
    # and what each phase needs before it advances when the request leaves it out: a soak time and real
    # successes (at least one, and a share of the phase's cohort). Safe by default: see rollout_machine.
    rollout_phases: list[float] = Field(default_factory=lambda: list(DEFAULT_PERCENTS), min_length=1)
    rollout_min_soak_seconds: int = Field(default=DEFAULT_MIN_SOAK_SECONDS, ge=0)
    rollout_min_reports: int = Field(default=DEFAULT_MIN_REPORTS, ge=1)
    rollout_min_success_ratio: float = Field(default=DEFAULT_MIN_SUCCESS_RATIO, ge=0, le=1)
    # MQTT push nudges (ota.server.nudges): empty URL = off, devices learn of changes at their next poll.
    # mqtt[s]://[user[:password]@]host[:port]; EDGEFLEET_MQTT_USERNAME/_PASSWORD override the URL's.
    mqtt_url: str = ""
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_ca_file: Path | None = None  # CA bundle for mqtts:// (the system's CAs when unset)
    mqtt_topic_prefix: str = DEFAULT_TOPIC_PREFIX
    # Publishing pace (messages/s), the devices one change may nudge one by one before it nudges the
    # profile's topic instead, and how long a batch gathers changes (at least cache_refresh_interval).
    mqtt_rate: float = Field(default=500.0, gt=0)
    mqtt_fanout_max: int = Field(default=2000, ge=1)
    mqtt_coalesce_seconds: float = Field(default=0.5, ge=0)

    def phase(
        self,
        percent: float,
        *,
        min_soak_seconds: int | None = None,
        min_reports: int | None = None,
        min_success_ratio: float | None = None,
    ) -> Phase:
        """Build a phase, filling what the caller left out from these settings."""
        return Phase(
            percent,
            self.rollout_min_soak_seconds if min_soak_seconds is None else min_soak_seconds,
            self.rollout_min_reports if min_reports is None else min_reports,
            self.rollout_min_success_ratio if min_success_ratio is None else min_success_ratio,
        )

    def advertised_base_url(self, request_host: str | None = None, scheme: str = "http") -> str:
        """The base URL devices are told to use, without a trailing slash.

        ``EDGEFLEET_PUBLIC_BASE_URL`` when set. Otherwise derived from how the server was started: the
        bind host and port (``edgefleet server run --host/--port``, ``EDGEFLEET_HOST``/``EDGEFLEET_PORT``),
        or, when it binds every interface (0.0.0.0, ::), the Host header of the request being answered
        (the address the device itself reached us on; it is echoed only to that device).

        Args:
            request_host: The request's Host header, if any.
            scheme: The request's scheme (used with the Host header only).
        """
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        if self.host in WILDCARD_HOSTS:
            if request_host and _HOST_HEADER.match(request_host):
                return f"{scheme}://{request_host}"
            host = "127.0.0.1"
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def public_url_mismatch(self) -> str | None:
        """A warning when an explicit ``EDGEFLEET_PUBLIC_BASE_URL`` names another port than the bind port.

        Returns None when the URL is derived, or agrees. A reverse proxy in front of the server can make a
        different port right; the warning says so.
        """
        if not self.public_base_url:
            return None
        parts = urlsplit(self.public_base_url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return f"EDGEFLEET_PUBLIC_BASE_URL={self.public_base_url!r} has an invalid port"
        if port == self.port:
            return None
        return (
            f"EDGEFLEET_PUBLIC_BASE_URL={self.public_base_url} names port {port}, but the server listens on "
            f"port {self.port}: enrolling devices will be told the URL above. Unset it to derive the URL "
            "from --host/--port (right unless a proxy forwards from another port)."
        )

    def default_phases(self) -> list[Phase]:
        """Return the configured default phases."""
        return [self.phase(p) for p in self.rollout_phases]

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite under ``home``."""
        return self.database_url or f"sqlite:///{self.home / 'server.db'}"

    @property
    def resolved_blob_url(self) -> str:
        """The blob store URL, defaulting to a folder under ``home``."""
        return self.blob_url or (self.home / "blobs").as_uri()

    @property
    def resolved_key_dir(self) -> Path:
        """The key folder, defaulting to ``home/keys``."""
        return (self.key_dir or self.home / "keys").expanduser().resolve()

    @property
    def docs_enabled(self) -> bool:
        """Whether /docs, /redoc and /openapi.json are served (default: only in development)."""
        return self.development if self.expose_docs is None else self.expose_docs

    @property
    def temp_dir(self) -> Path:
        """The server's own temp folder (uploads, publish staging, delta building), swept for leftovers."""
        return self.home / "tmp"

    @property
    def development(self) -> bool:
        """True in development mode, where generated keys and secrets are allowed."""
        return self.mode == "development"


def load_settings(**overrides: object) -> ServerSettings:
    """Build settings from the environment (plus explicit overrides) and fill in development secrets.

    In development mode a missing token secret is generated once into ``home/token_secret`` (0600), and a
    weak one given explicitly is used with a warning. In production mode a weak secret (the default, short,
    or low-diversity: :func:`secret_weakness`) is refused.

    Args:
        **overrides: Field values that win over the environment (tests and the CLI use them).

    Returns:
        The settings.

    Raises:
        ConfigError: Production mode with a weak token secret, or the secret file cannot be written.
    """
    settings = ServerSettings(**overrides)  # type: ignore[arg-type]
    if settings.development and settings.token_secret == DEFAULT_SECRET:
        settings.token_secret = _development_secret(settings.home / "token_secret")
    weakness = secret_weakness(settings.token_secret)
    if weakness is not None:
        message = (
            f"EDGEFLEET_TOKEN_SECRET is too weak: {weakness}. It keys the MAC of every device poll token, "
            f"so a guessable secret lets anyone forge tokens offline. Make one with: {MAKE_SECRET}"
        )
        if not settings.development:
            raise ConfigError(message)
        log.warning("%s (accepted in development mode only)", message)
    return settings


def _development_secret(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(48)
    try:
        make_private_dir(path.parent)
        atomic_write_bytes(path, secret.encode(), mode=0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write development secret {path}: {exc}") from exc
    return secret


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing and make it owner-only (0700): server state is private.

    Raises:
        OSError: The folder cannot be created or its mode set.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path

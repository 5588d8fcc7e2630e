"""Everything one server process holds: settings, database, blob store, keys, repository, caches, metrics.

Built by :func:`build_context` from settings (never at import time); the app factory stores it on
``app.state.ctx`` and the hot-path middleware keeps a direct reference.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from ota.core.errors import DocumentFormatError
from ota.server.assignments import ValidityHolder
from ota.server.auth import DeviceTokens
from ota.server.blobstore import BlobStore, open_blob_store
from ota.server.db import (
    BUMPED_KEY,
    make_engine,
    make_session_factory,
    read_counter,
    run_migrations,
    transaction,
)
from ota.server.director import AssignmentCache, DirectorConfig
from ota.server.errors import ConfigError
from ota.server.keys import Keyring, ensure_keyring
from ota.server.metrics import Metrics
from ota.server.nudges import NudgePublisher, NullPublisher, attach, make_publisher
from ota.server.settings import ServerSettings, make_private_dir
from ota.server.tuf_repo import Expiries, ImageRepository

log = logging.getLogger(__name__)


@dataclass
class ServerContext:
    """The per-process state of the OTA server."""

    settings: ServerSettings
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    keyring: Keyring
    repository: ImageRepository
    tokens: DeviceTokens
    director: DirectorConfig
    cache: AssignmentCache = field(default_factory=AssignmentCache)
    metrics: Metrics = field(default_factory=Metrics)
    validity: ValidityHolder = field(default_factory=ValidityHolder)
    nudges: NudgePublisher = field(default_factory=NullPublisher)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Open a session in a transaction that commits when the block ends (rolls back on error).

        Routes open it inside their body, so the connection is committed and returned to the pool on the
        same worker thread, before the route returns. (A generator dependency kept it until FastAPI had
        validated the response on another worker thread: with every thread waiting for a connection,
        the server stalled with all connections idle in transaction.) When the transaction bumped the
        generation counter, this process's assignment cache learns the new generation at once; other
        processes learn it from their background poll.

        Yields:
            The session.
        """
        with self.sessions() as session:
            with session.begin():
                yield session
            bumped = session.info.get(BUMPED_KEY)
        if bumped is not None:
            self.cache.observe(int(bumped))

    def close(self) -> None:
        """Stop the nudge publisher and release database connections."""
        self.nudges.close()
        self.engine.dispose()


def build_context(settings: ServerSettings, *, migrate: bool | None = None) -> ServerContext:
    """Open the database (migrating if asked), blob store and keys, and initialise the TUF repository.

    Args:
        settings: The settings.
        migrate: Run migrations first (defaults to ``settings.migrate_on_start``).

    Returns:
        The context.

    Raises:
        ConfigError: Bad database/blob URL or a failed migration.
        KeyringError: Keys missing outside development mode, or development keys in production.
        BlobStoreError: The blob store is unreachable.
        RepositoryError: The repository cannot be initialised.
    """
    try:
        # The server's state (SQLite file, blobs, keys, secret, temp files) is private to its user.
        make_private_dir(settings.home)
        make_private_dir(settings.temp_dir)
    except OSError as exc:
        raise ConfigError(f"cannot create the state folder {settings.home}: {exc}") from exc
    engine = make_engine(
        settings.resolved_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
    )
    if settings.migrate_on_start if migrate is None else migrate:
        run_migrations(engine)
    sessions = make_session_factory(engine)
    keyring = ensure_keyring(settings.resolved_key_dir, development=settings.development)
    repository = ImageRepository(
        keyring=keyring,
        expiries=Expiries(
            root=settings.root_expiry,
            targets=settings.targets_expiry,
            snapshot=settings.snapshot_expiry,
            timestamp=settings.timestamp_expiry,
        ),
    )
    with transaction(sessions) as session:
        if repository.initialise(session):
            log.info("initialised the TUF image repository (version 1 of every role)")
        generation = read_counter(session)
    blobs = open_blob_store(
        settings.resolved_blob_url, endpoint_url=settings.s3_endpoint_url, presign=settings.s3_presign
    )
    context = ServerContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        blobs=blobs,
        keyring=keyring,
        repository=repository,
        tokens=DeviceTokens(
            secret=settings.token_secret,
            token_ttl=settings.device_token_ttl,
            challenge_ttl=settings.challenge_ttl,
        ),
        director=DirectorConfig(
            poll_interval=settings.poll_interval,
            poll_jitter=settings.poll_jitter,
            assignment_expiry=settings.assignment_expiry,
        ),
    )
    context.cache.observe(generation)
    try:
        context.nudges = make_publisher(
            sessions,
            url=settings.mqtt_url,
            username=settings.mqtt_username,
            password=settings.mqtt_password,
            ca_file=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
            prefix=settings.mqtt_topic_prefix,
            rate=settings.mqtt_rate,
            fanout_max=settings.mqtt_fanout_max,
            coalesce_s=max(settings.mqtt_coalesce_seconds, settings.cache_refresh_interval),
        )
    except DocumentFormatError as exc:
        raise ConfigError(f"EDGEFLEET_MQTT_URL / EDGEFLEET_MQTT_TOPIC_PREFIX: {exc}") from exc
    attach(sessions, lambda: context.nudges, observe=context.cache.observe)
    return context

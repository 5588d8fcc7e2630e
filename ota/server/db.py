"""Database plumbing of the OTA server: engine and session factory, migrations, counters and locks.

Built by the app factory or the CLI from settings, never at import time. Works on SQLite (WAL mode, a busy
timeout, so several processes can share the file) and PostgreSQL (psycopg 3; row locks and advisory locks).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ota.server.errors import ConfigError
from ota.server.models import AssignmentJob, Counter

GENERATION = "generation"
# Signed assignments (ota.server.assignments) older than this counter are stale for every device.
ASSIGNMENT_FLOOR = "assignment_floor"
# Bumped when a device joins the accepted fleet without a generation bump (auto-accepted enrolment).
FLEET = "fleet"
# session.info key under which bump_counter leaves the new generation for the cache to observe.
BUMPED_KEY = "edgefleet_generation"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def make_engine(
    url: str, *, pool_size: int = 10, max_overflow: int = 30, pool_timeout: float = 30.0
) -> Engine:
    """Create an engine for a SQLite or PostgreSQL URL with the settings this server relies on.

    Args:
        url: SQLAlchemy URL; ``postgresql://`` is mapped to the psycopg 3 driver.
        pool_size: Connections kept open (file SQLite and PostgreSQL).
        max_overflow: Extra connections opened under load.
        pool_timeout: Seconds a checkout waits for a free connection before failing.

    Returns:
        The engine.

    Raises:
        ConfigError: The URL is malformed or names an unsupported backend.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError for many shapes
        raise ConfigError(f"bad database URL {url!r}: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _create_private_file(Path(parsed.database))
        pool: dict[str, Any] = {}
        if parsed.database and parsed.database != ":memory:":
            # File SQLite uses a QueuePool (5 + 10 by default): size it like PostgreSQL's.
            pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
        engine = create_engine(
            parsed, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True, **pool
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql":
        if parsed.drivername in {"postgresql", "postgres"}:
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(
            parsed,
            pool_pre_ping=True,
            # Parameters (token hashes, report bodies) must never reach an error message or a log line.
            hide_parameters=True,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
        )
    raise ConfigError(f"unsupported database backend {backend!r}: use sqlite or postgresql")


def _create_private_file(path: Path) -> None:
    """Create the SQLite file owner-only (0600) before SQLite does; its -wal and -shm files copy its mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        path.chmod(0o600)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; the busy timeout makes writers wait instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return the session factory used by routes and services.

    Args:
        engine: The engine.

    Returns:
        A ``sessionmaker`` that does not expire objects on commit (responses read them afterwards).
    """
    return sessionmaker(engine, expire_on_commit=False)


def run_migrations(engine: Engine) -> None:
    """Upgrade the database to the newest Alembic revision, in process.

    Args:
        engine: The engine to migrate.

    Raises:
        ConfigError: The migration failed.
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise ConfigError(f"database migration failed: {exc}") from exc


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Open a session in a transaction that commits on success and rolls back on any error.

    Args:
        factory: The session factory.

    Yields:
        The session.
    """
    with factory() as session, session.begin():
        yield session


def read_counter(session: Session, name: str = GENERATION) -> int:
    """Read a named counter (0 when it was never bumped).

    Args:
        session: An open session.
        name: Counter name.

    Returns:
        Its value.
    """
    value = session.scalar(select(Counter.value).where(Counter.name == name))
    return int(value or 0)


def bump_counter(session: Session, name: str = GENERATION, *, scoped: bool = False) -> int:
    """Increase a named counter by one inside the caller's transaction and return the new value.

    The UPDATE takes the row lock, so concurrent bumps serialise and the counter never repeats.

    A generation bump is global by default: it also raises the assignment floor, so every shared signed
    assignment is re-signed (and a bulk job for all devices is queued). Callers whose change only concerns
    some devices (a rollout: its selector; an admission decision: one device) pass ``scoped=True`` and
    invalidate those themselves (see :mod:`ota.server.assignments`).

    Args:
        session: An open session inside a transaction.
        name: Counter name.
        scoped: Leave the assignment floor where it is (generation only).

    Returns:
        The new value.
    """
    result = session.execute(update(Counter).where(Counter.name == name).values(value=Counter.value + 1))
    if getattr(result, "rowcount", 0) == 0:
        session.add(Counter(name=name, value=1))
        session.flush()
        value = 1
    else:
        value = read_counter(session, name)
    if name == GENERATION:
        session.info[BUMPED_KEY] = value
        if not scoped:
            _raise_floor(session, value)
    return value


def _raise_floor(session: Session, value: int) -> None:
    result = session.execute(update(Counter).where(Counter.name == ASSIGNMENT_FLOOR).values(value=value))
    if getattr(result, "rowcount", 0) == 0:
        session.add(Counter(name=ASSIGNMENT_FLOOR, value=value))
    session.add(AssignmentJob(rollout_id=None, generation=value))
    session.flush()


def lock_name(session: Session, name: str) -> None:
    """Take a transaction-scoped exclusive lock on ``name`` (PostgreSQL advisory lock; SQLite: write lock).

    On SQLite, a write to the counters table makes the transaction the single writer until it ends,
    which serialises the same critical sections across processes.

    Args:
        session: An open session inside a transaction.
        name: What to lock (for example ``"tuf"`` or ``"rollout:<id>"``).
    """
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        bump_counter(session, f"lock:{name}"[:64])


def try_lock_name(session: Session, name: str) -> bool:
    """Try to take a transaction-scoped exclusive lock on ``name`` without waiting.

    PostgreSQL: ``pg_try_advisory_xact_lock`` (released when the transaction ends, also when its process
    dies and the connection drops). SQLite: the database write lock (waits up to the busy timeout, then
    holds it), so the caller runs alone there too.

    Returns:
        True when this transaction holds the lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}))
    bump_counter(session, f"lock:{name}"[:64])
    return True

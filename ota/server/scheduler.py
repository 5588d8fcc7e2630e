"""The rollout scheduler tick, run by one server process at a time across all processes and hosts.

Every process calls :func:`scheduler_tick` on its interval; the one that takes the PostgreSQL advisory
lock ``rollout-scheduler`` (``pg_try_advisory_xact_lock``, held by a guard transaction for the whole tick)
ticks every active rollout, the others skip this round. When the ticking process dies, its connection
drops, PostgreSQL releases the lock, and the next process's tick runs: no tick is lost for longer than one
interval. Each rollout is still changed under its row lock with a re-read (:mod:`ota.server.rollouts`), so
even without the guard a phase could not advance twice from the same state.

On SQLite (one host, a single writer) no guard is taken: holding the write lock for the tick would block
the tick's own transactions, and the row re-read under the write lock already serialises the changes.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from ota.server.db import BUMPED_KEY, transaction, try_lock_name
from ota.server.rollout_machine import RolloutEvent
from ota.server.rollouts import active_rollout_ids, tick_rollout

LOCK = "rollout-scheduler"


def scheduler_tick(
    sessions: sessionmaker[Session], *, now: datetime | None = None
) -> tuple[dict[str, RolloutEvent | None], int | None] | None:
    """Tick every active rollout once, unless another process holds the scheduler lock.

    Args:
        sessions: The session factory.
        now: Current time (tests).

    Returns:
        None when another process is ticking; else the event applied to each rollout and the newest
        generation a tick bumped (None when none did).
    """
    with sessions() as guard, guard.begin():
        if guard.get_bind().dialect.name == "postgresql" and not try_lock_name(guard, LOCK):
            return None
        ids = active_rollout_ids(guard)
        events: dict[str, RolloutEvent | None] = {}
        bumped: int | None = None
        for rollout_id in ids:
            with transaction(sessions) as session:
                events[rollout_id] = tick_rollout(session, rollout_id, now=now)
                value = session.info.get(BUMPED_KEY)
            if value is not None:
                bumped = max(bumped or 0, int(value))
        return events, bumped

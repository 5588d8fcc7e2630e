"""Two server processes ticking the same rollout on one PostgreSQL never double-advance a phase."""

from __future__ import annotations

import multiprocessing as mp
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from ota.server.db import make_engine, make_session_factory, run_migrations, transaction
from ota.server.models import AuditEntry, Device, Release, Rollout, RolloutDevice
from ota.server.rollout_machine import Phase
from ota.server.rollouts import create_rollout, tick_rollout

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _tick_worker(url: str, rollout_id: str, barrier: Any, results: Any) -> None:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    barrier.wait(timeout=30)
    for _ in range(5):
        with transaction(factory) as session:
            event = tick_rollout(session, rollout_id, now=NOW)
        results.put(event.value if event else None)
    engine.dispose()


def test_two_processes_do_not_double_advance(pg_url: str) -> None:
    engine = make_engine(pg_url)
    run_migrations(engine)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        session.add(
            Release(
                id="rel-x",
                model="m",
                version="1",
                profile="cpu-generic",
                sha256="a" * 64,
                length=1,
                target_name="m-1-cpu-generic.onnx",
            )
        )
        session.flush()
        rollout = create_rollout(
            session,
            release_id="rel-x",
            phases=[Phase(10, 60, 0), Phase(50, 60, 0), Phase(100, 60, 0)],
            actor="test",
            now=NOW - timedelta(seconds=120),
        )
        rollout_id = rollout.id
        # One accepted device that committed: the first phase may advance (once), whether or not its
        # cohort holds the device.
        session.add(
            Device(
                id="dev-1",
                public_key={},
                keyid="0" * 64,
                hardware_profile="cpu-generic",
                hardware={},
                tags=[],
                state="accepted",
            )
        )
        session.flush()
        session.add(
            RolloutDevice(
                rollout_id=rollout_id,
                device_id="dev-1",
                status="committed",
                phase_index=0,
                started_at=NOW,
                updated_at=NOW,
            )
        )
    # fork: the worker lives in this test module, which a spawned child could not import by name.
    engine.dispose()
    context = mp.get_context("fork")
    barrier = context.Barrier(2)
    results = context.Queue()
    workers = [
        context.Process(target=_tick_worker, args=(pg_url, rollout_id, barrier, results)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    events = [results.get(timeout=5) for _ in range(10)]
    assert events.count("advance") == 1, events
    with factory() as session:
        stored = session.get(Rollout, rollout_id)
        assert stored is not None and stored.phase_index == 1
        advances = session.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "rollout.advance")
        )
        assert advances == 1
    engine.dispose()

"""Shared signed assignments on SQLite and PostgreSQL: bulk jobs sign what a poll would, once, and resume.

Real database, real signatures, the agent's own verification (``ota.core.manifest.verify_assignment``, which
``ota.edge.agent`` calls on every assignment it receives).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from ota.core.manifest import verify_assignment
from ota.server import assignments
from ota.server.assignments import run_jobs, serve_assignment
from ota.server.context import ServerContext, build_context
from ota.server.db import FLEET, bump_counter, transaction, try_lock_name
from ota.server.director import build_answer
from ota.server.models import (
    AssignmentJob,
    AssignmentJobSlice,
    Device,
    Release,
    RolloutDevice,
    SignedAssignment,
)
from ota.server.rollout_machine import Phase, RolloutEvent, in_cohort
from ota.server.rollouts import control_rollout, create_rollout
from ota.server.scheduler import LOCK, scheduler_tick

from .conftest import settings_for

DEVICES = 60


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("pg_url"))


def _context(tmp_path: Path, database: str) -> ServerContext:
    return build_context(
        settings_for(
            tmp_path, database_url=database, assignment_job_interval=3600, cache_refresh_interval=3600
        )
    )


@pytest.fixture
def ctx(tmp_path: Path, database: str) -> Iterator[ServerContext]:
    context = _context(tmp_path, database)
    _fleet(context, DEVICES)
    yield context
    context.close()


def _fleet(ctx: ServerContext, count: int) -> None:
    with transaction(ctx.sessions) as session:
        for release_id, version, digit in (("rel-1", "1", "a"), ("rel-2", "2", "b")):
            session.add(
                Release(
                    id=release_id,
                    model="m",
                    version=version,
                    profile="cpu-generic",
                    sha256=digit * 64,
                    length=10,
                    target_name=f"m-{version}.onnx",
                )
            )
        session.execute(
            insert(Device),
            [
                {
                    "id": f"dev-{i:04d}",
                    "public_key": {},
                    "keyid": "0" * 64,
                    "hardware_profile": "cpu-generic",
                    "hardware": {},
                    "tags": [],
                    "state": "accepted",
                }
                for i in range(count)
            ],
        )
        bump_counter(session, FLEET)


def _start(ctx: ServerContext, percent: float = 50) -> str:
    with transaction(ctx.sessions) as session:
        return create_rollout(
            session, release_id="rel-2", phases=[Phase(percent), Phase(100)], actor="test"
        ).id


def _signed_total(*contexts: ServerContext) -> int:
    return sum(c.metrics.assignments_signed for c in contexts)


def test_bulk_signed_assignment_is_the_poll_time_one_and_verifies_on_the_agent(ctx: ServerContext) -> None:
    rollout_id = _start(ctx)
    now = time.time()
    stats = run_jobs(ctx, chunk=7, now=now)
    assert stats.signed == DEVICES and _signed_total(ctx) == DEVICES
    key = ctx.keyring.public_keys("director")[0]
    with ctx.sessions() as session:
        rows = {r.device_id: r for r in session.scalars(select(SignedAssignment))}
        assert len(rows) == DEVICES
        cohort = 0
        for device_id, row in rows.items():
            fresh = build_answer(
                session,
                device_id=device_id,
                current_sha256=None,
                signer=ctx.keyring.signer("director"),
                config=ctx.director,
                now=now,
            )
            assert row.body == fresh.body and row.etag.encode() == fresh.etag
            assignment = verify_assignment(
                row.body, key, device_id=device_id, hardware_profile="cpu-generic", now=datetime.now(UTC)
            )
            inside = in_cohort(device_id, rollout_id, 50)
            cohort += inside
            assert assignment.release_id == ("rel-2" if inside else None)
            assert assignment.rollout_id == rollout_id
        assert 0 < cohort < DEVICES
        job = session.scalar(select(AssignmentJob).where(AssignmentJob.rollout_id == rollout_id))
        assert job is not None and job.done_at is not None
    # Polls are answered from the table: nothing is signed again, the bytes are the stored ones.
    for device_id, row in rows.items():
        assert serve_assignment(ctx, device_id, None, now).body == row.body
    assert _signed_total(ctx) == DEVICES and ctx.metrics.assignments_shared == DEVICES


def test_a_rollout_change_makes_stored_assignments_stale_for_its_selector(ctx: ServerContext) -> None:
    rollout_id = _start(ctx)
    run_jobs(ctx)
    with transaction(ctx.sessions) as session:
        control_rollout(session, rollout_id, RolloutEvent.ABORT, actor="test")
        generation = session.info["edgefleet_generation"]
    ctx.cache.observe(generation)
    key = ctx.keyring.public_keys("director")[0]
    # Before the job ran: each poll signs the new answer at once (abort is a safety action) ...
    for i in range(0, DEVICES, 5):
        now = time.time()
        body = serve_assignment(ctx, f"dev-{i:04d}", None, now).body
        answer = verify_assignment(body, key, device_id=f"dev-{i:04d}", now=datetime.now(UTC))
        assert answer.release_id is None and answer.counter == generation
        with ctx.sessions() as session:  # the poll-time answer is the one the ORM decision signs
            signer = ctx.keyring.signer("director")
            assert (
                body
                == build_answer(
                    session,
                    device_id=f"dev-{i:04d}",
                    current_sha256=None,
                    signer=signer,
                    config=ctx.director,
                    now=now,
                ).body
            )
    signed = _signed_total(ctx)
    assert signed == DEVICES + DEVICES // 5
    # ... and the job signs only the others.
    assert run_jobs(ctx).signed == DEVICES - DEVICES // 5


def test_two_workers_never_sign_the_same_assignment(tmp_path: Path, pg_url: str) -> None:
    first, second = _context(tmp_path, pg_url), _context(tmp_path, pg_url)
    try:
        _fleet(first, DEVICES)
        rollout_id = _start(first)
        workers = [threading.Thread(target=run_jobs, args=(c,), kwargs={"chunk": 3}) for c in (first, second)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert first.metrics.assignments_signed > 0 and second.metrics.assignments_signed > 0
        assert _signed_total(first, second) == DEVICES
        # Advance: both workers poll every device at once, before any job ran; each is signed once.
        with transaction(first.sessions) as session:
            control_rollout(session, rollout_id, RolloutEvent.ADVANCE, actor="test")
            generation = session.info["edgefleet_generation"]
        for context in (first, second):
            context.cache.observe(generation)
        ids = [f"dev-{i:04d}" for i in range(DEVICES)]
        with ThreadPoolExecutor(8) as pool:
            bodies = list(
                pool.map(
                    lambda a: serve_assignment(a[0], a[1], None, time.time()).body,
                    [(c, d) for d in ids for c in (first, second)],
                )
            )
        assert all(bodies[i] == bodies[i + 1] for i in range(0, len(bodies), 2))
        assert _signed_total(first, second) == 2 * DEVICES
        workers = [threading.Thread(target=run_jobs, args=(c,)) for c in (first, second)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert _signed_total(first, second) == 2 * DEVICES  # the job found every row already fresh
    finally:
        first.close()
        second.close()


def _killed_worker(tmp_path: Path, url: str) -> None:
    context = _context(tmp_path, url)
    real = assignments.store_rows
    calls = {"n": 0}

    def store_then_die(session: Any, rows: list[dict[str, Any]]) -> None:
        real(session, rows)
        calls["n"] += 1
        if calls["n"] == 4:  # rows written, transaction not committed: killed mid-chunk
            os.kill(os.getpid(), signal.SIGKILL)

    assignments.store_rows = store_then_die
    run_jobs(context, chunk=5)


def test_a_killed_worker_loses_nothing(tmp_path: Path, pg_url: str) -> None:
    ctx = _context(tmp_path, pg_url)
    try:
        _fleet(ctx, DEVICES)
        _start(ctx)
        process = mp.get_context("fork").Process(target=_killed_worker, args=(tmp_path, pg_url))
        process.start()
        process.join(timeout=120)
        assert process.exitcode == -signal.SIGKILL
        with ctx.sessions() as session:
            # The three committed chunks are there; the fourth, killed before its commit, left nothing.
            stored = int(session.scalar(select(func.count()).select_from(SignedAssignment)) or 0)
            assert stored == session.scalar(select(func.sum(AssignmentJobSlice.signed)))
            assert 0 < stored < DEVICES
        stats = run_jobs(ctx, chunk=5)
        assert stats.signed == DEVICES - stored  # resumed from the stored cursors: none twice, none lost
        with ctx.sessions() as session:
            assert session.scalar(select(func.count()).select_from(SignedAssignment)) == DEVICES
            assert session.scalar(select(func.count()).where(AssignmentJob.done_at.is_(None))) == 0
    finally:
        ctx.close()


def test_two_schedulers_one_advance_and_none_missed_when_one_dies(tmp_path: Path, pg_url: str) -> None:
    ctx = _context(tmp_path, pg_url)
    try:
        _fleet(ctx, 4)
        with transaction(ctx.sessions) as session:
            rollout_id = create_rollout(
                session,
                release_id="rel-2",
                phases=[Phase(100, 0, 1, 0)],
                actor="test",
            ).id
            device = next(f"dev-{i:04d}" for i in range(4) if in_cohort(f"dev-{i:04d}", rollout_id, 100))
            session.add(
                RolloutDevice(rollout_id=rollout_id, device_id=device, status="committed", phase_index=0)
            )
        holder = ctx.sessions()
        holder.begin()
        assert try_lock_name(holder, LOCK)  # a worker is ticking (and will die holding the lock)
        other = _context(tmp_path, pg_url)
        try:
            assert scheduler_tick(other.sessions) is None  # skipped: no second tick at the same time
            holder.connection().invalidate()  # the ticking worker dies: its connection drops
            holder.close()
            result = scheduler_tick(other.sessions)
            assert result is not None and result[0] == {rollout_id: RolloutEvent.ADVANCE}
        finally:
            other.close()
    finally:
        ctx.close()


def test_the_tick_reuses_the_cohort_size_the_job_counted(
    ctx: ServerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ota.server import rollouts

    rollout_id = _start(ctx, percent=50)
    run_jobs(ctx)
    with ctx.sessions() as session:
        expected = sum(in_cohort(f"dev-{i:04d}", rollout_id, 50) for i in range(DEVICES))
        assert rollouts.cohort_size(session, session.get_one(rollouts.Rollout, rollout_id)) == expected

    def no_scan(*_: Any) -> None:
        raise AssertionError("the cohort was scanned")

    monkeypatch.setattr(rollouts, "cohort_size", no_scan)
    with transaction(ctx.sessions) as session:
        rollout = session.get_one(rollouts.Rollout, rollout_id)
        assert rollouts.counted_cohort_size(session, rollout) == expected
        bump_counter(session, FLEET)  # a device enrolled: the next count must scan again
    with transaction(ctx.sessions) as session, pytest.raises(AssertionError, match="scanned"):
        rollouts.counted_cohort_size(session, session.get_one(rollouts.Rollout, rollout_id))

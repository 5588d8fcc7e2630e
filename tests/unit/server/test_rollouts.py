"""Rollout service on SQLite: auto-advance, auto-abort with rollback to the previous release, timeouts,
one active rollout per selector, and what the director assigns in each case."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from ota.core.errors import ReplayError
from ota.core.manifest import Assignment, ReportStatus, verify_assignment
from ota.server.context import ServerContext
from ota.server.db import FLEET, bump_counter, transaction
from ota.server.director import build_answer, decide_release
from ota.server.errors import ConflictError
from ota.server.models import AuditEntry, Device, Release, Rollout
from ota.server.releases import publish_release
from ota.server.rollout_machine import Phase, RolloutEvent, in_cohort
from ota.server.rollouts import (
    active_rollout_ids,
    control_rollout,
    counters,
    create_rollout,
    record_device_status,
    tick_rollout,
)

NOW = datetime.now(UTC)


def publish(ctx: ServerContext, tmp_path: Path, version: str) -> str:
    artifact = tmp_path / f"model-{version}.onnx"
    artifact.write_bytes(f"model {version} ".encode() * 50)
    result = publish_release(
        artifact_format="raw",
        factory=ctx.sessions,
        blobs=ctx.blobs,
        repository=ctx.repository,
        artifact=artifact,
        model="net",
        version=version,
        profile="cpu-generic",
        delta_base_count=0,
    )
    return result.release.id


def add_devices(ctx: ServerContext, count: int) -> list[str]:
    ids = [f"d{i:04d}" for i in range(count)]
    with transaction(ctx.sessions) as session:
        for device_id in ids:
            session.add(
                Device(
                    id=device_id,
                    public_key={},
                    keyid="0" * 64,
                    hardware_profile="cpu-generic",
                    hardware={},
                    tags=["fleet-a"],
                    state="accepted",
                )
            )
        bump_counter(session, FLEET)  # as enrolment does: cached cohort sizes are counted again
    return ids


def report(
    ctx: ServerContext,
    rollout_id: str,
    device_id: str,
    status: ReportStatus,
    at: datetime = NOW,
    release_id: str | None = None,
) -> None:
    """Record a report about the rollout's own release (or ``release_id``)."""
    with transaction(ctx.sessions) as session:
        rollout = session.get(Rollout, rollout_id)
        record_device_status(
            session,
            rollout_id=rollout_id,
            device_id=device_id,
            release_id=release_id or (rollout.release_id if rollout else None),
            status=status.value,
            now=at,
        )


def tick(ctx: ServerContext, rollout_id: str, at: datetime = NOW) -> RolloutEvent | None:
    with transaction(ctx.sessions) as session:
        return tick_rollout(session, rollout_id, now=at)


def state_of(ctx: ServerContext, rollout_id: str) -> tuple[str, int]:
    with ctx.sessions() as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        return rollout.state, rollout.phase_index


def assigned(ctx: ServerContext, device_id: str) -> str | None:
    with ctx.sessions() as session:
        device = session.get(Device, device_id)
        assert device is not None
        release, _rollout, _rollback = decide_release(session, device)
        return release.id if release else None


@pytest.fixture
def fleet(ctx: ServerContext, tmp_path: Path) -> dict[str, object]:
    v1 = publish(ctx, tmp_path, "1")
    v2 = publish(ctx, tmp_path, "2")
    devices = add_devices(ctx, 200)
    with transaction(ctx.sessions) as session:
        first = create_rollout(session, release_id=v1, phases=[Phase(100)], actor="test", now=NOW).id
    assert tick(ctx, first) is None  # no success yet: a phase never advances on time alone
    with transaction(ctx.sessions) as session:
        control_rollout(session, first, RolloutEvent.ADVANCE, actor="op")
    assert state_of(ctx, first) == ("completed", 0)
    with transaction(ctx.sessions) as session:
        second = create_rollout(
            session,
            release_id=v2,
            phases=[Phase(10, 60, 2, 0), Phase(50, 60, 5, 0), Phase(100)],
            failure_threshold=0.2,
            min_reports_for_abort=5,
            progress_timeout=600,
            actor="test",
            now=NOW + timedelta(microseconds=1),
        ).id
    return {"v1": v1, "v2": v2, "devices": devices, "rollout": second}


def test_auto_advance_after_soak_and_successes(ctx: ServerContext, fleet: dict) -> None:
    rollout = fleet["rollout"]
    cohort = [d for d in fleet["devices"] if in_cohort(d, rollout, 10)]
    outside = [d for d in fleet["devices"] if not in_cohort(d, rollout, 50)]
    assert cohort and outside
    assert all(assigned(ctx, d) == fleet["v2"] for d in cohort)
    assert all(assigned(ctx, d) == fleet["v1"] for d in outside)
    for device in cohort[:2]:
        report(ctx, rollout, device, ReportStatus.COMMITTED)
    assert tick(ctx, rollout, NOW + timedelta(seconds=30)) is None  # not soaked yet
    assert tick(ctx, rollout, NOW + timedelta(seconds=61)) is RolloutEvent.ADVANCE
    assert state_of(ctx, rollout) == ("running", 1)
    # The phase clock restarted: a second tick at the same moment does not advance again.
    assert tick(ctx, rollout, NOW + timedelta(seconds=62)) is None
    assert state_of(ctx, rollout) == ("running", 1)


def test_auto_abort_sends_devices_back_to_previous_release(ctx: ServerContext, fleet: dict) -> None:
    rollout = fleet["rollout"]
    cohort = [d for d in fleet["devices"] if in_cohort(d, rollout, 10)]
    assert len(cohort) >= 5
    for device in cohort[:3]:
        report(ctx, rollout, device, ReportStatus.COMMITTED)
    for device in cohort[3:5]:
        report(ctx, rollout, device, ReportStatus.HEALTH_CHECK_FAILED)
    assert tick(ctx, rollout) is RolloutEvent.ABORT  # 2 of 5 = 40 % > 20 %
    assert state_of(ctx, rollout)[0] == "aborted"
    assert all(assigned(ctx, d) == fleet["v1"] for d in fleet["devices"])


def test_failure_rule_waits_for_minimum_reports(ctx: ServerContext, fleet: dict) -> None:
    rollout = fleet["rollout"]
    cohort = [d for d in fleet["devices"] if in_cohort(d, rollout, 10)]
    for device in cohort[:4]:
        report(ctx, rollout, device, ReportStatus.ROLLED_BACK)
    assert tick(ctx, rollout) is None
    assert state_of(ctx, rollout)[0] == "running"


def test_stuck_devices_time_out_and_count_as_failures(ctx: ServerContext, fleet: dict) -> None:
    rollout = fleet["rollout"]
    cohort = [d for d in fleet["devices"] if in_cohort(d, rollout, 10)]
    for device in cohort[:5]:
        report(ctx, rollout, device, ReportStatus.DOWNLOADING)
    with ctx.sessions() as session:
        assert counters(session, rollout).in_progress == 5
    assert tick(ctx, rollout, NOW + timedelta(seconds=300)) is None
    assert tick(ctx, rollout, NOW + timedelta(seconds=601)) is RolloutEvent.ABORT
    with ctx.sessions() as session:
        assert counters(session, rollout).failed == 5


def test_repeated_status_is_idempotent(ctx: ServerContext, fleet: dict) -> None:
    rollout = fleet["rollout"]
    device = next(d for d in fleet["devices"] if in_cohort(d, rollout, 10))
    for _ in range(3):
        report(ctx, rollout, device, ReportStatus.COMMITTED)
    with ctx.sessions() as session:
        assert counters(session, rollout).succeeded == 1


def test_one_active_rollout_per_selector(ctx: ServerContext, fleet: dict) -> None:
    with transaction(ctx.sessions) as session, pytest.raises(ConflictError):
        create_rollout(session, release_id=fleet["v1"], actor="test")
    # A different selector (a tag) is allowed alongside.
    with transaction(ctx.sessions) as session:
        create_rollout(session, release_id=fleet["v1"], tags=("fleet-a",), actor="test")


def test_manual_pause_resume_rollback(ctx: ServerContext, fleet: dict) -> None:
    rollout = fleet["rollout"]
    for event, state in (("pause", "paused"), ("resume", "running"), ("rollback", "rolled-back")):
        with transaction(ctx.sessions) as session:
            assert control_rollout(session, rollout, RolloutEvent(event), actor="op").state == state
    assert all(assigned(ctx, d) == fleet["v1"] for d in fleet["devices"][:50])
    with ctx.sessions() as session:
        assert session.get(Release, fleet["v1"]) is not None


def test_late_progress_report_does_not_undo_an_outcome(ctx: ServerContext, fleet: dict) -> None:
    rollout = fleet["rollout"]
    device = next(d for d in fleet["devices"] if in_cohort(d, rollout, 10))
    report(ctx, rollout, device, ReportStatus.COMMITTED)
    report(ctx, rollout, device, ReportStatus.INSTALLED)
    with ctx.sessions() as session:
        assert counters(session, rollout).succeeded == 1
    report(ctx, rollout, device, ReportStatus.ROLLED_BACK)
    with ctx.sessions() as session:
        assert counters(session, rollout) == type(counters(session, rollout))(succeeded=0, failed=1)


def test_reports_for_a_rollout_not_targeting_the_device_are_ignored(ctx: ServerContext, fleet: dict) -> None:
    with transaction(ctx.sessions) as session:
        session.add(
            Device(
                id="other-profile",
                public_key={},
                keyid="0" * 64,
                hardware_profile="arm64",
                hardware={},
                tags=[],
                state="accepted",
            )
        )
    report(ctx, fleet["rollout"], "other-profile", ReportStatus.HEALTH_CHECK_FAILED)
    with ctx.sessions() as session:
        assert counters(session, fleet["rollout"]).failed == 0


def signed_assignment(ctx: ServerContext, device_id: str, installed_seq: int | None = None) -> Assignment:
    """Build the director's signed answer and check it the way an agent does."""
    with ctx.sessions() as session:
        answer = build_answer(
            session,
            device_id=device_id,
            current_sha256=None,
            signer=ctx.keyring.signer("director"),
            config=ctx.director,
        )
    return verify_assignment(
        answer.body,
        ctx.keyring.public_keys("director")[0],
        device_id=device_id,
        installed_release_seq=installed_seq,
    )


def test_release_seq_orders_releases_and_running_rollout_sets_no_rollback_flag(
    ctx: ServerContext, fleet: dict
) -> None:
    rollout = fleet["rollout"]
    inside = next(d for d in fleet["devices"] if in_cohort(d, rollout, 10))
    outside = next(d for d in fleet["devices"] if not in_cohort(d, rollout, 10))
    new, old = signed_assignment(ctx, inside), signed_assignment(ctx, outside)
    assert (new.release_id, old.release_id) == (fleet["v2"], fleet["v1"])
    assert new.release_seq is not None and old.release_seq is not None
    assert old.release_seq < new.release_seq
    assert not new.rollback and not old.rollback
    # A device that already runs v2 and is told to run v1 without the flag refuses it.
    with pytest.raises(ReplayError, match="rollback flag"):
        signed_assignment(ctx, outside, installed_seq=new.release_seq)


@pytest.mark.parametrize("how", ["auto-abort", "manual-abort", "manual-rollback"])
def test_reverting_a_rollout_flags_the_previous_release_as_rollback(
    ctx: ServerContext, fleet: dict, how: str
) -> None:
    rollout = fleet["rollout"]
    cohort = [d for d in fleet["devices"] if in_cohort(d, rollout, 10)]
    installed = signed_assignment(ctx, cohort[0])
    assert installed.release_id == fleet["v2"] and not installed.rollback
    if how == "auto-abort":
        for device in cohort[:5]:
            report(ctx, rollout, device, ReportStatus.HEALTH_CHECK_FAILED)
        assert tick(ctx, rollout) is RolloutEvent.ABORT
    else:
        event = RolloutEvent.ABORT if how == "manual-abort" else RolloutEvent.ROLLBACK
        with transaction(ctx.sessions) as session:
            control_rollout(session, rollout, event, actor="test")
    back = signed_assignment(ctx, cohort[0], installed_seq=installed.release_seq)
    assert back.release_id == fleet["v1"]
    assert back.rollback is True
    assert back.release_seq is not None and installed.release_seq is not None
    assert back.release_seq < installed.release_seq


def test_a_phase_waits_for_no_more_successes_than_its_cohort_holds(
    ctx: ServerContext, tmp_path: Path
) -> None:
    # A 0.5 % phase of 200 devices holds about one device, whatever its min_reports says; waiting for ten
    # successes would stall the rollout for ever.
    release = publish(ctx, tmp_path, "1")
    devices = add_devices(ctx, 200)
    with transaction(ctx.sessions) as session:
        rollout = create_rollout(
            session, release_id=release, phases=[Phase(0.5, 0, 10), Phase(100)], actor="test", now=NOW
        ).id
    cohort = [d for d in devices if in_cohort(d, rollout, 0.5)]
    assert len(cohort) < 10
    for device in cohort[:-1]:
        report(ctx, rollout, device, ReportStatus.COMMITTED)
    if cohort:  # one device of the cohort has not succeeded yet: keep waiting for it
        assert tick(ctx, rollout, NOW + timedelta(seconds=1)) is None
        report(ctx, rollout, cohort[-1], ReportStatus.COMMITTED)
    assert tick(ctx, rollout, NOW + timedelta(seconds=2)) is RolloutEvent.ADVANCE
    assert state_of(ctx, rollout) == ("running", 1)
    with ctx.sessions() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.subject == rollout)).all()[-1]
    assert f"(cohort {len(cohort)} device(s))" in entry.details["reason"]


def test_a_rollout_started_before_its_fleet_enrols_waits_for_it(ctx: ServerContext, tmp_path: Path) -> None:
    release = publish(ctx, tmp_path, "1")
    with transaction(ctx.sessions) as session:
        rollout = create_rollout(
            session, release_id=release, phases=[Phase(10, 0, 2, 0), Phase(100)], actor="test", now=NOW
        ).id
    assert tick(ctx, rollout, NOW + timedelta(seconds=5)) is None  # no device at all: nothing to learn yet
    devices = add_devices(ctx, 40)
    cohort = [d for d in devices if in_cohort(d, rollout, 10)]
    assert tick(ctx, rollout, NOW + timedelta(seconds=6)) is (None if cohort else RolloutEvent.ADVANCE)
    for device in cohort[:2]:
        report(ctx, rollout, device, ReportStatus.COMMITTED)
    assert tick(ctx, rollout, NOW + timedelta(seconds=7)) is RolloutEvent.ADVANCE


def test_a_default_rollout_never_advances_without_reports(ctx: ServerContext, tmp_path: Path) -> None:
    """Issue 9, defect 1: percentages only (the README's `--phases 1,10,50,100`) used to race through every
    phase on ticks alone; now each phase soaks and waits for real successes."""
    release = publish(ctx, tmp_path, "1")
    devices = add_devices(ctx, 1000)  # the 1 % cohort holds about ten (empty with odds of 4e-5)
    with transaction(ctx.sessions) as session:
        rollout = create_rollout(
            session, release_id=release, phases=[Phase(p) for p in (1, 10, 50, 100)], actor="test", now=NOW
        ).id
    for minutes in (1, 5, 60, 24 * 60):
        assert tick(ctx, rollout, NOW + timedelta(minutes=minutes)) is None
    assert state_of(ctx, rollout) == ("running", 0)
    cohort = [d for d in devices if in_cohort(d, rollout, 1)]
    assert cohort
    half = (len(cohort) + 1) // 2
    for device in cohort[: half - 1]:
        report(ctx, rollout, device, ReportStatus.COMMITTED)
    assert tick(ctx, rollout, NOW + timedelta(days=2)) is None  # one short of half the cohort
    report(ctx, rollout, cohort[half - 1], ReportStatus.COMMITTED)
    assert tick(ctx, rollout, NOW + timedelta(days=2)) is RolloutEvent.ADVANCE
    assert state_of(ctx, rollout) == ("running", 1)
    # The 10 % phase started now and needs half of its cohort.
    later = NOW + timedelta(days=2, minutes=2)
    assert tick(ctx, rollout, later) is None


def test_a_completed_rollout_still_rolls_back_on_late_failures(ctx: ServerContext, fleet: dict) -> None:
    """Issue 9, defect 1: failure reports arriving after completion used to be ignored."""
    rollout = fleet["rollout"]
    with transaction(ctx.sessions) as session:
        for _ in range(3):
            control_rollout(session, rollout, RolloutEvent.ADVANCE, actor="op")
    assert state_of(ctx, rollout)[0] == "completed"
    with ctx.sessions() as session:
        assert rollout in active_rollout_ids(session)
    devices = fleet["devices"]
    for device in devices[:4]:
        report(ctx, rollout, device, ReportStatus.COMMITTED)
    for device in devices[4:8]:
        report(ctx, rollout, device, ReportStatus.HEALTH_CHECK_FAILED)
    assert tick(ctx, rollout) is RolloutEvent.ROLLBACK  # 4 of 8 = 50 % > 20 %
    assert state_of(ctx, rollout)[0] == "rolled-back"
    assert all(assigned(ctx, d) == fleet["v1"] for d in devices)
    with ctx.sessions() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.subject == rollout)).all()[-1]
        assert entry.actor == "auto" and "after completion" in entry.details["reason"]
        assert rollout not in active_rollout_ids(session)


def test_a_superseded_completed_rollout_is_not_watched(ctx: ServerContext, fleet: dict) -> None:
    # The fixture's first rollout completed, then the second took its selector.
    with ctx.sessions() as session:
        first = session.scalars(select(Rollout.id).where(Rollout.release_id == fleet["v1"])).one()
        watched = active_rollout_ids(session)
    assert fleet["rollout"] in watched and first not in watched


def _set_state(ctx: ServerContext, device_id: str, state: str) -> None:
    with transaction(ctx.sessions) as session:
        device = session.get(Device, device_id)
        assert device is not None
        device.state = state


def test_only_devices_the_rollout_targeted_count(ctx: ServerContext, fleet: dict) -> None:
    """Issue 9, defect 5: reports from devices outside the cohort, not accepted, or about another release
    used to count (devices outside a 1 % cohort aborted it)."""
    rollout = fleet["rollout"]
    inside = [d for d in fleet["devices"] if in_cohort(d, rollout, 10)]
    outside = [d for d in fleet["devices"] if not in_cohort(d, rollout, 10)]
    for device in outside[:10]:
        report(ctx, rollout, device, ReportStatus.HEALTH_CHECK_FAILED)
    report(ctx, rollout, inside[0], ReportStatus.HEALTH_CHECK_FAILED, release_id=fleet["v1"])
    _set_state(ctx, inside[1], "pending")
    report(ctx, rollout, inside[1], ReportStatus.HEALTH_CHECK_FAILED)
    with ctx.sessions() as session:
        assert counters(session, rollout) == type(counters(session, rollout))()
    assert tick(ctx, rollout) is None
    assert state_of(ctx, rollout) == ("running", 0)
    # A device of the cohort that reports, then is rejected, stops counting.
    report(ctx, rollout, inside[2], ReportStatus.COMMITTED)
    with ctx.sessions() as session:
        assert counters(session, rollout).succeeded == 1
    _set_state(ctx, inside[2], "rejected")
    with ctx.sessions() as session:
        assert counters(session, rollout).succeeded == 0

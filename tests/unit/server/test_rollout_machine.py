"""The rollout state machine as a table, the automatic decision rule, and cohort determinism."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ota.server.errors import RolloutStateError
from ota.server.rollout_machine import (
    TRANSITIONS,
    Phase,
    Policy,
    RolloutCounters,
    RolloutEvent,
    RolloutState,
    cohort_point,
    decide,
    in_cohort,
    transition,
    validate_phases,
)

R, P, C, A, B = (
    RolloutState.RUNNING,
    RolloutState.PAUSED,
    RolloutState.COMPLETED,
    RolloutState.ABORTED,
    RolloutState.ROLLED_BACK,
)
E = RolloutEvent

# (state, event, phase index, phase count) -> (new state, new index) or None when refused
TABLE = [
    (R, E.ADVANCE, 0, 4, (R, 1)),
    (R, E.ADVANCE, 2, 4, (R, 3)),
    (R, E.ADVANCE, 3, 4, (C, 3)),
    (R, E.PAUSE, 1, 4, (P, 1)),
    (P, E.RESUME, 1, 4, (R, 1)),
    (R, E.ABORT, 2, 4, (A, 2)),
    (P, E.ABORT, 2, 4, (A, 2)),
    (R, E.ROLLBACK, 0, 4, (B, 0)),
    (P, E.ROLLBACK, 0, 4, (B, 0)),
    (C, E.ROLLBACK, 3, 4, (B, 3)),
    (P, E.ADVANCE, 1, 4, None),
    (P, E.PAUSE, 1, 4, None),
    (R, E.RESUME, 1, 4, None),
    (C, E.ADVANCE, 3, 4, None),
    (C, E.ABORT, 3, 4, None),
    (C, E.PAUSE, 3, 4, None),
    (A, E.RESUME, 1, 4, None),
    (A, E.ROLLBACK, 1, 4, None),
    (B, E.RESUME, 1, 4, None),
    (B, E.ADVANCE, 1, 4, None),
]


@pytest.mark.parametrize(("state", "event", "index", "count", "expected"), TABLE)
def test_transition_table(
    state: RolloutState,
    event: RolloutEvent,
    index: int,
    count: int,
    expected: tuple[RolloutState, int] | None,
) -> None:
    if expected is None:
        with pytest.raises(RolloutStateError):
            transition(state, event, index, count)
    else:
        assert transition(state, event, index, count) == expected


def test_table_covers_every_state_event_pair() -> None:
    covered = {(row[0], row[1]) for row in TABLE}
    allowed = set(TRANSITIONS)
    assert allowed <= covered
    # Every pair is either allowed by TRANSITIONS or refused; none is left undecided.
    for state in RolloutState:
        for event in RolloutEvent:
            if (state, event) not in allowed:
                with pytest.raises(RolloutStateError):
                    transition(state, event, 0, 4)


NOW = datetime(2030, 1, 1, tzinfo=UTC)
POLICY = Policy(failure_threshold=0.2, min_reports_for_abort=10)

# (phase, started seconds ago, succeeded, failed, policy) -> expected event or None
DECISIONS = [
    (Phase(10, 60, 5), 30, 5, 0, POLICY, None),  # not soaked
    (Phase(10, 60, 5), 61, 4, 0, POLICY, None),  # soaked, too few successes
    (Phase(10, 60, 5), 61, 5, 0, POLICY, E.ADVANCE),
    (Phase(10, 0, 0), 0, 0, 0, POLICY, E.ADVANCE),
    (Phase(10, 60, 5), 61, 7, 3, POLICY, E.ABORT),  # 30 % of 10 reports > 20 %
    (Phase(10, 60, 5), 61, 6, 3, POLICY, E.ADVANCE),  # only 9 reports: rule not armed yet
    (Phase(10, 60, 5), 61, 8, 2, POLICY, E.ADVANCE),  # exactly 20 %: not above
    (Phase(10, 60, 5), 61, 7, 3, Policy(0.2, 10, E.PAUSE), E.PAUSE),
]


@pytest.mark.parametrize(("phase", "ago", "succeeded", "failed", "policy", "expected"), DECISIONS)
def test_decide_table(
    phase: Phase, ago: int, succeeded: int, failed: int, policy: Policy, expected: RolloutEvent | None
) -> None:
    result = decide(
        state=R,
        phase=phase,
        phase_started_at=NOW - timedelta(seconds=ago),
        counters=RolloutCounters(succeeded=succeeded, failed=failed),
        policy=policy,
        now=NOW,
    )
    assert (result[0] if result else None) == expected


@pytest.mark.parametrize("state", [P, C, A, B])
def test_only_running_rollouts_move_on_their_own(state: RolloutState) -> None:
    counters = RolloutCounters(succeeded=100, failed=100)
    assert (
        decide(state=state, phase=Phase(10), phase_started_at=NOW, counters=counters, policy=POLICY, now=NOW)
        is None
    )


@pytest.mark.parametrize(
    "percents", [[], [10, 5, 100], [10, 10, 100], [1, 50]], ids=["empty", "decreasing", "repeated", "not-100"]
)
def test_bad_phases_are_refused(percents: list[float]) -> None:
    with pytest.raises(RolloutStateError):
        validate_phases([Phase(p) for p in percents])


@pytest.mark.parametrize("percent", [0, -1, 100.5])
def test_bad_percent_is_refused(percent: float) -> None:
    with pytest.raises(RolloutStateError):
        Phase(percent)


@pytest.mark.parametrize("percent", [1, 10, 50, 100])
def test_cohorts_land_within_one_point_on_10k_devices(percent: float) -> None:
    devices = [f"device-{i:05d}" for i in range(10_000)]
    share = sum(in_cohort(d, "ro-fixed", percent) for d in devices) / len(devices) * 100
    assert abs(share - percent) <= 1.0


def test_cohorts_differ_between_rollouts() -> None:
    devices = [f"device-{i:05d}" for i in range(2000)]
    first = {d for d in devices if in_cohort(d, "ro-a", 10)}
    second = {d for d in devices if in_cohort(d, "ro-b", 10)}
    assert first != second


@given(
    st.text(min_size=1, max_size=64),
    st.text(min_size=1, max_size=32),
    st.floats(0.01, 100),
    st.floats(0.01, 100),
)
def test_a_device_never_leaves_its_cohort(device: str, rollout: str, a: float, b: float) -> None:
    low, high = sorted((a, b))
    point = cohort_point(device, rollout)
    assert point == cohort_point(device, rollout)
    assert 0 <= point < 100
    if in_cohort(device, rollout, low):
        assert in_cohort(device, rollout, high)


@pytest.mark.parametrize(
    ("cohort", "succeeded", "expected"),
    [(None, 2, None), (0, 0, RolloutEvent.ADVANCE), (2, 1, None), (2, 2, RolloutEvent.ADVANCE), (9, 4, None)],
)
def test_min_reports_is_capped_by_the_cohort(
    cohort: int | None, succeeded: int, expected: RolloutEvent | None
):
    result = decide(
        state=R,
        phase=Phase(1, 0, 5),
        phase_started_at=NOW,
        counters=RolloutCounters(succeeded=succeeded),
        policy=POLICY,
        now=NOW,
        cohort_size=cohort,
    )
    assert (result[0] if result else None) == expected

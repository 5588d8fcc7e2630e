"""The rollout state machine as a table, the automatic decision rule, and cohort determinism."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
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
    (C, E.PAUSE, 3, 4, (P, 3)),  # the failure rule's "pause" flags a completed rollout
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
COHORT = 100

# (phase, started seconds ago, succeeded, failed, policy, cohort) -> expected event or None
DECISIONS = [
    (Phase(10, 60, 5, 0), 30, 5, 0, POLICY, COHORT, None),  # not soaked
    (Phase(10, 60, 5, 0), 61, 4, 0, POLICY, COHORT, None),  # soaked, too few successes
    (Phase(10, 60, 5, 0), 61, 5, 0, POLICY, COHORT, E.ADVANCE),
    (Phase(10, 0, 0, 0), 0, 0, 0, POLICY, COHORT, None),  # zero successes never advance a non-empty cohort
    (Phase(10, 0, 0, 0), 0, 1, 0, POLICY, COHORT, E.ADVANCE),
    (Phase(10, 0, 1, 0.5), 0, 49, 0, POLICY, COHORT, None),  # half of 100 is 50
    (Phase(10, 0, 1, 0.5), 0, 50, 0, POLICY, COHORT, E.ADVANCE),
    (Phase(10, 0, 1, 0.5), 0, 50, 0, POLICY, None, None),  # no device matches the selector: wait
    (Phase(10, 0, 1, 0.5), 0, 0, 0, POLICY, 0, E.ADVANCE),  # the phase holds no device (1 % of 20)
    (Phase(10, 60, 5, 0), 61, 7, 3, POLICY, COHORT, E.ABORT),  # 30 % of 10 reports > 20 %
    (Phase(10, 60, 5, 0), 61, 6, 3, POLICY, COHORT, E.ADVANCE),  # only 9 reports: rule not armed yet
    (Phase(10, 60, 5, 0), 61, 1, 2, POLICY, 3, E.ABORT),  # ...unless the whole cohort reported
    (Phase(10, 60, 5, 0), 61, 8, 2, POLICY, COHORT, E.ADVANCE),  # exactly 20 %: not above
    (Phase(10, 60, 5, 0), 61, 7, 3, Policy(0.2, 10, E.PAUSE), COHORT, E.PAUSE),
]


@pytest.mark.parametrize(("phase", "ago", "succeeded", "failed", "policy", "cohort", "expected"), DECISIONS)
def test_decide_table(
    phase: Phase,
    ago: int,
    succeeded: int,
    failed: int,
    policy: Policy,
    cohort: int | None,
    expected: RolloutEvent | None,
) -> None:
    result = decide(
        state=R,
        phase=phase,
        phase_started_at=NOW - timedelta(seconds=ago),
        counters=RolloutCounters(succeeded=succeeded, failed=failed),
        policy=policy,
        now=NOW,
        cohort_size=cohort,
    )
    assert (result[0] if result else None) == expected


@pytest.mark.parametrize("state", [P, C, A, B])
def test_only_running_rollouts_advance(state: RolloutState) -> None:
    counters = RolloutCounters(succeeded=100, failed=0)
    assert (
        decide(
            state=state,
            phase=Phase(10, 0),
            phase_started_at=NOW,
            counters=counters,
            policy=POLICY,
            now=NOW,
            cohort_size=COHORT,
        )
        is None
    )


# state, policy action -> the event the failure rule fires (None: nothing to do)
FAILURE_ACTIONS = [
    (R, E.ABORT, E.ABORT),
    (R, E.PAUSE, E.PAUSE),
    (P, E.ABORT, E.ABORT),  # an operator's pause does not shield a failing rollout from its abort rule
    (P, E.PAUSE, None),  # already paused
    (C, E.ABORT, E.ROLLBACK),  # late failures after completion roll it back
    (C, E.PAUSE, E.PAUSE),  # ...or flag it for an operator
    (A, E.ABORT, None),
    (B, E.ABORT, None),
]


@pytest.mark.parametrize(("state", "action", "expected"), FAILURE_ACTIONS)
def test_the_failure_rule_in_every_state(
    state: RolloutState, action: RolloutEvent, expected: RolloutEvent | None
) -> None:
    result = decide(
        state=state,
        phase=Phase(100, 0),
        phase_started_at=NOW,
        counters=RolloutCounters(succeeded=5, failed=5),
        policy=Policy(0.2, 5, action),
        now=NOW,
        cohort_size=COHORT,
    )
    assert (result[0] if result else None) == expected
    if expected is not None:
        transition(state, expected, 3, 4)  # the event is allowed from that state


def test_default_phase_is_safe() -> None:
    """A phase given only a percentage soaks and needs real successes (issue 9, defect 1)."""
    phase = Phase(10)
    assert phase.min_soak_seconds > 0
    assert phase.required_successes(20) >= 1
    assert phase.required_successes(20) == 10  # half the cohort
    assert phase.required_successes(1) == 1
    assert phase.required_successes(0) == 0


def _simulate(
    phases: list[Phase], policy: Policy, fleet: int, steps: list[tuple[str, int]]
) -> list[tuple[RolloutState, int, RolloutCounters, int | None, tuple[RolloutEvent, str] | None]]:
    """Drive decide + transition like the ticker does; return what each tick saw and decided."""
    state, index = R, 0
    started = NOW
    now = NOW
    succeeded = failed = 0
    seen = []
    for kind, amount in steps:
        cohort: int | None = None if fleet == 0 else int(fleet * phases[index].percent / 100)
        if state is C:
            cohort = fleet or None
        if kind == "wait":
            now += timedelta(seconds=amount)
        elif kind == "success" and cohort:
            succeeded = min(cohort - failed, succeeded + amount) if cohort > failed else succeeded
        elif kind == "failure" and cohort:
            failed = min(cohort - succeeded, failed + amount) if cohort > succeeded else failed
        counters = RolloutCounters(succeeded=succeeded, failed=failed)
        decision = decide(
            state=state,
            phase=phases[index],
            phase_started_at=started,
            counters=counters,
            policy=policy,
            now=now,
            cohort_size=cohort,
        )
        seen.append((state, index, counters, cohort, decision))
        if decision is not None:
            new_state, new_index = transition(state, decision[0], index, len(phases))
            if new_index != index:
                started = now
            state, index = new_state, new_index
    return seen


@settings(max_examples=300, deadline=None)
@given(
    percents=st.lists(st.floats(0.5, 99.5), min_size=0, max_size=4, unique=True).map(
        lambda ps: [*sorted(ps), 100.0]
    ),
    soak=st.integers(0, 120),
    min_reports=st.integers(0, 5),
    ratio=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    threshold=st.sampled_from([0.0, 0.1, 0.5]),
    min_abort=st.integers(1, 10),
    action=st.sampled_from([E.ABORT, E.PAUSE]),
    fleet=st.integers(0, 60),
    steps=st.lists(
        st.tuples(st.sampled_from(["wait", "success", "failure", "tick"]), st.integers(0, 40)), max_size=40
    ),
)
def test_property_no_advance_without_successes_and_failures_always_act(
    percents: list[float],
    soak: int,
    min_reports: int,
    ratio: float,
    threshold: float,
    min_abort: int,
    action: RolloutEvent,
    fleet: int,
    steps: list[tuple[str, int]],
) -> None:
    """From any state, with any sequence of ticks and reports (issue 9's acceptance):

    * a phase never advances without its required successes (and its soak);
    * a failure rate over the threshold, once armed, always yields the configured action.
    """
    phases = [Phase(p, soak, min_reports, ratio) for p in percents]
    policy = Policy(threshold, min_abort, action)
    for state, index, counters, cohort, decision in _simulate(phases, policy, fleet, steps):
        event = decision[0] if decision else None
        if event is E.ADVANCE:
            assert cohort is not None, "advanced with no device in the fleet"
            assert counters.succeeded >= phases[index].required_successes(cohort)
            assert counters.succeeded >= 1 or cohort == 0
        armed = counters.reported >= (min(min_abort, cohort) if cohort else min_abort)
        if armed and counters.failure_rate > threshold and state not in (A, B):
            if state is P and action is E.PAUSE:
                assert event is None
            elif state is C:
                assert event is (E.ROLLBACK if action is E.ABORT else E.PAUSE)
            else:
                assert event is action


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
        phase=Phase(1, 0, 5, 0),
        phase_started_at=NOW,
        counters=RolloutCounters(succeeded=succeeded),
        policy=POLICY,
        now=NOW,
        cohort_size=cohort,
    )
    assert (result[0] if result else None) == expected

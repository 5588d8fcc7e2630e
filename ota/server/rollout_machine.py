"""The rollout state machine: states, events, the transition table and the automatic decision rule.

Pure (no I/O, no database): ``ota.server.rollouts`` loads a rollout under a lock, asks :func:`decide` what to
do from its counters, applies :func:`transition`, and writes the result. Tests drive the table directly.

States: ``running`` → (``paused`` ⇄ ``running``) → ``completed``; ``aborted`` and ``rolled-back`` are
terminal and send devices back to the previous release.

Safety rules (each pinned by a test):

* A phase advances only after its soak time **and** its required successes: at least one committed device,
  at least ``min_reports``, and at least ``min_success_ratio`` of the phase's cohort, never more than the
  cohort holds (:meth:`Phase.required_successes`). A phase whose cohort holds no device advances after its
  soak; a rollout whose selector matches no accepted device at all waits (``cohort_size=None``).
* The failure rule applies in every state but the terminal ones. Over the threshold, a ``running`` or
  ``paused`` rollout takes the configured action (``abort``, or ``pause``: a paused one stays paused), and a
  ``completed`` rollout, which still collects reports from the devices that install after it completed, is
  rolled back (action ``abort``) or paused for an operator (action ``pause``; at 100 % it keeps serving the
  release but holds its selector until someone resumes, aborts or rolls back).
* The rule needs ``min_reports_for_abort`` final reports, or every device of the cohort when the cohort is
  smaller: two failures out of a two-device phase abort it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

# Safe defaults of a phase and of the abort rule: one owner (ota.core.rollout_defaults), shared with the
# release pipeline; re-exported here for the API, the CLI and the settings.
from ota.core.rollout_defaults import DEFAULT_FAILURE_THRESHOLD as DEFAULT_FAILURE_THRESHOLD
from ota.core.rollout_defaults import DEFAULT_MIN_REPORTS as DEFAULT_MIN_REPORTS
from ota.core.rollout_defaults import DEFAULT_MIN_REPORTS_FOR_ABORT as DEFAULT_MIN_REPORTS_FOR_ABORT
from ota.core.rollout_defaults import DEFAULT_MIN_SOAK_SECONDS as DEFAULT_MIN_SOAK_SECONDS
from ota.core.rollout_defaults import DEFAULT_MIN_SUCCESS_RATIO as DEFAULT_MIN_SUCCESS_RATIO
from ota.core.rollout_defaults import DEFAULT_PERCENTS as DEFAULT_PERCENTS
from ota.server.errors import RolloutStateError


class RolloutState(StrEnum):
    """Where a rollout is."""

    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled-back"


class RolloutEvent(StrEnum):
    """What can happen to a rollout (manual or automatic)."""

    ADVANCE = "advance"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLLBACK = "rollback"


#: States in which devices are sent back to the previous release.
REVERTED_STATES = frozenset({RolloutState.ABORTED, RolloutState.ROLLED_BACK})
#: States that still hold their selector (at most one per selector).
ACTIVE_STATES = frozenset({RolloutState.RUNNING, RolloutState.PAUSED})

# (state, event) -> new state. ADVANCE from the last phase is turned into COMPLETED by ``transition``.
TRANSITIONS: dict[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (RolloutState.RUNNING, RolloutEvent.ADVANCE): RolloutState.RUNNING,
    (RolloutState.RUNNING, RolloutEvent.PAUSE): RolloutState.PAUSED,
    (RolloutState.PAUSED, RolloutEvent.RESUME): RolloutState.RUNNING,
    (RolloutState.RUNNING, RolloutEvent.ABORT): RolloutState.ABORTED,
    (RolloutState.PAUSED, RolloutEvent.ABORT): RolloutState.ABORTED,
    (RolloutState.RUNNING, RolloutEvent.ROLLBACK): RolloutState.ROLLED_BACK,
    (RolloutState.PAUSED, RolloutEvent.ROLLBACK): RolloutState.ROLLED_BACK,
    (RolloutState.COMPLETED, RolloutEvent.ROLLBACK): RolloutState.ROLLED_BACK,
    # The failure rule with action "pause" flags a completed rollout for an operator.
    (RolloutState.COMPLETED, RolloutEvent.PAUSE): RolloutState.PAUSED,
}


@dataclass(frozen=True)
class Phase:
    """One step of a rollout: the cohort percentage and what must hold before moving on.

    Attributes:
        percent: Share of matching devices included, 0 < percent ≤ 100.
        min_soak_seconds: Minimum time spent in this phase.
        min_reports: Minimum committed devices (cumulative, cohorts nest) before advancing; at least 1.
        min_success_ratio: Minimum share of the phase's cohort that must have committed, 0-1.
    """

    percent: float
    min_soak_seconds: int = DEFAULT_MIN_SOAK_SECONDS
    min_reports: int = DEFAULT_MIN_REPORTS
    min_success_ratio: float = DEFAULT_MIN_SUCCESS_RATIO

    def __post_init__(self) -> None:
        """Validate the values.

        Raises:
            RolloutStateError: Out-of-range values.
        """
        if (
            not 0 < self.percent <= 100
            or self.min_soak_seconds < 0
            or self.min_reports < 0
            or not 0 <= self.min_success_ratio <= 1
        ):
            raise RolloutStateError(
                f"bad phase {self}: percent in (0, 100], soak and reports ≥ 0, success ratio in [0, 1]"
            )

    def required_successes(self, cohort_size: int) -> int:
        """Return the committed devices this phase needs before it may advance.

        At least one (a phase never advances on time alone), at least ``min_reports`` and the success ratio
        of the cohort, but never more than the cohort holds: an empty cohort needs none.
        """
        wanted = max(1, self.min_reports, math.ceil(self.min_success_ratio * cohort_size))
        return min(cohort_size, wanted)


def validate_phases(phases: list[Phase]) -> list[Phase]:
    """Check phases are non-empty, strictly increasing and end at 100 %.

    Raises:
        RolloutStateError: They are not.
    """
    if not phases:
        raise RolloutStateError("a rollout needs at least one phase")
    percents = [p.percent for p in phases]
    if any(b <= a for a, b in itertools.pairwise(percents)) or percents[-1] != 100:
        raise RolloutStateError(f"phase percentages must increase strictly and end at 100, got {percents}")
    return phases


def transition(
    state: RolloutState, event: RolloutEvent, phase_index: int, phase_count: int
) -> tuple[RolloutState, int]:
    """Apply one event.

    Args:
        state: Current state.
        event: The event.
        phase_index: Current phase (0-based).
        phase_count: Number of phases.

    Returns:
        ``(new state, new phase index)``.

    Raises:
        RolloutStateError: The table has no such transition.
    """
    new_state = TRANSITIONS.get((state, event))
    if new_state is None:
        raise RolloutStateError(f"cannot {event.value} a rollout that is {state.value}")
    if event is RolloutEvent.ADVANCE:
        if phase_index + 1 >= phase_count:
            return RolloutState.COMPLETED, phase_index
        return new_state, phase_index + 1
    return new_state, phase_index


@dataclass(frozen=True)
class RolloutCounters:
    """Cumulative outcome counts of the devices in a rollout."""

    succeeded: int = 0
    failed: int = 0
    in_progress: int = 0

    @property
    def reported(self) -> int:
        """Devices with a final outcome."""
        return self.succeeded + self.failed

    @property
    def failure_rate(self) -> float:
        """Failed share of final outcomes (0 when none)."""
        return self.failed / self.reported if self.reported else 0.0


@dataclass(frozen=True)
class Policy:
    """Automatic abort rule, like AWS IoT Jobs' abortConfig.

    Attributes:
        failure_threshold: Failure rate (0-1) above which the rollout stops.
        min_reports_for_abort: The rule applies only once this many devices reported an outcome.
        abort_event: ``abort`` (send devices back) or ``pause``.
    """

    failure_threshold: float
    min_reports_for_abort: int
    abort_event: RolloutEvent = RolloutEvent.ABORT


def decide(
    *,
    state: RolloutState,
    phase: Phase,
    phase_started_at: datetime,
    counters: RolloutCounters,
    policy: Policy,
    now: datetime,
    cohort_size: int | None,
) -> tuple[RolloutEvent, str] | None:
    """Decide the automatic event for a rollout, if any.

    Args:
        state: Current state (terminal states never move on their own).
        phase: Current phase.
        phase_started_at: When the phase began.
        counters: Cumulative outcomes of the devices the rollout targeted.
        policy: The abort rule.
        now: Current time.
        cohort_size: Accepted devices the current phase includes, or None when no accepted device matches
            the rollout's selector at all (an empty fleet: the rollout waits for it) or when the caller did
            not count it (then nothing advances, and the failure rule needs ``min_reports_for_abort``).

    Returns:
        ``(event, reason)`` or None.
    """
    if state in REVERTED_STATES:
        return None
    failure = _failure_event(state, counters, policy, cohort_size)
    if failure is not None:
        return failure
    if state is not RolloutState.RUNNING or cohort_size is None:
        return None
    if now - phase_started_at < timedelta(seconds=phase.min_soak_seconds):
        return None
    required = phase.required_successes(cohort_size)
    if counters.succeeded < required:
        return None
    return RolloutEvent.ADVANCE, (
        f"phase {phase.percent:g}% soaked {phase.min_soak_seconds}s with {counters.succeeded} of "
        f"{required} required successes (cohort {cohort_size} device(s))"
    )


def _failure_event(
    state: RolloutState, counters: RolloutCounters, policy: Policy, cohort_size: int | None
) -> tuple[RolloutEvent, str] | None:
    """The failure rule: the configured action once the failure rate is over the threshold."""
    needed = policy.min_reports_for_abort
    if cohort_size:
        needed = min(needed, cohort_size)
    if counters.reported < needed or counters.failure_rate <= policy.failure_threshold:
        return None
    action = policy.abort_event
    if state is RolloutState.PAUSED and action is RolloutEvent.PAUSE:
        return None  # already where the rule would put it
    if state is RolloutState.COMPLETED and action is RolloutEvent.ABORT:
        action = RolloutEvent.ROLLBACK
    after = " after completion" if state is RolloutState.COMPLETED else ""
    return action, (
        f"failure rate {counters.failure_rate:.1%} over {counters.reported} reports "
        f"exceeds {policy.failure_threshold:.1%}{after}"
    )


def cohort_point(device_id: str, rollout_id: str) -> float:
    """Return the device's fixed position in [0, 100) for a rollout: sha256 of both ids.

    A device is in the rollout while ``cohort_point < current phase percent``; phases only grow, so a
    device never leaves the cohort once in it.
    """
    digest = hashlib.sha256(f"{rollout_id}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def in_cohort(device_id: str, rollout_id: str, percent: float) -> bool:
    """Return True when the device is inside a phase of ``percent`` %."""
    return cohort_point(device_id, rollout_id) < percent

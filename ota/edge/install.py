"""The installer: carries one verified update through download, A/B install, health check and commit.

It sits between the poll loop (:mod:`ota.edge.agent`), which decides *what* to install after verifying
TUF metadata and the director's assignment, and the disk. It drives the persisted state machine of
:mod:`ota.edge.state`, so every step can be interrupted by ``kill -9`` and resumed by :meth:`Installer.resume`
after a restart:

* ``downloading``: take the delta when the committed model is its base, else the full target; partial
  files are kept and resumed; the result must hash to the signed sha256. A failed delta falls back to the
  full target when ``allow_full_fallback`` is set, otherwise the update is abandoned and reported.
* ``downloaded`` → ``installed-pending-health``: one atomic write of the state file moves the active
  pointer to the trial slot.
* health check (load, warm-up, self-test vectors, latency) → ``committed``, or ``rolled-back`` with the
  reason. Every agent start while a model is on trial counts a boot; ``max_trial_boots`` of them (the
  model keeps crashing the agent) roll it back, like a bootloader's boot counter.

The committed slot is never written during an update, so the device always keeps a working model.

A full disk must not wedge the agent: before downloading, :meth:`Installer.space_needed` is checked against
the free space of the state dir's filesystem (:class:`~ota.edge.errors.InsufficientSpaceError`), and any
write failure while downloading, reconstructing or recording the download (``ENOSPC`` included) deletes the
update's partial files *before* the state is moved back to idle and the failure is reported, so both of
those small writes find room again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ota.core.manifest import ReportStatus
from ota.edge.config import AgentConfig
from ota.edge.errors import EdgeError, FetchError, InsufficientSpaceError, SlotError, StateError
from ota.edge.fetch import Fetcher
from ota.edge.fsutil import sha256_file
from ota.edge.health import HealthResult, run_health_check
from ota.edge.slots import SlotStore, other_slot
from ota.edge.state import RESTING_PHASES, AgentState, InstalledModel, Phase, StateStore, UpdatePlan

log = logging.getLogger(__name__)


class DeltaApplier(Protocol):
    """The shape of ``ota.core.delta.apply_delta``."""

    def __call__(
        self, base: Path | None, patch: Path, out: Path, *, max_output_bytes: int | None = None
    ) -> object:
        """Apply ``patch`` to ``base`` and write the verified result to ``out`` atomically."""
        ...


HealthChecker = Callable[[Path, Path | None, float | None], HealthResult]
EventSink = Callable[["InstallEvent"], None]
FaultHook = Callable[[str], None]


@dataclass(frozen=True)
class InstallEvent:
    """Something worth a status report.

    Attributes:
        status: The report status.
        plan: The update concerned.
        bytes_downloaded: Bytes transferred for this update so far (this process's share).
        attack: Whether a verification failure looks like an attack.
        details: Flat map of scalars: reason, timings, whether a delta was used.
    """

    status: ReportStatus
    plan: UpdatePlan
    bytes_downloaded: int = 0
    attack: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InstallOutcome:
    """How an update ended.

    Attributes:
        status: ``committed``, ``rolled-back`` or ``failed``.
        reason: Why, when it did not commit.
        attack: True when the failure looks like an attack.
        used_delta: True when the model was reconstructed from a delta.
        bytes_downloaded: Bytes transferred by this process for the update.
        health: The health-check result, when one ran.
        transient: The failure may go away on a later try of the same plan (network trouble).
        error: The edge error class that ended a failed update, if one did.
    """

    status: ReportStatus
    reason: str | None = None
    attack: bool = False
    used_delta: bool = False
    bytes_downloaded: int = 0
    health: HealthResult | None = None
    transient: bool = False
    error: type[EdgeError] | None = None


def load_default_delta_applier() -> DeltaApplier:
    """Return ``ota.core.delta.apply_delta``.

    Imported on first use, so an agent that never meets a delta never loads the delta engine.

    Raises:
        EdgeError: If ``ota.core.delta`` cannot be imported.
    """
    try:
        from ota.core.delta import apply_delta
    except ImportError as exc:
        raise EdgeError(f"the delta engine ota.core.delta is unavailable: {exc}") from exc
    applier: DeltaApplier = apply_delta
    return applier


class Installer:
    """Drives the update state machine for one agent.

    Args:
        state_dir: The agent's state directory.
        config: The agent's limits and policies.
        fetcher: Downloads artifacts.
        health_check: Judges a newly installed model (defaults to :func:`run_health_check`).
        apply_delta: Applies a delta patch (defaults to ``ota.core.delta.apply_delta``, loaded lazily).
        on_event: Receives status events, for signed reports.
        on_state_recovered: Told why, after a corrupt state file was moved aside and rebuilt.
        fault: Called at named points (``downloading``, ``delta-apply``, ``downloaded``, ``slot-switch``,
            ``installed``, ``health-check``, ``committing``); the fault-injection tests and the fleet
            simulator kill or crash the process there.
    """

    def __init__(
        self,
        *,
        state_dir: Path,
        config: AgentConfig,
        fetcher: Fetcher,
        health_check: HealthChecker | None = None,
        apply_delta: DeltaApplier | None = None,
        on_event: EventSink | None = None,
        fault: FaultHook | None = None,
        on_state_recovered: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.fetcher = fetcher
        self.states = StateStore(state_dir, recover=self._recover_state, on_recovered=on_state_recovered)
        self.slots = SlotStore(state_dir)
        self._health_check = health_check
        self._apply_delta = apply_delta
        self._on_event = on_event
        self._fault = fault
        self._bytes_at_start = 0
        self._used_delta = False

    # ---- public API -------------------------------------------------------------------------------

    def startup(self) -> AgentState:
        """Prepare the slots after an agent start, count a boot for a model on trial, repair the link.

        Returns:
            The state after the boot was counted (the trial may already have been rolled back).

        Raises:
            StateError: If the state file is unreadable.
            SlotError: If the slots cannot be prepared.
        """
        self.slots.ensure_layout()
        state = self.states.load()
        if state.committed_slot is not None and self.slots.current_target() != state.committed_slot:
            # A kill between the commit's state write and the link move: finish the move.
            self.slots.point_current(state.committed_slot)
        if state.phase is Phase.INSTALLED_PENDING_HEALTH:
            state = self._save(state, trial_boots=state.trial_boots + 1)
            if state.trial_boots >= self.config.max_trial_boots:
                assert state.pending is not None  # guaranteed by the state invariants
                reason = f"the agent restarted {state.trial_boots} times while the model was on trial"
                self._emit(ReportStatus.HEALTH_CHECK_FAILED, state.pending, details={"reason": reason})
                state = self._roll_back(state, reason)
        return state

    def state(self) -> AgentState:
        """Return the persisted state.

        Raises:
            StateError: If the state file is unreadable.
        """
        return self.states.load()

    def install(self, plan: UpdatePlan) -> InstallOutcome:
        """Start installing ``plan`` and carry it to commit or rollback.

        Args:
            plan: A verified update.

        Returns:
            How it ended.

        Raises:
            StateError: If another update is already in flight (call :meth:`resume` first).
            SlotError: If the state cannot be persisted at all.
        """
        state = self.states.load()
        if state.phase not in RESTING_PHASES:
            raise StateError(f"an update is already in flight (phase {state.phase}); resume it first")
        trial = other_slot(state.committed_slot)
        self.slots.clear_slot(trial)
        state = self._transition(
            state, Phase.DOWNLOADING, pending=plan, trial_slot=trial, trial_boots=0, last_outcome=None
        )
        self._emit(ReportStatus.DOWNLOADING, plan)
        self._hit("downloading")
        return self._continue(state)

    def resume(self) -> InstallOutcome | None:
        """Carry an update interrupted by a restart to its end.

        Returns:
            How it ended, or None when no update was in flight.

        Raises:
            StateError: If the state file is unreadable.
            SlotError: If the state cannot be persisted at all.
        """
        state = self.states.load()
        if state.phase in RESTING_PHASES:
            return None
        return self._continue(state)

    # ---- the state machine --------------------------------------------------------------------------

    def _continue(self, state: AgentState) -> InstallOutcome:
        self._bytes_at_start = self.fetcher.total_bytes_transferred
        self._used_delta = False
        assert state.pending is not None and state.trial_slot is not None  # guaranteed by the invariants
        plan = state.pending
        trial = state.trial_slot
        if state.phase is Phase.DOWNLOADING:
            try:
                self._download(state, plan)
                state = self._transition(state, Phase.DOWNLOADED)
            except SlotError as exc:
                # A full disk (or a failing one): what was written for this update cannot complete. Free it
                # first, so that the state write and the failure report below have room.
                self._discard_partials(state)
                return self._abandon(state, plan, str(exc), error=exc)
            except EdgeError as exc:
                return self._abandon(state, plan, str(exc), attack=exc.attack, error=exc)
            self._emit(ReportStatus.DOWNLOADED, plan, details={"delta": self._used_delta})
            self._hit("downloaded")
        if state.phase is Phase.DOWNLOADED:
            try:
                actual = sha256_file(self.slots.model_path(trial))
            except SlotError as exc:
                return self._abandon(state, plan, str(exc), error=exc)
            if actual != plan.target.sha256:
                return self._abandon(state, plan, f"installed file hashes to {actual}, not the signed sha256")
            self._hit("slot-switch")
            # This single atomic write is the slot switch: the device now boots the trial slot.
            state = self._transition(state, Phase.INSTALLED_PENDING_HEALTH, active_slot=trial)
            self._emit(ReportStatus.INSTALLED, plan)
            self._hit("installed")
        return self._judge(state, plan)

    def _judge(self, state: AgentState, plan: UpdatePlan) -> InstallOutcome:
        assert state.trial_slot is not None
        self._hit("health-check")
        vectors = self.slots.vectors_path(state.trial_slot) if plan.selftest is not None else None
        # No budget of the release's own here: it travels inside the signed self-test vectors.
        result = self._run_health(self.slots.model_path(state.trial_slot), vectors, None)
        if not result.ok:
            reason = f"health check failed at {result.stage}: {result.reason}"
            self._emit(ReportStatus.HEALTH_CHECK_FAILED, plan, details=_health_details(result))
            self._roll_back(state, reason)
            return InstallOutcome(
                status=ReportStatus.ROLLED_BACK,
                reason=reason,
                used_delta=self._used_delta,
                bytes_downloaded=self._bytes(),
                health=result,
            )
        self._hit("committing")
        state = self._transition(
            state,
            Phase.COMMITTED,
            committed_slot=state.trial_slot,
            committed=InstalledModel.from_plan(plan),
            active_slot=state.trial_slot,
            trial_slot=None,
            pending=None,
            trial_boots=0,
            last_outcome=f"committed {plan.version or plan.target.name}",
        )
        assert state.committed_slot is not None
        self.slots.point_current(state.committed_slot)
        self.slots.clear_staging()
        self._emit(ReportStatus.COMMITTED, plan, details=_health_details(result))
        return InstallOutcome(
            status=ReportStatus.COMMITTED,
            used_delta=self._used_delta,
            bytes_downloaded=self._bytes(),
            health=result,
        )

    def space_needed(self, state: AgentState, plan: UpdatePlan) -> int:
        """Bytes of free space the rest of this update needs, margin included.

        A delta needs room for the patch and the reconstructed model side by side (the engine writes its
        output before the patch is deleted); a fallback to the full target reuses the patch's room. The
        self-test vectors come on top, and ``disk_margin_bytes`` for the state, reports and TUF metadata.
        Bytes already in the staging area or the trial slot for this update count as already there.

        Args:
            state: The persisted state (its committed model decides whether the delta applies).
            plan: The update.

        Returns:
            The number of bytes.
        """
        files = [plan.target.length]
        if (
            plan.delta is not None
            and state.committed is not None
            and state.committed.sha256 == plan.delta_base_sha256
        ):
            files.append(plan.delta.length)
        if plan.selftest is not None:
            files.append(plan.selftest.length)
        on_disk = 0
        directories = [self.slots.staging]
        if state.trial_slot is not None:
            directories.append(self.slots.slot_dir(state.trial_slot))
        for directory in directories:
            with contextlib.suppress(OSError):
                on_disk += sum(entry.stat().st_size for entry in directory.iterdir() if entry.is_file())
        return max(0, sum(files) - on_disk) + self.config.disk_margin_bytes

    def _check_space(self, state: AgentState, plan: UpdatePlan) -> None:
        needed = self.space_needed(state, plan)
        try:
            free = shutil.disk_usage(self.slots.root).free
        except OSError as exc:
            raise SlotError(f"cannot measure free space under {self.slots.root}: {exc}") from exc
        if free < needed:
            raise InsufficientSpaceError(
                f"not enough disk space for {plan.target.name}: {needed} bytes needed "
                f"(download, install and a {self.config.disk_margin_bytes}-byte margin), {free} free"
            )

    def _recover_state(self, corrupt: bytes) -> AgentState:
        """Rebuild a safe resting state after ``state.json`` was found corrupt.

        The ``current`` link moves only on commit, after the health check passed, so the slot it points at
        holds the last committed model: that becomes the committed and active slot again, hashed from disk.
        Whatever update was in flight is dropped (the trial slot is cleared by the next install). The
        assignment counter and release sequences are salvaged when the corrupt document still has them
        with the right types, so replay and rollback protection survive a partial corruption.
        """
        salvaged = _salvage(corrupt)
        counter = salvaged.get("highest_assignment_counter")
        extra = salvaged.get("extra")
        base = AgentState(
            highest_assignment_counter=counter if isinstance(counter, int) and counter >= 0 else 0,
            extra=extra if isinstance(extra, dict) else {},
            last_outcome="state recovered after corruption",
        )
        slot = self.slots.current_target()
        if slot is None:
            return base
        model = self.slots.model_path(slot)
        try:
            length = model.stat().st_size
            sha = sha256_file(model)
        except (OSError, SlotError):
            return base
        committed = InstalledModel(sha256=sha, length=length, version="", target_name="")
        return dataclasses.replace(
            base, phase=Phase.COMMITTED, active_slot=slot, committed_slot=slot, committed=committed
        )

    def _discard_partials(self, state: AgentState) -> None:
        """Delete this update's partial downloads and the trial slot's files; best effort."""
        self.slots.clear_staging()
        if state.trial_slot is not None:
            try:
                self.slots.clear_slot(state.trial_slot)
            except SlotError as exc:
                log.warning("cannot clear the trial slot after a failed update: %s", exc)

    def _download(self, state: AgentState, plan: UpdatePlan) -> None:
        assert state.trial_slot is not None
        destination = self.slots.model_path(state.trial_slot)
        already_there = destination.is_file() and sha256_file(destination) == plan.target.sha256
        if not already_there:
            self._check_space(state, plan)
        if not already_there and not self._try_delta(state, plan, destination):
            self.fetcher.fetch(
                plan.target.url,
                destination,
                length=plan.target.length,
                sha256=plan.target.sha256,
                partial=self.slots.staging_path(f"{plan.target.sha256}.target.part"),
            )
        if plan.selftest is not None:
            vectors = self.slots.vectors_path(state.trial_slot)
            if not (vectors.is_file() and sha256_file(vectors) == plan.selftest.sha256):
                self.fetcher.fetch(
                    plan.selftest.url,
                    vectors,
                    length=plan.selftest.length,
                    sha256=plan.selftest.sha256,
                    partial=self.slots.staging_path(f"{plan.selftest.sha256}.vectors.part"),
                )

    def _try_delta(self, state: AgentState, plan: UpdatePlan, destination: Path) -> bool:
        """Reconstruct the target from the offered delta; return False to fall back to the full target."""
        if plan.delta is None or state.committed is None or state.committed_slot is None:
            return False
        if state.committed.sha256 != plan.delta_base_sha256:
            return False
        patch = self.slots.staging_path(f"{plan.delta.sha256}.patch")
        try:
            if not (patch.is_file() and sha256_file(patch) == plan.delta.sha256):
                self.fetcher.fetch(
                    plan.delta.url,
                    patch,
                    length=plan.delta.length,
                    sha256=plan.delta.sha256,
                    partial=self.slots.staging_path(f"{plan.delta.sha256}.patch.part"),
                )
            self._hit("delta-apply")
            applier = self._apply_delta or load_default_delta_applier()
            applier(
                self.slots.model_path(state.committed_slot),
                patch,
                destination,
                max_output_bytes=plan.target.length,
            )
            # Private like a full download (0600, in a 0700 state dir): an application reading the active
            # model runs as the agent's user, or is given access by the integrator, never by the world.
            destination.chmod(0o600)
            if sha256_file(destination) != plan.target.sha256:
                # The patch itself was signed and verified: a wrong result is a broken publish, not an
                # attack on the transfer, so it takes the fallback path below like any apply failure.
                raise _DeltaResultError("the delta produced a model whose sha256 is not the signed one")
        except FetchError as exc:
            if exc.attack:
                raise  # bad bytes on purpose: report it, do not paper over it with a full download
            return self._fall_back(plan, destination, patch, f"delta download failed: {exc}", cause=exc)
        except SlotError:
            raise  # a full disk stays a full disk with a full download
        except Exception as exc:  # the delta engine's DeltaError family, or anything it did not foresee
            if _is_disk_full(exc):
                raise SlotError(f"delta apply failed, the disk is full: {exc}") from exc
            return self._fall_back(plan, destination, patch, f"delta apply failed: {exc}")
        self._used_delta = True
        return True

    def _fall_back(
        self, plan: UpdatePlan, destination: Path, patch: Path, reason: str, *, cause: EdgeError | None = None
    ) -> bool:
        with contextlib.suppress(OSError):
            destination.unlink()
        with contextlib.suppress(OSError):
            patch.unlink()
        if not self.config.allow_full_fallback:
            error = FetchError(f"{reason}; full-download fallback is disabled (metered link)")
            error.transient = cause is not None and cause.transient
            raise error
        self._emit(ReportStatus.DOWNLOADING, plan, details={"reason": reason, "fallback": "full"})
        return False

    # ---- helpers ------------------------------------------------------------------------------------

    def _run_health(self, model: Path, vectors: Path | None, budget: float | None) -> HealthResult:
        if self._health_check is not None:
            return self._health_check(model, vectors, budget)
        return run_health_check(model, vectors, config=self.config, latency_budget_ms=budget)

    def _roll_back(self, state: AgentState, reason: str) -> AgentState:
        plan = state.pending
        state = self._transition(
            state,
            Phase.ROLLED_BACK,
            active_slot=state.committed_slot,
            trial_slot=None,
            pending=None,
            trial_boots=0,
            last_outcome=reason,
        )
        if plan is not None:
            self._emit(ReportStatus.ROLLED_BACK, plan, details={"reason": reason})
        return state

    def _abandon(
        self,
        state: AgentState,
        plan: UpdatePlan,
        reason: str,
        *,
        attack: bool = False,
        error: EdgeError | None = None,
    ) -> InstallOutcome:
        self._transition(
            state,
            Phase.IDLE,
            active_slot=state.committed_slot,
            trial_slot=None,
            pending=None,
            trial_boots=0,
            last_outcome=reason,
        )
        self._emit(ReportStatus.FAILED, plan, attack=attack, details={"reason": reason})
        return InstallOutcome(
            status=ReportStatus.FAILED,
            reason=reason,
            attack=attack,
            used_delta=self._used_delta,
            bytes_downloaded=self._bytes(),
            transient=error is not None and error.transient,
            error=None if error is None else type(error),
        )

    def _transition(self, state: AgentState, phase: Phase, **changes: Any) -> AgentState:
        new = state.transition(phase, **changes)
        self.states.save(new)
        return new

    def _save(self, state: AgentState, **changes: Any) -> AgentState:
        new = dataclasses.replace(state, **changes)
        self.states.save(new)
        return new

    def _bytes(self) -> int:
        return self.fetcher.total_bytes_transferred - self._bytes_at_start

    def _emit(
        self,
        status: ReportStatus,
        plan: UpdatePlan,
        *,
        attack: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        if self._on_event is not None:
            self._on_event(
                InstallEvent(
                    status=status,
                    plan=plan,
                    bytes_downloaded=self._bytes(),
                    attack=attack,
                    details=details or {},
                )
            )

    def _hit(self, point: str) -> None:
        if self._fault is not None:
            self._fault(point)


class _DeltaResultError(Exception):
    """Internal: a delta applied but did not reproduce the signed target."""


def _salvage(corrupt: bytes) -> dict[str, Any]:
    """Return the top-level object of a corrupt state file if it still parses, else an empty dict."""
    try:
        document = json.loads(corrupt)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {}
    if not isinstance(document, dict):
        return {}
    # bool is an int: a counter of true is no counter.
    counter = document.get("highest_assignment_counter")
    return {
        "highest_assignment_counter": counter
        if isinstance(counter, int) and not isinstance(counter, bool)
        else None,
        "extra": document.get("extra"),
    }


def _is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is an ``ENOSPC``/``EDQUOT`` OSError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        current = current.__cause__ or current.__context__
    return False


def _health_details(result: HealthResult) -> dict[str, Any]:
    return {key: value for key, value in result.to_json().items() if value is not None}

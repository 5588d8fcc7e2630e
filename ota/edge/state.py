"""The agent's persisted update state machine; its file is also the atomically switched slot pointer.

Phases (one update at a time)::

    idle ──► downloading ──► downloaded ──► installed-pending-health ──► committed
      ▲           │               │                     │
      └───────────┴───────────────┘ (abandon)           └──────────────► rolled-back

``committed`` and ``rolled-back`` are resting phases like ``idle``: a new update may start from them.
Every transition is one atomic write of ``state.json`` (temp file, fsync, ``os.replace``, fsync dir), so
``kill -9`` at any instant leaves either the state before the transition or the state after it. The
``active_slot`` field is the pointer the device runs from; it moves to the trial slot when an update is
installed and back when it is rolled back. ``committed_slot`` moves only on commit.

Like python-tuf's trusted metadata set, this module does no network I/O: it validates a document and
refuses illegal transitions with :class:`~ota.edge.errors.StateError`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from ota.edge.errors import SlotError, StateError
from ota.edge.fsutil import atomic_write_json
from ota.edge.slots import SlotName, parse_slot

STATE_FILE = "state.json"
STATE_FORMAT = 1
# ``extra`` keys the agent keeps between polls (read and written only through AgentState's methods below).
FAILURES_KEY = "failed_assignments"
# sha256 -> release_seq of models this agent installed (recorded before installing, so a crash mid-install
# still leaves the sequence of whatever ends up committed): what "older than installed" is measured against.
RELEASE_SEQS_KEY = "release_seqs"
# A device that has failed many assignments must not grow its state forever; a few release sequences cover
# the committed model, the one on trial and a rollback target.
MAX_FAILURES_KEPT = 32
MAX_RELEASE_SEQS_KEPT = 8

log = logging.getLogger(__name__)


class Phase(StrEnum):
    """Where the current update stands."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLED_PENDING_HEALTH = "installed-pending-health"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled-back"


#: Phases in which no update is in flight and a new one may start.
RESTING_PHASES = frozenset({Phase.IDLE, Phase.COMMITTED, Phase.ROLLED_BACK})

#: Legal transitions, as data so that a test can walk the whole table.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.DOWNLOADING}),
    Phase.COMMITTED: frozenset({Phase.DOWNLOADING}),
    Phase.ROLLED_BACK: frozenset({Phase.DOWNLOADING}),
    Phase.DOWNLOADING: frozenset({Phase.DOWNLOADED, Phase.IDLE}),
    Phase.DOWNLOADED: frozenset({Phase.INSTALLED_PENDING_HEALTH, Phase.IDLE}),
    Phase.INSTALLED_PENDING_HEALTH: frozenset({Phase.COMMITTED, Phase.ROLLED_BACK}),
}


def _require(document: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = document.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise StateError(f"state field {key!r} must be {kind}, got {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _optional(document: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    return None if document.get(key) is None else _require(document, key, kind)


@dataclass(frozen=True, kw_only=True)
class ArtifactRef:
    """A file to download: where from, and the signed length and sha256 it must have.

    Attributes:
        name: The TUF target path (for reports; never used as a local file name).
        url: Where to download it.
        length: Signed length in bytes.
        sha256: Signed lowercase hex sha256.
    """

    name: str
    url: str
    length: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, document: object) -> ArtifactRef:
        """Parse a dict written by :meth:`to_json`.

        Raises:
            StateError: If a field is missing or has the wrong type.
        """
        if not isinstance(document, dict):
            raise StateError("artifact reference must be an object")
        sha = _require(document, "sha256", str)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise StateError(f"artifact sha256 {sha!r} is not 64 lowercase hex digits")
        length = _require(document, "length", int)
        if length < 0:
            raise StateError("artifact length must be ≥ 0")
        return cls(
            name=_require(document, "name", str),
            url=_require(document, "url", str),
            length=length,
            sha256=sha,
        )


@dataclass(frozen=True, kw_only=True)
class UpdatePlan:
    """A verified decision to install one target, persisted so that a restart carries it through.

    Attributes:
        target: The full model target.
        version: Release version string, for reports.
        delta: A delta patch on offer, if any.
        delta_base_sha256: The installed model the delta applies to (required when ``delta`` is set).
        selftest: The release's self-test vectors target, if any (they carry the latency budget).
        assignment_counter: Counter of the director assignment that asked for this update.
        release_id: Server release id, for reports.
        rollout_id: Server rollout id, for reports.
    """

    target: ArtifactRef
    version: str = ""
    delta: ArtifactRef | None = None
    delta_base_sha256: str | None = None
    selftest: ArtifactRef | None = None
    assignment_counter: int = 0
    release_id: str | None = None
    rollout_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return {
            "target": self.target.to_json(),
            "version": self.version,
            "delta": None if self.delta is None else self.delta.to_json(),
            "delta_base_sha256": self.delta_base_sha256,
            "selftest": None if self.selftest is None else self.selftest.to_json(),
            "assignment_counter": self.assignment_counter,
            "release_id": self.release_id,
            "rollout_id": self.rollout_id,
        }

    @classmethod
    def from_json(cls, document: object) -> UpdatePlan:
        """Parse a dict written by :meth:`to_json`.

        Raises:
            StateError: If a field is missing or has the wrong type.
        """
        if not isinstance(document, dict):
            raise StateError("update plan must be an object")
        delta = None if document.get("delta") is None else ArtifactRef.from_json(document["delta"])
        base = _optional(document, "delta_base_sha256", str)
        if delta is not None and base is None:
            raise StateError("an update plan with a delta must name the delta's base sha256")
        return cls(
            target=ArtifactRef.from_json(document.get("target")),
            version=_require(document, "version", str),
            delta=delta,
            delta_base_sha256=base,
            selftest=_artifact(document.get("selftest")),
            assignment_counter=_require(document, "assignment_counter", int),
            release_id=_optional(document, "release_id", str),
            rollout_id=_optional(document, "rollout_id", str),
        )


@dataclass(frozen=True, kw_only=True)
class InstalledModel:
    """What a slot holds once installed.

    Attributes:
        sha256: The model file's sha256.
        length: Its length in bytes.
        version: Release version.
        target_name: TUF target path.
    """

    sha256: str
    length: int
    version: str
    target_name: str

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, document: object) -> InstalledModel:
        """Parse a dict written by :meth:`to_json`.

        Raises:
            StateError: If a field is missing or has the wrong type.
        """
        if not isinstance(document, dict):
            raise StateError("installed model must be an object")
        return cls(
            sha256=_require(document, "sha256", str),
            length=_require(document, "length", int),
            version=_require(document, "version", str),
            target_name=_require(document, "target_name", str),
        )

    @classmethod
    def from_plan(cls, plan: UpdatePlan) -> InstalledModel:
        """Describe the model a plan installs."""
        return cls(
            sha256=plan.target.sha256,
            length=plan.target.length,
            version=plan.version,
            target_name=plan.target.name,
        )


@dataclass(frozen=True, kw_only=True)
class AgentState:
    """Everything the agent must remember across a crash.

    Attributes:
        phase: Where the current update stands.
        active_slot: The slot the device runs from (the pointer); None before any install.
        committed_slot: The last slot that passed its health check.
        committed: What the committed slot holds.
        trial_slot: The slot being written or on trial during an update.
        pending: The update in flight, if any.
        trial_boots: Agent starts since the trial model was installed (the boot counter).
        last_outcome: Why the last update ended the way it did, for reports and the CLI.
        highest_assignment_counter: Highest director counter accepted; lower ones are replays.
    """

    phase: Phase = Phase.IDLE
    active_slot: SlotName | None = None
    committed_slot: SlotName | None = None
    committed: InstalledModel | None = None
    trial_slot: SlotName | None = None
    pending: UpdatePlan | None = None
    trial_boots: int = 0
    last_outcome: str | None = None
    highest_assignment_counter: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict, stamped with the file format version."""
        return {
            "format": STATE_FORMAT,
            "phase": self.phase.value,
            "active_slot": self.active_slot,
            "committed_slot": self.committed_slot,
            "committed": None if self.committed is None else self.committed.to_json(),
            "trial_slot": self.trial_slot,
            "pending": None if self.pending is None else self.pending.to_json(),
            "trial_boots": self.trial_boots,
            "last_outcome": self.last_outcome,
            "highest_assignment_counter": self.highest_assignment_counter,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, document: object) -> AgentState:
        """Parse and cross-check a state document.

        Raises:
            StateError: If the document is malformed or contradicts itself.
        """
        if not isinstance(document, dict):
            raise StateError("state document must be a JSON object")
        if document.get("format") != STATE_FORMAT:
            raise StateError(f"unsupported state format {document.get('format')!r}")
        try:
            phase = Phase(str(document.get("phase")))
            active = parse_slot(document.get("active_slot"))
            committed_slot = parse_slot(document.get("committed_slot"))
            trial = parse_slot(document.get("trial_slot"))
        except (ValueError, SlotError) as exc:
            raise StateError(f"bad state document: {exc}") from exc
        extra = document.get("extra", {})
        if not isinstance(extra, dict):
            raise StateError("state field 'extra' must be an object")
        state = cls(
            phase=phase,
            active_slot=active,
            committed_slot=committed_slot,
            committed=_installed(document.get("committed")),
            trial_slot=trial,
            pending=None if document.get("pending") is None else UpdatePlan.from_json(document["pending"]),
            trial_boots=_require(document, "trial_boots", int),
            last_outcome=_optional(document, "last_outcome", str),
            highest_assignment_counter=_require(document, "highest_assignment_counter", int),
            extra=extra,
        )
        state.check_invariants()
        return state

    def failures(self) -> dict[str, int]:
        """How often each ``"<assignment counter>:<target sha256>"`` failed (recent ones only)."""
        raw = self.extra.get(FAILURES_KEY, {})
        if not isinstance(raw, dict):
            return {}
        return {str(k): v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)}

    def with_failure(self, key: str) -> AgentState:
        """This state with one more failure of ``key`` (the oldest keys beyond the last 32 dropped)."""
        failures = self.failures()
        failures[key] = failures.get(key, 0) + 1
        recent = dict(list(failures.items())[-MAX_FAILURES_KEPT:])
        return dataclasses.replace(self, extra={**self.extra, FAILURES_KEY: recent})

    def release_seqs(self) -> dict[str, int]:
        """The release sequence of each model sha256 this agent installed (recent ones only)."""
        raw = self.extra.get(RELEASE_SEQS_KEY, {})
        if not isinstance(raw, dict):
            return {}
        return {str(k): v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)}

    def with_release_seq(self, sha256: str, seq: int) -> AgentState:
        """This state remembering that model ``sha256`` is release ``seq`` (the last 8 kept)."""
        seqs = {k: v for k, v in self.release_seqs().items() if k != sha256}
        seqs[sha256] = seq
        recent = dict(list(seqs.items())[-MAX_RELEASE_SEQS_KEPT:])
        return dataclasses.replace(self, extra={**self.extra, RELEASE_SEQS_KEY: recent})

    def check_invariants(self) -> None:
        """Refuse a state that could leave the device without a working model.

        Raises:
            StateError: If the phase, slots and pending update disagree.
        """
        if (self.committed_slot is None) != (self.committed is None):
            raise StateError("committed_slot and committed must be set together")
        if self.phase in RESTING_PHASES:
            if self.pending is not None or self.trial_slot is not None:
                raise StateError(f"phase {self.phase} must have no pending update")
            if self.active_slot != self.committed_slot:
                raise StateError(f"phase {self.phase}: the active slot must be the committed one")
            return
        if self.pending is None or self.trial_slot is None:
            raise StateError(f"phase {self.phase} needs a pending update and a trial slot")
        if self.trial_slot == self.committed_slot:
            raise StateError("an update must never write the committed slot")
        on_trial = self.phase is Phase.INSTALLED_PENDING_HEALTH
        expected = self.trial_slot if on_trial else self.committed_slot
        if self.active_slot != expected:
            raise StateError(f"phase {self.phase}: active slot {self.active_slot} should be {expected}")

    def transition(self, phase: Phase, **changes: Any) -> AgentState:
        """Return a new state in ``phase`` with ``changes`` applied, after checking the move is legal.

        Args:
            phase: The phase to move to.
            **changes: Other fields to change in the same atomic step.

        Returns:
            The new state (not yet persisted).

        Raises:
            StateError: If the transition is not in :data:`TRANSITIONS` or breaks an invariant.
        """
        if phase not in TRANSITIONS.get(self.phase, frozenset()):
            raise StateError(f"illegal transition {self.phase} → {phase}")
        new = dataclasses.replace(self, phase=phase, **changes)
        new.check_invariants()
        return new


def _artifact(document: object) -> ArtifactRef | None:
    return None if document is None else ArtifactRef.from_json(document)


def _installed(document: object) -> InstalledModel | None:
    return None if document is None else InstalledModel.from_json(document)


#: Builds a safe state when ``state.json`` is corrupt; gets the corrupt bytes to salvage from.
StateRecovery = Callable[[bytes], AgentState]


class StateStore:
    """Reads and atomically writes ``state.json`` in the agent's state dir.

    A state file that is not JSON or fails validation cannot be fixed by reading it again: with a
    ``recover`` function the store moves it aside as ``state.json.corrupt-<UTC time>`` (kept for a
    post-mortem), saves what ``recover`` rebuilds, logs an error and tells ``on_recovered`` once. Without
    one (tests, the read-only :mod:`ota.edge.active`), it raises :class:`StateError`.

    Args:
        root: The agent's state directory.
        max_bytes: Refuse a state file larger than this (it is small; anything big is corruption).
        recover: Rebuilds a safe state from what is on disk (the installer derives it from the slots).
        on_recovered: Told the reason after a recovery (the agent reports it to the server).
    """

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = 1024 * 1024,
        recover: StateRecovery | None = None,
        on_recovered: Callable[[str], None] | None = None,
    ) -> None:
        self.path = root / STATE_FILE
        self.max_bytes = max_bytes
        self.recover = recover
        self.on_recovered = on_recovered

    def load(self) -> AgentState:
        """Read the state, or return a fresh idle state when there is none yet.

        Raises:
            StateError: If the file cannot be read, or it is corrupt and there is no ``recover`` function
                (or moving it aside fails).
            SlotError: If the recovered state cannot be written.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc}") from exc
        try:
            return self.parse(raw)
        except StateError as exc:
            if self.recover is None:
                raise
            return self._recover(raw, exc)

    def parse(self, raw: bytes) -> AgentState:
        """Parse and validate the bytes of a state file.

        Raises:
            StateError: If they are too large, not JSON, or not a valid state.
        """
        if len(raw) > self.max_bytes:
            raise StateError(f"{self.path} is {len(raw)} bytes, more than {self.max_bytes}")
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise StateError(f"{self.path} is not valid JSON: {exc}") from exc
        return AgentState.from_json(document)

    def _recover(self, raw: bytes, error: StateError) -> AgentState:
        assert self.recover is not None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{STATE_FILE}.corrupt-{stamp}")
        try:
            self.path.replace(aside)
        except OSError as exc:
            raise StateError(f"{self.path} is corrupt ({error}) and cannot be moved aside: {exc}") from exc
        state = self.recover(raw)
        self.save(state)
        reason = (
            f"state file was corrupt ({error}); kept as {aside.name}, recovered "
            f"{'committed slot ' + state.committed_slot if state.committed_slot else 'an empty state'}"
        )
        log.error("%s", reason)
        if self.on_recovered is not None:
            self.on_recovered(reason)
        return state

    def save(self, state: AgentState) -> None:
        """Persist ``state`` atomically; after return it survives ``kill -9`` and power loss.

        Raises:
            StateError: If the state breaks an invariant.
            SlotError: If the file cannot be written (for example, the disk is full).
        """
        state.check_invariants()
        atomic_write_json(self.path, state.to_json())

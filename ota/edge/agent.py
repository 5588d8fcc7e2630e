"""The edge agent's poll loop: enrol, poll the director, verify with TUF, install, report.

One :meth:`Agent.poll_once` does, in order:

1. finish an update interrupted by a restart (the plan was verified before it was persisted);
2. enrol on first start (device key, hardware profile; store the trusted TUF root and director key);
3. get a short-lived token (challenge signed by the device key);
4. ``GET /v1/devices/{id}/assignment`` with ``If-None-Match``; a 304 costs nothing more;
5. verify the assignment: director signature, device id, hardware profile, counter never below the last
   accepted one, expiry, and no release older than the installed one unless the director flags an
   operator rollback (:func:`ota.core.manifest.verify_assignment`);
6. refresh the image repository with python-tuf's ``ngclient.Updater`` from the stored root and check
   that TUF and the director agree on the target's (and delta's) length and sha256;
7. hand a persisted :class:`~ota.edge.state.UpdatePlan` to the :class:`~ota.edge.install.Installer`;
8. flush signed status reports queued on disk.

Failures map to typed errors. Verification failures are reported with the attack flag, and a target
that failed the same way is not retried until the director's counter changes. Network and 5xx errors
back off exponentially with full jitter and a cap; the loop never sleeps less than the minimum poll
interval, so it never busy-loops.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from ota.core.errors import OtaError
from ota.core.manifest import (
    AdmissionState,
    Assignment,
    EnrolmentRequest,
    ReportStatus,
    verify_assignment,
)
from ota.edge.api import DeviceApi
from ota.edge.backoff import full_jitter_delay, jittered_interval
from ota.edge.config import AgentConfig
from ota.edge.errors import (
    EdgeError,
    FetchError,
    HttpStatusError,
    IdentityError,
    SlotError,
    VerificationError,
)
from ota.edge.fetch import Fetcher, make_client
from ota.edge.fsutil import ensure_private_dir
from ota.edge.identity import DeviceIdentity, Enrolment
from ota.edge.install import DeltaApplier, FaultHook, HealthChecker, Installer, InstallEvent
from ota.edge.nudge import wait_for_poll
from ota.edge.plan import Limits, Repository, plan_update, selftest_name, targets_to_look_up
from ota.edge.profile import HardwareProfile, detect_profile
from ota.edge.reports import ReportQueue
from ota.edge.state import AgentState, UpdatePlan
from ota.edge.tuf_fetcher import HttpxFetcher

log = logging.getLogger(__name__)


class PollOutcome(StrEnum):
    """What one poll did (a ``StrEnum``: its values are what ``agent --once`` prints)."""

    #: The director answered 304: nothing changed since the last poll.
    UNCHANGED = "unchanged"
    #: The assigned target is the installed one.
    UP_TO_DATE = "up-to-date"
    #: The director assigns nothing.
    NO_TARGET = "no-target"
    INSTALLED = "installed"
    ROLLED_BACK = "rolled-back"
    #: Verification or the install failed; not retried until the director's counter changes.
    FAILED = "failed"
    #: The same assignment failed before; waiting for a new one.
    SKIPPED = "skipped"
    #: Enrolled, awaiting operator admission.
    PENDING = "pending"
    REJECTED = "rejected"
    REVOKED = "revoked"
    #: Network or server trouble (or a bug): backing off.
    ERROR = "error"


@dataclass(frozen=True)
class PollResult:
    """What one poll did and when to poll next.

    Attributes:
        outcome: What happened.
        delay_s: Seconds to wait before the next poll.
        detail: Reason or extra information, for people (never parsed).
        attack: True when verification failed in a way that looks like an attack.
        error: The edge error class behind a ``failed`` or ``error`` outcome, if one was raised.
    """

    outcome: PollOutcome
    delay_s: float
    detail: str | None = None
    attack: bool = False
    error: type[EdgeError] | None = None


class Agent:
    """One device's update agent.

    Args:
        server_url: Base URL of the OTA server.
        state_dir: Where everything the agent persists lives.
        config: Limits and policies.
        provisioning_token: Token for the first enrolment.
        profile: Hardware profile override (``None`` or ``auto`` to detect).
        device_id: Device id override (default: derived from the device key).
        tags: Labels rollouts can select on, sent at enrolment.
        group: Device group, sent at enrolment.
        client: HTTP client for the API and downloads (tests inject transports).
        health_check: Health-check override (the fleet simulator injects failures).
        apply_delta: Delta applier override.
        fault: Fault hook passed to the installer.
        rng: Randomness for jitter.
        clock_offset_s: Added to the wall clock for every expiry check, the director's and the TUF roles'
            (tests of a skewed device clock).
    """

    def __init__(
        self,
        *,
        server_url: str,
        state_dir: Path,
        config: AgentConfig | None = None,
        provisioning_token: str | None = None,
        profile: str | None = None,
        device_id: str | None = None,
        tags: tuple[str, ...] = (),
        group: str | None = None,
        client: httpx.Client | None = None,
        health_check: HealthChecker | None = None,
        apply_delta: DeltaApplier | None = None,
        fault: FaultHook | None = None,
        rng: random.Random | None = None,
        clock_offset_s: float = 0.0,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.state_dir = state_dir
        self.config = config or AgentConfig()
        self.provisioning_token = provisioning_token
        self.tags = tags
        self.group = group
        self.rng = rng or random.Random()
        self.clock_offset_s = clock_offset_s
        self.client = client or make_client(self.config)
        ensure_private_dir(state_dir)  # 0700: the key, the state and the models are this agent's alone
        self.identity = DeviceIdentity(state_dir)
        self.identity.load_or_create_key()
        # Once enrolled, the device is who the server knows: the stored id and profile win over the
        # defaults (derived id, detected profile), so `agent status` and a restart without --device-id or
        # --profile show and use the identity the server has. Explicit arguments still win.
        enrolled = self._stored_enrolment()
        if profile in (None, "auto") and enrolled is not None and enrolled.hardware_profile:
            profile = enrolled.hardware_profile
        # Without the ONNX Runtime fields: sent once, at enrolment (see HardwareProfile.with_runtime).
        self.hardware: HardwareProfile = detect_profile(override_name=profile, runtime=False)
        self.device_id = (
            device_id or (enrolled.device_id if enrolled else "") or self.identity.default_device_id()
        )
        self.fetcher = Fetcher(config=self.config, client=self.client, rng=self.rng)
        self.installer = Installer(
            state_dir=state_dir,
            config=self.config,
            fetcher=self.fetcher,
            health_check=health_check,
            apply_delta=apply_delta,
            on_event=self._on_install_event,
            fault=fault,
            on_state_recovered=self._on_state_recovered,
        )
        self.reports = ReportQueue(
            state_dir,
            device_id=self.device_id,
            signer=self.identity.load_or_create_key(),
            max_queued=self.config.report_queue_max,
        )
        self.api = DeviceApi(
            server_url=self.server_url,
            device_id=self.device_id,
            client=self.client,
            signer=self.identity.load_or_create_key(),
            assignment_max_bytes=self.config.max_metadata_bytes,
        )
        self._etag: str | None = None
        self._errors_in_a_row = 0
        self._started = False

    def _stored_enrolment(self) -> Enrolment | None:
        """The stored enrolment, or None; a malformed one is reported by the first poll, not here."""
        try:
            return self.identity.load_enrolment()
        except IdentityError:
            return None

    # ---- the loop ---------------------------------------------------------------------------------

    def run(
        self, *, once: bool = False, stop: threading.Event | None = None, wake: threading.Event | None = None
    ) -> PollResult:
        """Poll until stopped (or once).

        Args:
            once: Poll a single time and return.
            stop: Set it to end the loop; the wait between polls wakes up on it.
            wake: Set it to poll now (an MQTT nudge, :class:`ota.edge.nudge.NudgeListener`); nothing more.

        Returns:
            The last poll's result.
        """
        stop = stop or threading.Event()
        while True:
            result = self.poll_once()
            log.info("poll: %s (%s); next in %.1f s", result.outcome, result.detail or "", result.delay_s)
            if once or self._wait_for_next_poll(result.delay_s, stop, wake):
                return result

    def _wait_for_next_poll(
        self, seconds: float, stop: threading.Event, wake: threading.Event | None = None
    ) -> bool:
        """Wait ``seconds`` between polls, or less when ``wake`` is set (an MQTT nudge); return True when
        ``stop`` was set (the loop ends)."""
        return wait_for_poll(stop, wake, seconds)

    def poll_once(self) -> PollResult:
        """Run one poll cycle; never raises, except for a deliberate stop.

        Every answer is parsed and mapped to the edge error tree below this loop, in :mod:`ota.edge.api`,
        the installer and the TUF fetcher; the last ``except Exception`` is the last resort for a bug or a
        failure nobody foresaw: it is logged with its traceback and the loop backs off. ``KeyboardInterrupt``
        and ``SystemExit`` are not ``Exception`` and still end the process.

        Returns:
            What happened and how long to wait.
        """
        try:
            result = self._poll()
        except VerificationError as exc:
            return PollResult(
                PollOutcome.FAILED, self._interval(None), str(exc), attack=True, error=type(exc)
            )
        except EdgeError as exc:
            return self._back_off(f"{type(exc).__name__}: {exc}", attack=exc.attack, error=type(exc))
        except Exception as exc:  # the loop must outlive any bug below it
            log.exception("poll failed unexpectedly; backing off")
            return self._back_off(f"unexpected {type(exc).__name__}: {exc}")
        self._errors_in_a_row = 0
        return result

    def _back_off(
        self, reason: str, *, attack: bool = False, error: type[EdgeError] | None = None
    ) -> PollResult:
        self._errors_in_a_row += 1
        wait = full_jitter_delay(
            self._errors_in_a_row - 1,
            base_s=self.config.retry_base_s,
            cap_s=self.config.retry_cap_s,
            rng=self.rng,
        )
        # Full jitter can draw ~0: the floor keeps a broken server from turning the agent into a busy loop.
        return PollResult(
            PollOutcome.ERROR, max(self.config.poll_interval_min_s, wait), reason, attack=attack, error=error
        )

    def _interval(self, server_seconds: float | None, extra_jitter: float = 0.0) -> float:
        base = self.config.clamp_poll_interval(server_seconds)
        delay = jittered_interval(base, fraction=self.config.poll_jitter_fraction, rng=self.rng)
        delay += self.rng.uniform(0, max(0.0, extra_jitter))
        return min(self.config.poll_interval_max_s, max(self.config.poll_interval_min_s, delay))

    def _poll(self) -> PollResult:
        if not self._started:
            self.installer.startup()
            self._started = True
        resumed = self.installer.resume()
        enrolment = self._ensure_enrolled()
        if enrolment.admission != AdmissionState.ACCEPTED.value:
            return PollResult(
                PollOutcome(enrolment.admission), self._interval(None), "awaiting operator admission"
            )
        self._flush_reports()
        if resumed is not None:
            self._flush_reports()
        state = self.installer.state()
        current = state.committed.sha256 if state.committed else None
        answer = self.api.assignment(current_sha256=current, etag=self._etag)
        interval = answer.poll_interval
        if answer.envelope is None:
            return PollResult(PollOutcome.UNCHANGED, self._interval(interval))
        try:
            assignment = verify_assignment(
                answer.envelope,
                enrolment.director_public_key,
                device_id=self.device_id,
                hardware_profile=self.hardware.name,
                last_counter=state.highest_assignment_counter or None,
                installed_release_seq=state.release_seqs().get(current) if current else None,
                now=self._now(),
            )
        except OtaError as exc:
            self._report_failure(None, f"assignment refused: {exc}", attack=True)
            self._flush_reports()
            # Do not keep the ETag of a refused answer: the next poll must see a corrected one in full.
            self._etag = None
            return PollResult(
                PollOutcome.FAILED,
                self._interval(interval),
                f"assignment refused: {exc}",
                attack=True,
                error=VerificationError,
            )
        new_etag = answer.etag
        interval = interval or float(assignment.poll_interval)
        if assignment.counter > state.highest_assignment_counter:
            self._save(replace(state, highest_assignment_counter=assignment.counter))
        delay = self._interval(interval, assignment.poll_jitter)
        target = assignment.target
        if target is None:
            self._etag = new_etag
            return PollResult(PollOutcome.NO_TARGET, delay)
        if target.sha256 == current:
            self._etag = new_etag
            return PollResult(PollOutcome.UP_TO_DATE, delay)
        failure_key = f"{assignment.counter}:{target.sha256}"
        if state.failures().get(failure_key, 0) >= self.config.max_same_failures:
            self._etag = new_etag
            return PollResult(
                PollOutcome.SKIPPED, delay, "this assignment failed before; waiting for a new one"
            )
        try:
            try:
                plan = self._plan(enrolment, assignment, current)
            except FetchError as exc:
                plan = self._plan_with_corrected_urls(enrolment, assignment, current, exc)
        except VerificationError as exc:
            self._remember_failure(failure_key)
            self._report_failure(assignment, str(exc), attack=True)
            self._flush_reports()
            self._etag = new_etag
            return PollResult(PollOutcome.FAILED, delay, str(exc), attack=True, error=type(exc))
        if assignment.release_seq is not None:
            self._save(self.installer.state().with_release_seq(target.sha256, assignment.release_seq))
        outcome = self.installer.install(plan)
        self._flush_reports()
        if outcome.status is ReportStatus.COMMITTED:
            self._etag = None  # the device's current hash changed: the next answer differs
            return PollResult(PollOutcome.INSTALLED, delay, "delta" if outcome.used_delta else "full")
        rolled_back = outcome.status is ReportStatus.ROLLED_BACK
        if not rolled_back and not outcome.attack and outcome.transient:
            # Network trouble: the same assignment may succeed on a later try.
            return self._back_off(outcome.reason or "download failed", error=outcome.error)
        self._remember_failure(failure_key)
        self._etag = new_etag
        return PollResult(
            PollOutcome.ROLLED_BACK if rolled_back else PollOutcome.FAILED,
            delay,
            outcome.reason,
            attack=outcome.attack,
            error=outcome.error,
        )

    # ---- verification -------------------------------------------------------------------------------

    def _plan(self, enrolment: Enrolment, assignment: Assignment, current: str | None) -> UpdatePlan:
        """Refresh the image repository, look up the targets the assignment names, and plan (pure).

        The I/O is here (ngclient's refresh and lookups); every decision is :func:`ota.edge.plan.plan_update`.
        """
        names = targets_to_look_up(assignment, current)
        updater = self._updater(enrolment)
        infos: dict[str, TargetFile] = {name: self._targetinfo(updater, name) for name in names}
        vectors = selftest_name(infos[names[0]], names[0])
        if vectors is not None:
            infos[vectors] = self._targetinfo(updater, vectors)
        return plan_update(
            assignment,
            current_sha256=current,
            targets=infos,
            repository=Repository(enrolment.targets_url, self._consistent_snapshot()),
            limits=Limits(
                max_download_bytes=self.config.max_download_bytes,
                max_selftest_bytes=self.config.max_selftest_bytes,
            ),
        )

    def _updater(self, enrolment: Enrolment) -> Updater:
        if not self.identity.has_trusted_root():
            raise VerificationError("no trusted TUF root stored; enrol again")
        limit = self.config.max_metadata_bytes
        config = UpdaterConfig(
            root_max_length=limit,
            timestamp_max_length=min(limit, 64 * 1024),
            snapshot_max_length=limit,
            targets_max_length=limit * 4,
        )
        staging = self.state_dir / "staging"
        # ngclient would create this folder with the umask's mode; made first, it is private like the rest.
        ensure_private_dir(self.identity.tuf_dir / "root_history")
        updater = Updater(
            metadata_dir=str(self.identity.tuf_dir),
            metadata_base_url=enrolment.metadata_url,
            target_dir=str(staging),
            target_base_url=enrolment.targets_url,
            fetcher=HttpxFetcher(self.client),
            config=config,
            bootstrap=None,
        )
        # One device clock for both repositories: the director's expiry is checked against ``_now()``, and
        # ngclient must use the same time. It reads the wall clock once, in TrustedMetadataSet's
        # constructor, and has no setting for it (slack time is still an open spec question:
        # https://github.com/theupdateframework/specification/issues/137), so set its reference time here,
        # before refresh() makes any expiry check.
        updater._trusted_set.reference_time = self._now()
        try:
            updater.refresh()
        except tuf_errors.RepositoryError as exc:
            raise VerificationError(f"TUF metadata refused: {type(exc).__name__}: {exc}") from exc
        except tuf_errors.SlowRetrievalError as exc:
            raise VerificationError(f"TUF metadata download too slow: {exc}") from exc
        except tuf_errors.DownloadLengthMismatchError as exc:
            raise VerificationError(f"TUF metadata larger than allowed: {exc}") from exc
        except tuf_errors.DownloadError as exc:
            raise FetchError(f"TUF metadata download failed: {exc}") from exc
        except OSError as exc:
            # ngclient writes the metadata it accepts under identity/tuf: a full disk lands here.
            raise SlotError(f"cannot store TUF metadata: {exc}") from exc
        return updater

    def _targetinfo(self, updater: Updater, name: str) -> TargetFile:
        try:
            info = updater.get_targetinfo(name)
        except tuf_errors.RepositoryError as exc:
            raise VerificationError(f"TUF refused {name}: {exc}") from exc
        except tuf_errors.DownloadError as exc:
            raise FetchError(f"TUF metadata download failed: {exc}") from exc
        except OSError as exc:
            raise SlotError(f"cannot store TUF metadata: {exc}") from exc
        if info is None:
            raise VerificationError(f"the image repository has no target {name!r}")
        return info

    def _consistent_snapshot(self) -> bool:
        """Whether the trusted root uses consistent snapshots (target URLs then carry the hash)."""
        try:
            return bool(
                Metadata[Root].from_file(str(self.identity.trusted_root_path)).signed.consistent_snapshot
            )
        except (OSError, ValueError, tuf_errors.RepositoryError):
            return True

    def _plan_with_corrected_urls(
        self, enrolment: Enrolment, assignment: Assignment, current: str | None, failure: FetchError
    ) -> UpdatePlan:
        """Recover from repository URLs stored while the server advertised a wrong public URL.

        The stored metadata URL failed to download, while the server this agent was started with has just
        answered the assignment. Ask that server again: re-enrol with the existing key (the enrol endpoint
        answers the same device again) when this start has a provisioning token; URLs it answers that
        differ from the stored ones replace them on disk once a plan was made with them. Otherwise (no
        token, or the server still advertises the same URLs) try the server's standard layout under the
        agent's own server URL for this poll only, without storing it: a transient outage of a separate
        repository host (a CDN) must not move the device off it for good. Everything downloaded from any
        of these URLs is verified by TUF exactly as before, and the trusted root is never replaced, so a
        URL is not a trust decision.

        Raises:
            FetchError: ``failure`` when the stored URLs are already the server's own, or the retry failed.
            VerificationError: The retry was refused.
        """
        if enrolment.metadata_url.startswith(self.server_url + "/"):
            raise failure  # already the server's own URLs: a real outage, not a stale enrolment
        answered: Enrolment | None = None
        if self.provisioning_token is not None:
            try:
                enrolled = self._enrol()
            except EdgeError as exc:
                log.warning("re-enrolment to refresh the repository URLs failed: %s", exc)
            else:
                answered = enrolled[0] if enrolled is not None else None
        if answered is not None and answered.metadata_url != enrolment.metadata_url:
            log.warning(
                "repository URL %s failed (%s); the server now says %s",
                enrolment.metadata_url,
                failure,
                answered.metadata_url,
            )
            plan = self._plan(answered, assignment, current)
            self.identity.store_enrolment(answered, {})  # the stored root stays: it is never swapped
            return plan
        own = replace(
            enrolment,
            metadata_url=f"{self.server_url}/tuf/metadata/",
            targets_url=f"{self.server_url}/tuf/targets/",
        )
        log.warning(
            "repository URL %s failed (%s); trying %s for this poll",
            enrolment.metadata_url,
            failure,
            own.metadata_url,
        )
        return self._plan(own, assignment, current)

    # ---- enrolment, tokens, reports ------------------------------------------------------------------

    def _enrol(self) -> tuple[Enrolment, dict[str, Any]] | None:
        """Enrol (or re-enrol with the same key); return the enrolment and TUF root, None when refused.

        Nothing is stored here.

        Raises:
            EdgeError: The call failed (see :meth:`ota.edge.api.DeviceApi.enrol`).
        """
        assert self.provisioning_token is not None
        request = EnrolmentRequest(
            device_id=self.device_id,
            provisioning_token=self.provisioning_token,
            public_key=self.identity.public_key_dict(),
            hardware_profile=self.hardware.name,
            hardware=self.hardware.with_runtime().to_details(),
            tags=self.tags,
            group=self.group,
        )
        answer = self.api.enrol(request)
        if answer is None:
            return None
        enrolment = Enrolment(
            device_id=answer.device_id,
            metadata_url=answer.metadata_url,
            targets_url=answer.targets_url,
            director_key=answer.director_key,
            admission=answer.state.value,
            hardware_profile=self.hardware.name,
        )
        return enrolment, answer.tuf_root

    def _ensure_enrolled(self) -> Enrolment:
        enrolment = self.identity.load_enrolment()
        if enrolment is not None and enrolment.admission == AdmissionState.ACCEPTED.value:
            return enrolment
        if self.provisioning_token is None:
            if enrolment is None:
                raise EdgeError("this device is not enrolled; pass --provisioning-token")
            if enrolment.admission == AdmissionState.PENDING.value:
                return self._recheck_admission(enrolment)
            return enrolment
        answered = self._enrol()
        if answered is None:
            return Enrolment(self.device_id, "", "", {}, AdmissionState.REJECTED.value)
        enrolment, tuf_root = answered
        self.identity.store_enrolment(enrolment, tuf_root)
        return enrolment

    def _recheck_admission(self, enrolment: Enrolment) -> Enrolment:
        """Ask a pending device's server, without the provisioning token, whether it was accepted.

        A restarted agent (``edgefleet-agent`` without ``--provisioning-token``) must not sit at "pending"
        forever after ``edgefleet devices accept``: the token endpoint, signed with the device key, issues
        a poll token to accepted devices only, so a token means accepted (stored; the root stays) and a 403
        means still pending.

        Raises:
            EdgeError: The call failed for another reason than a refusal (see
                :meth:`ota.edge.api.DeviceApi.token`).
        """
        try:
            self.api.token()
        except HttpStatusError as exc:
            if exc.status_code == 403:
                return enrolment
            raise
        accepted = replace(enrolment, admission=AdmissionState.ACCEPTED.value)
        self.identity.store_enrolment(accepted, {})  # the stored root stays: it is never swapped
        return accepted

    def _ensure_token(self) -> str:
        """Return a valid poll token (see :meth:`ota.edge.api.DeviceApi.token`)."""
        return self.api.token()

    def _flush_reports(self) -> None:
        if not self.reports.pending():
            return
        self.reports.flush(self.api.post_report)

    def _on_install_event(self, event: InstallEvent) -> None:
        state = self.installer.state()
        if event.status is ReportStatus.ROLLED_BACK:
            # Also covers a rollback by the boot counter at startup, outside any poll: the same assignment
            # must not be installed again until the director changes its mind.
            self._remember_failure(f"{event.plan.assignment_counter}:{event.plan.target.sha256}")
            state = self.installer.state()
        self.reports.enqueue(
            event.status,
            release_id=event.plan.release_id,
            rollout_id=event.plan.rollout_id,
            target_sha256=event.plan.target.sha256,
            current_sha256=state.committed.sha256 if state.committed else None,
            bytes_downloaded=event.bytes_downloaded,
            attack=event.attack,
            details=event.details,
        )

    def _on_state_recovered(self, reason: str) -> None:
        # Queued on disk at once, so it is sent even when this process is `agent status`.
        self._report_failure(None, reason, attack=False)

    def _report_failure(self, assignment: Assignment | None, reason: str, *, attack: bool) -> None:
        state = self.installer.state()
        self.reports.enqueue(
            ReportStatus.FAILED,
            release_id=assignment.release_id if assignment else None,
            rollout_id=assignment.rollout_id if assignment else None,
            target_sha256=assignment.target.sha256 if assignment and assignment.target else None,
            current_sha256=state.committed.sha256 if state.committed else None,
            attack=attack,
            details={"reason": reason},
        )

    def _remember_failure(self, key: str) -> None:
        self._save(self.installer.state().with_failure(key))

    def _save(self, state: AgentState) -> None:
        self.installer.states.save(state)

    def _now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset_s)


def agent_from_args(
    *,
    server: str,
    state_dir: Path,
    provisioning_token: str | None,
    profile: str | None,
    device_id: str | None = None,
    config: AgentConfig | None = None,
) -> Agent:
    """Build an agent the way the CLI does (kept here so the simulator and tests share it).

    Raises:
        EdgeError: If the state dir or the device key cannot be prepared.
    """
    ensure_private_dir(state_dir)
    return Agent(
        server_url=server,
        state_dir=state_dir,
        provisioning_token=provisioning_token,
        profile=profile,
        device_id=device_id,
        config=config,
    )


def describe(agent: Agent) -> dict[str, Any]:
    """Return a JSON-able summary of the agent's identity and state, for ``agent status``."""
    state = agent.installer.state()
    enrolment = agent._stored_enrolment()
    return {
        "device_id": agent.device_id,
        "profile": agent.hardware.name,
        "admission": enrolment.admission if enrolment else "not enrolled",
        "hardware": agent.hardware.with_runtime().to_details(),
        "phase": state.phase.value,
        "committed": None if state.committed is None else state.committed.to_json(),
        "active_slot": state.active_slot,
        "last_outcome": state.last_outcome,
        "queued_reports": len(agent.reports.pending()),
    }

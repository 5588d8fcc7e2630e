"""Fleet simulator: N real agents against a real server, in a few processes with a thread per agent.

Each simulated device is a full :class:`~ota.edge.agent.Agent` with its own state dir, Ed25519 key and
report queue, talking HTTP to the server like a real device. Failures can be injected:

* ``fail_rate``: the health check fails for that share of (device, release) pairs (deterministic per pair,
  so a failing device keeps failing that release and the rollout's abort logic sees it);
* ``flaky_network``: that share of HTTP requests fails with a dropped connection, before the request or
  partway through a response body (so resumable downloads are exercised);
* ``crash_rate``: that share of installs "crashes" at the health check; the device restarts its agent on
  the same state dir, which counts a boot on trial and carries on (like a reboot).

Workers send one event per poll to the parent, which draws rich progress bars (devices per version) and
prints a summary at the end: devices per version, bytes downloaded compared with full downloads (one
definition, :func:`ota.core.savings.bytes_saved`), deltas, failures, rollbacks, attacks, and the causes of
errors grouped (HTTP status with the server's message, connection refused, TUF refusal, …).

``edgefleet fleet simulate`` prepares a run with :func:`prepare_fleet` before starting any agent: it needs
a provisioning token (or creates one with an operator token), keeps device identities per server (the work
dir has one folder per server URL and server identity, so identities enrolled with another server are never
reused), takes the profile from the server's releases, and stops once the fleet has converged
(:func:`fleet_converged`). The demo and load benchmarks call :func:`simulate_fleet` directly.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import queue
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from ota.client.api import OperatorClient
from ota.client.errors import ApiError, ClientError, ServerUnreachableError
from ota.client.models import Release, Rollout
from ota.core.files import sha256_file
from ota.core.logs import quiet_library_loggers
from ota.core.nudge import DEFAULT_TOPIC_PREFIX
from ota.core.savings import bytes_saved
from ota.edge.config import AgentConfig
from ota.edge.errors import EdgeError
from ota.edge.health import HealthResult, run_health_check
from ota.edge.nudge import DEFAULT_SPREAD_S, NudgeListener, wait_for_poll
from ota.edge.state import InstalledModel

if TYPE_CHECKING:
    from ota.edge.agent import Agent


@dataclass(frozen=True)
class FleetOptions:
    """How to run a simulated fleet (see ``edgefleet fleet simulate --help``)."""

    server: str
    devices: int = 10
    provisioning_token: str = ""
    fail_rate: float = 0.0
    flaky_network: float = 0.0
    crash_rate: float = 0.0
    processes: int = 2
    duration_s: float = 300.0
    poll_interval_s: float = 2.0
    work_dir: Path = Path(".edgefleet/fleet")
    profile: str = "auto"
    seed: int = 0
    tags: tuple[str, ...] = ()
    group: str | None = None
    show_progress: bool = True
    #: MQTT broker for push nudges (``ota.edge.nudge``); None: polling only.
    mqtt_url: str | None = None
    mqtt_topic_prefix: str = DEFAULT_TOPIC_PREFIX
    nudge_spread_s: float = DEFAULT_SPREAD_S
    #: Each device's first poll comes a uniform random 0 to this many seconds after start (None: one poll
    #: interval, so an enrolled fleet polls in a steady, evenly spread rhythm from the start).
    first_poll_spread_s: float | None = None


@dataclass
class DeviceStatus:
    """The parent's view of one device."""

    version: str = "-"
    polls: int = 0
    installs: int = 0
    delta_installs: int = 0
    bytes_downloaded: int = 0
    full_bytes: int = 0
    failures: int = 0
    rollbacks: int = 0
    attacks: int = 0
    errors: int = 0
    crashes: int = 0
    #: The device runs what its assignment names (``up-to-date``; ``no-target`` when it names nothing), or
    #: has given up on the assignment after a failure and waits for a new one (``skipped``). A 304 keeps
    #: the last value.
    settled: bool = False
    last_outcome: str = "-"
    #: Wall-clock times (``time.time()``) at which installs started (the plan persisted, download next).
    install_starts: list[float] = field(default_factory=list)


#: Poll outcomes after which a device runs its assignment or waits for a new one.
SETTLED_OUTCOMES = frozenset({"up-to-date", "no-target", "skipped"})


@dataclass
class FleetSummary:
    """What the fleet did, aggregated over devices.

    Attributes:
        devices: Per-device status, by device id.
        causes: How many errors, failures and refusals each cause produced (see :func:`error_cause`).
        converged: True when the run stopped because the fleet converged, False when it ran out of time,
            None when the caller gave no convergence test.
    """

    devices: dict[str, DeviceStatus] = field(default_factory=dict)
    causes: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    converged: bool | None = None

    def settled(self) -> int:
        """How many devices run their assignment (or wait for a new one)."""
        return sum(1 for status in self.devices.values() if status.settled)

    def running_a_release(self) -> int:
        """How many devices have a committed model."""
        return sum(1 for status in self.devices.values() if status.version != "-")

    def versions(self) -> Counter[str]:
        """Return how many devices run each version."""
        return Counter(status.version for status in self.devices.values())

    def totals(self) -> dict[str, int]:
        """Return fleet-wide counters."""
        keys = (
            "polls",
            "installs",
            "delta_installs",
            "bytes_downloaded",
            "full_bytes",
            "failures",
            "rollbacks",
            "attacks",
            "errors",
            "crashes",
        )
        return {key: sum(getattr(s, key) for s in self.devices.values()) for key in keys}

    @property
    def duration_s(self) -> float:
        """Seconds from start to finish (or now)."""
        return (self.finished or time.monotonic()) - self.started


# BaseException, so that no `except Exception` on the way swallows the simulated death.
class SimulatedCrash(BaseException):
    """Raised at an installer fault point to simulate the process dying mid-install."""


class FlakyTransport(httpx.BaseTransport):
    """Wraps a transport and drops a share of connections, before a request or partway through a body.

    Args:
        inner: The real transport.
        rate: Probability that a request is disturbed.
        rng: Randomness (one per device, seeded).
    """

    def __init__(self, inner: httpx.BaseTransport, *, rate: float, rng: random.Random) -> None:
        self.inner = inner
        self.rate = rate
        self.rng = rng
        self.lock = threading.Lock()

    def _roll(self) -> float:
        with self.lock:
            return self.rng.random()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``, maybe failing it like a dropped connection.

        Raises:
            httpx.ConnectError: When the simulated connection drops before the request.
        """
        if self.rate and self._roll() < self.rate / 2:
            raise httpx.ConnectError("simulated dropped connection", request=request)
        response = self.inner.handle_request(request)
        if (
            self.rate
            and self._roll() < self.rate / 2
            and request.method == "GET"
            and "/targets/" in str(request.url)
        ):
            cut_after = int(self._roll() * 256 * 1024)
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=_CutStream(response.stream, cut_after),
                request=request,
                extensions=response.extensions,
            )
        return response

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()


class _CutStream(httpx.SyncByteStream):
    def __init__(self, inner: Any, cut_after: int) -> None:
        self.inner = inner
        self.cut_after = cut_after

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) > self.cut_after:
                yield chunk[: max(0, self.cut_after - sent)]
                raise httpx.RemoteProtocolError("simulated connection cut mid-body")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (same device and release → same draw)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _device_loop(index: int, options: FleetOptions, events: Any, stop: Any) -> None:
    from ota.edge.agent import Agent  # imported in the worker, after the fork/spawn

    device_id = f"sim-{options.seed}-{index:05d}"
    state_dir = options.work_dir / device_id
    state_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{options.seed}:{index}")
    config = AgentConfig(
        poll_interval_min_s=max(0.05, options.poll_interval_s / 2),
        poll_interval_default_s=max(0.05, options.poll_interval_s),
        # The simulator's interval wins over the server's (a real fleet's 60 s would make a demo crawl).
        poll_interval_max_s=max(0.1, options.poll_interval_s * 2),
        retry_base_s=0.2,
        retry_cap_s=max(1.0, options.poll_interval_s * 2),
        warmup_runs=1,
        latency_runs=3,
        ort_intra_op_threads=1,
    )
    crash_next: dict[str, bool] = {}
    install_starts: list[float] = []

    def health(model: Path, vectors: Path | None, budget: float | None) -> HealthResult:
        sha = sha256_file(model)[0]
        if _unit("fail", options.seed, device_id, sha) < options.fail_rate:
            return HealthResult(ok=False, stage="selftest", reason="injected health-check failure")
        return run_health_check(model, vectors, config=config, latency_budget_ms=budget)

    def fault(point: str) -> None:
        if point == "downloading":
            install_starts.append(time.time())
        if point == "health-check" and crash_next.pop("armed", False):
            raise SimulatedCrash

    def build() -> Agent:
        transport: httpx.BaseTransport = httpx.HTTPTransport()
        if options.flaky_network:
            transport = FlakyTransport(transport, rate=options.flaky_network, rng=random.Random(rng.random()))
        client = httpx.Client(
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            follow_redirects=True,
            transport=transport,
        )
        return Agent(
            server_url=options.server,
            state_dir=state_dir,
            config=config,
            provisioning_token=options.provisioning_token,
            profile=options.profile,
            device_id=device_id,
            tags=options.tags,
            group=options.group,
            client=client,
            health_check=health,
            fault=fault,
            rng=random.Random(rng.random()),
        )

    agent: Agent | None = None
    listener = None
    if options.mqtt_url:  # listening from the start: a nudge may end the first wait
        agent = build()
        listener = NudgeListener(
            url=options.mqtt_url,
            device_id=device_id,
            profile=agent.hardware.name,
            prefix=options.mqtt_topic_prefix,
            spread_s=options.nudge_spread_s,
            rng=random.Random(rng.random()),
        )
        listener.start()
    wake = listener.wake if listener is not None else None
    # Spread the first polls so that a fleet started at once does not hit the server at once.
    first = options.poll_interval_s if options.first_poll_spread_s is None else options.first_poll_spread_s
    if wait_for_poll(stop, wake, rng.uniform(0, first)):
        if agent is not None:
            _close(agent, listener)
        return
    agent = agent or build()
    while not stop.is_set():
        crash_next["armed"] = rng.random() < options.crash_rate
        crashed = False
        bytes_before = agent.fetcher.total_bytes_transferred
        try:
            result = agent.poll_once()
        except SimulatedCrash:
            crashed = True
            agent.client.close()
            agent = build()  # the device "reboots": a fresh agent on the same state dir
            result = None
        except EdgeError as exc:  # a bug or a broken state dir: report it, do not kill the whole worker
            events.put({"device": device_id, "outcome": "error", "detail": str(exc)})
            stop.wait(options.poll_interval_s)
            continue
        state = agent.installer.state()
        events.put(
            {
                "device": device_id,
                "outcome": "crashed" if crashed else result.outcome if result else "error",
                "detail": None if result is None else result.detail,
                "attack": bool(result and result.attack),
                "version": state.committed.version if state.committed else "-",
                "length": _full_install_length(agent, state.committed),
                "bytes": agent.fetcher.total_bytes_transferred - bytes_before,
                "install_starts": install_starts[:],
            }
        )
        install_starts.clear()
        wait_for_poll(stop, wake, result.delay_s if result else 0.0)
    _close(agent, listener)


def _close(agent: Agent, listener: NudgeListener | None) -> None:
    if listener is not None:
        listener.stop()
    agent.client.close()


def _full_install_length(agent: Agent, committed: InstalledModel | None) -> int:
    """What installing the committed model costs without a delta: the model and its self-test vectors."""
    if committed is None:
        return 0
    slot = agent.installer.slots.current_target()
    vectors = agent.installer.slots.vectors_path(slot) if slot is not None else None
    return committed.length + (vectors.stat().st_size if vectors is not None and vectors.is_file() else 0)


def _worker(indices: list[int], options: FleetOptions, events: Any, stop: Any) -> None:
    quiet_library_loggers()  # a spawned worker starts with default levels; $EDGEFLEET_LOG_LEVEL reaches it
    threads = [
        threading.Thread(target=_device_loop, args=(i, options, events, stop), daemon=True) for i in indices
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _apply(summary: FleetSummary, event: dict[str, Any]) -> None:
    status = summary.devices.setdefault(event["device"], DeviceStatus())
    status.polls += 1
    outcome = event["outcome"]
    status.last_outcome = outcome
    if outcome != "unchanged":
        status.settled = outcome in SETTLED_OUTCOMES
    if outcome in {"error", "failed", "rolled-back", "pending", "rejected", "crashed"}:
        summary.causes[error_cause(outcome, event.get("detail"))] += 1
    if "version" in event:
        status.version = event["version"]
    status.install_starts.extend(event.get("install_starts", ()))
    status.bytes_downloaded += int(event.get("bytes", 0))
    if outcome == "installed":
        status.installs += 1
        status.full_bytes += int(event.get("length", 0))
        if event.get("detail") == "delta":
            status.delta_installs += 1
    elif outcome == "rolled-back":
        status.rollbacks += 1
    elif outcome == "failed":
        status.failures += 1
    elif outcome == "error":
        status.errors += 1
    elif outcome == "crashed":
        status.crashes += 1
    if event.get("attack"):
        status.attacks += 1


TICK_S = 0.2
"""How often the fleet loop checks its deadline, stop condition and progress display."""


def drain_events(events: Any, summary: FleetSummary, *, until: float) -> int:
    """Apply queued events to ``summary`` until the queue is empty or the monotonic time ``until``.

    A busy fleet never leaves the queue empty for long, so draining "until empty" could run forever and
    starve the deadline and stop checks; the time bound keeps the loop ticking.

    Returns:
        How many events were applied.
    """
    applied = 0
    try:
        while (left := until - time.monotonic()) > 0:
            _apply(summary, events.get(timeout=left))
            applied += 1
    except queue.Empty:
        pass
    return applied


def simulate_fleet(
    options: FleetOptions,
    *,
    until: Callable[[FleetSummary], bool] | None = None,
    on_tick: Callable[[FleetSummary], None] | None = None,
    converged: Callable[[FleetSummary], bool] | None = None,
) -> FleetSummary:
    """Run the fleet until ``duration_s`` passes or ``until(summary)`` is true; print the summary.

    Args:
        options: Fleet size, failure rates, timing.
        until: Optional stop condition, checked a few times a second.
        on_tick: Called a few times a second (benchmarks drive rollouts from it).
        converged: Optional convergence test (see :func:`fleet_converged`): the run stops when it is true
            and ``summary.converged`` says whether it was (False when the duration ran out first).

    Returns:
        The aggregated summary.

    Raises:
        EdgeError: If the options make no sense.
    """
    if options.devices < 1 or options.processes < 1:
        raise EdgeError("devices and processes must be ≥ 1")
    options.work_dir.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")  # no fork: ORT and httpx pools do not survive forking
    events = context.Queue()
    stop = context.Event()
    processes = min(options.processes, options.devices)
    shards = [list(range(p, options.devices, processes)) for p in range(processes)]
    workers = [
        context.Process(target=_worker, args=(shard, options, events, stop), daemon=True) for shard in shards
    ]
    for worker in workers:
        worker.start()
    summary = FleetSummary()
    deadline = time.monotonic() + options.duration_s
    progress_cm = _FleetProgress(options, summary) if options.show_progress else None
    try:
        with progress_cm if progress_cm is not None else _NullContext():
            while time.monotonic() < deadline:
                drain_events(events, summary, until=min(time.monotonic() + TICK_S, deadline))
                if progress_cm is not None:
                    progress_cm.refresh()
                if on_tick is not None:
                    on_tick(summary)
                if until is not None and until(summary):
                    break
                if converged is not None and converged(summary):
                    summary.converged = True
                    break
            else:
                if converged is not None:
                    summary.converged = False
    finally:
        stop.set()
        summary.finished = time.monotonic()
        # Keep draining while the workers finish their current poll: their last events (an install whose
        # report already reached the server) count too, and a worker cannot exit while its queue is full.
        join_by = time.monotonic() + 30
        while any(worker.is_alive() for worker in workers) and time.monotonic() < join_by:
            drain_events(events, summary, until=time.monotonic() + TICK_S)
        drain_events(events, summary, until=time.monotonic() + TICK_S)
        for worker in workers:
            worker.join(timeout=1)
            if worker.is_alive():
                worker.terminate()
    if options.show_progress:
        print_summary(summary)
    return summary


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


class _FleetProgress:
    """Rich progress bars: one per version (devices running it) plus poll and failure counters."""

    def __init__(self, options: FleetOptions, summary: FleetSummary) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.options = options
        self.summary = summary
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        )
        self.tasks: dict[str, Any] = {}
        self.status = self.progress.add_task("polls 0 · failures 0 · rollbacks 0", total=None)

    def __enter__(self) -> _FleetProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh()
        self.progress.__exit__(None, None, None)

    def refresh(self) -> None:
        for version, count in sorted(self.summary.versions().items()):
            if version not in self.tasks:
                self.tasks[version] = self.progress.add_task(f"version {version}", total=self.options.devices)
            self.progress.update(self.tasks[version], completed=count)
        totals = self.summary.totals()
        self.progress.update(
            self.status,
            description=(
                f"polls {totals['polls']} · installs {totals['installs']} "
                f"(delta {totals['delta_installs']}) · "
                f"failures {totals['failures']} · rollbacks {totals['rollbacks']} · errors {totals['errors']}"
            ),
        )


def print_summary(summary: FleetSummary) -> None:
    """Print the end-of-run table: devices per version, bytes against full downloads, causes of errors."""
    from rich.console import Console
    from rich.table import Table

    totals = summary.totals()
    console = Console()
    versions = Table(title=f"Fleet after {summary.duration_s:.1f} s")
    versions.add_column("version")
    versions.add_column("devices", justify="right")
    for version, count in sorted(summary.versions().items()):
        versions.add_row(version, str(count))
    console.print(versions)
    savings = bytes_saved(totals["bytes_downloaded"], totals["full_bytes"])
    stats = Table(show_header=False)
    for label, value in (
        ("installs (delta)", f"{totals['installs']} ({totals['delta_installs']})"),
        ("bytes downloaded", f"{totals['bytes_downloaded']:,}"),
        ("bytes if every install were full", f"{totals['full_bytes']:,}"),
        ("bytes saved", f"{savings.saved_bytes:,} ({savings.saved_fraction:.1%})"),
        ("bytes beyond full downloads", f"{savings.overhead_bytes:,}"),
        (
            "failures / rollbacks / attacks",
            f"{totals['failures']} / {totals['rollbacks']} / {totals['attacks']}",
        ),
        ("errors / simulated crashes", f"{totals['errors']} / {totals['crashes']}"),
        ("polls", str(totals["polls"])),
        ("devices settled", f"{summary.settled()} of {len(summary.devices)}"),
    ):
        stats.add_row(label, value)
    console.print(stats)
    if summary.causes:
        causes = Table(title="causes of errors, failures and refusals")
        causes.add_column("count", justify="right")
        causes.add_column("cause", overflow="fold")
        for cause, count in summary.causes.most_common():
            causes.add_row(str(count), cause)
        console.print(causes)
    if summary.converged is True:
        console.print(f"[green]converged[/] in {summary.duration_s:.1f} s")
    elif summary.converged is False:
        console.print(
            f"[bold red]not converged[/] after {summary.duration_s:.1f} s: "
            f"{summary.settled()} of {len(summary.devices)} devices run their assignment"
        )


# ---- causes of errors ------------------------------------------------------------------------------

_STATUS = re.compile(r"answered (\d{3}): ?(.*)$", re.S)


def error_cause(outcome: str, detail: str | None) -> str:
    """Name the cause of a failed poll, coarsely enough to group a fleet's errors by it.

    Args:
        outcome: The poll outcome (``error``, ``failed``, ``pending``, ...).
        detail: The poll's detail text (the edge error's type and message).

    Returns:
        A short label: ``HTTP 401: <server message>``, ``connection refused``, ``TUF refusal: ...``, ...
    """
    text = detail or ""
    if outcome == "pending":
        return "awaiting admission: the provisioning token does not auto-accept (edgefleet devices accept)"
    if outcome == "rejected":
        return "device rejected or revoked by an operator"
    if outcome == "crashed":
        return "simulated crash (injected)"
    if outcome == "rolled-back":
        return f"rolled back: {_first_line(text) or 'health check failed'}"
    status = _STATUS.search(text)
    if status is not None:
        return f"HTTP {status.group(1)}: {_server_message(status.group(2))}"
    lowered = text.lower()
    if "connection refused" in lowered or "errno 111" in lowered:
        return "connection refused"
    if "simulated dropped connection" in lowered or "simulated connection cut" in lowered:
        return "dropped connection (injected --flaky-network)"
    if "timed out" in lowered or "timeout" in lowered:
        return "timeout"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "unknown host"
    if "tuf" in lowered and ("refused" in lowered or "expired" in lowered):
        return f"TUF refusal: {_first_line(text)[:160]}"
    if "not enrolled" in lowered:
        return "not enrolled: no provisioning token"
    if outcome == "failed":
        return f"install failed: {_first_line(text)[:160]}"
    kind, _, rest = text.partition(":")
    return f"{kind.strip() or 'error'}: {_first_line(rest)[:160]}" if rest else (kind or "error")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _server_message(snippet: str) -> str:
    """The server's error message from an answer's body snippet (its JSON ``error``/``detail``)."""
    try:
        body = json.loads(snippet)
    except ValueError:
        return _first_line(snippet)[:160] or "(no message)"
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])[:160]
    return _first_line(snippet)[:160]


# ---- preparing a run against a server ----------------------------------------------------------------


class FleetSetupError(EdgeError):
    """The simulation cannot start: a missing token, an unknown profile, a server that does not answer."""


class OperatorApi:
    """The few operator calls the simulator makes (releases, rollouts, a provisioning token), through the
    operator client (:class:`ota.client.api.OperatorClient`, which caps and parses every answer); every
    failure is a :class:`FleetSetupError` naming the HTTP status and the server's message.

    Args:
        server: Base URL of the OTA server.
        token: An operator token.
        transport: The HTTP transport (tests inject a mock one); a real connection by default.
    """

    def __init__(self, server: str, token: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self.server = server.rstrip("/")
        self.client = OperatorClient(base_url=self.server, token=token, timeout_s=10.0, transport=transport)

    @contextmanager
    def _asking(self, what: str) -> Iterator[None]:
        try:
            yield
        except ApiError as exc:
            raise FleetSetupError(f"{what}: the server answered HTTP {exc.status}: {exc.said}") from exc
        except ServerUnreachableError as exc:
            raise FleetSetupError(f"{what}: cannot reach {self.server}: {exc}") from exc
        except ClientError as exc:
            raise FleetSetupError(f"{what}: {exc}") from exc

    def releases(self) -> list[Release]:
        """``GET /v1/releases`` (read scope).

        Raises:
            FleetSetupError: The call failed or the answer is not a list of releases.
        """
        with self._asking("listing releases"):
            return self.client.releases()

    def rollouts(self) -> list[Rollout]:
        """``GET /v1/rollouts`` (read scope).

        Raises:
            FleetSetupError: The call failed or the answer is not a list of rollouts.
        """
        with self._asking("listing rollouts"):
            return self.client.rollouts()

    def create_provisioning_token(self, name: str) -> str:
        """``POST /v1/provisioning-tokens`` with auto-accept (admin scope); return the token's value.

        Raises:
            FleetSetupError: The call failed (a token without the admin scope gets HTTP 403).
        """
        with self._asking("creating a provisioning token"):
            return self.client.create_provisioning_token(name=name, auto_accept=True).token

    def profile_rollout_running(self, profile: str) -> bool:
        """Whether a rollout for ``profile`` is still running (paused ones wait for an operator).

        Raises:
            FleetSetupError: The call failed.
        """
        return any(r.state == "running" and r.selector.get("profile") == profile for r in self.rollouts())


def server_work_dir(base: Path, server: str, *, client: httpx.Client | None = None) -> Path:
    """The folder under ``base`` for device identities enrolled with ``server``.

    Keyed by the server URL and, when the server serves it, a fingerprint of its first TUF root (which
    never changes for a server's life): identities from a run against another server, or against an
    earlier server on the same port, are never reused, and a later run against the same server finds its
    devices again.
    """
    parts = urlsplit(server.rstrip("/"))
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parts.hostname or 'server'}-{parts.port or ''}").strip("_")
    fingerprint = hashlib.sha256(server.rstrip("/").encode())
    try:
        own = client or httpx.Client(timeout=5.0)
        answer = own.get(f"{server.rstrip('/')}/tuf/metadata/1.root.json")
        if answer.status_code == 200:
            fingerprint.update(answer.content)
        if client is None:
            own.close()
    except httpx.HTTPError:
        pass  # an unreachable server: the URL alone keys the folder, and the agents report the cause
    return base / f"{readable}-{fingerprint.hexdigest()[:12]}"


def prepare_fleet(
    options: FleetOptions, *, operator_token: str | None, api: OperatorApi | None = None
) -> tuple[FleetOptions, OperatorApi | None]:
    """Resolve the token, profile and work dir of a run before any agent starts.

    Args:
        options: The options as given (``provisioning_token`` empty and ``profile`` ``auto`` when not).
        operator_token: An operator token (``EDGEFLEET_OPERATOR_TOKEN``), or None.
        api: The operator client to use (tests inject one); built from ``operator_token`` otherwise.

    Returns:
        The resolved options and the operator client (None without an operator token).

    Raises:
        FleetSetupError: No provisioning token and no way to create one; a profile with no release, with
            the profiles that have one; an ``auto`` profile without an operator token; a server call failed.
    """
    if api is None and operator_token:
        api = OperatorApi(options.server, operator_token)
    token = options.provisioning_token
    if not token:
        if api is None:
            raise FleetSetupError(
                "no provisioning token: pass --provisioning-token (or set EDGEFLEET_PROVISIONING_TOKEN), "
                "or set EDGEFLEET_OPERATOR_TOKEN to an admin token to create one"
            )
        token = api.create_provisioning_token(f"fleet-simulate-{int(time.time())}")
    profile = options.profile
    if api is not None:
        releases = api.releases()
        profiles = sorted({r.profile for r in releases})
        if not profiles:
            raise FleetSetupError(
                f"{options.server} has no release yet: publish one first (edgefleet release publish)"
            )
        if profile == "auto":
            if len(profiles) > 1:
                raise FleetSetupError(
                    "the server has releases for several profiles; "
                    f"pass --profile one of: {', '.join(profiles)}"
                )
            profile = profiles[0]
        elif profile not in profiles:
            raise FleetSetupError(
                f"no release for profile {profile!r} on {options.server}; "
                f"profiles with releases: {', '.join(profiles)}"
            )
    elif profile == "auto":
        raise FleetSetupError(
            "cannot tell the profile without an operator token: pass --profile, or set "
            "EDGEFLEET_OPERATOR_TOKEN (read scope) to take it from the server's releases"
        )
    work_dir = server_work_dir(options.work_dir, options.server)
    return replace(options, provisioning_token=token, profile=profile, work_dir=work_dir), api


def fleet_converged(
    summary: FleetSummary, *, devices: int, rollout_running: Callable[[], bool] | None
) -> bool:
    """Whether every device runs its assignment (or gave up on it) and no rollout of the profile still runs.

    Args:
        summary: The fleet so far.
        devices: How many devices the fleet has.
        rollout_running: Asks the server whether a rollout of the fleet's profile is still running; None
            without an operator token (then only the devices' own view counts).
    """
    if len(summary.devices) < devices or summary.settled() < devices:
        return False
    return rollout_running is None or not rollout_running()


def throttled(check: Callable[[], bool], every_s: float) -> Callable[[], bool]:
    """``check`` called at most once per ``every_s`` seconds; in between, its last answer."""
    last: list[float | bool] = [0.0, True]

    def call() -> bool:
        now = time.monotonic()
        if now - float(last[0]) >= every_s:
            last[:] = [now, check()]
        return bool(last[1])

    return call

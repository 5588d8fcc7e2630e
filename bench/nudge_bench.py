"""Nudge benchmark: how long a fleet takes to notice a rollout, with MQTT push nudges and by polling alone.

One run, one server, one broker, the same simulated devices throughout (``ota.edge.fleet``: real agents, each
with its own key and state dir, in a few processes; the OTA server runs in this process on uvicorn, SQLite,
with a request counter in front). Mosquitto is a child process on a free port, so it can be stopped.

1. Enrolment: the devices enrol and poll until each has done so (fast polling; not measured).
2. For each scenario, a new release rolled out at 100 % to every device, measured from the moment the
   rollout is started (just before ``POST /v1/rollouts``) to the moment each device starts its install
   (the installer's ``downloading`` step, after the signed assignment and TUF metadata were verified):

   * ``nudge, spread S``: agents with ``--mqtt`` and a nudge spread of S seconds, poll interval 300 s; the
     rollout starts once every agent listens and has polled once (within 15 s of its start, so the nudged
     poll is a running agent's, holding its poll token, and its next regular poll is minutes away);
   * ``nudge, no spread``: the same with a spread of 0 (the peak request rate a burst causes);
   * ``polling only``: no broker, poll interval 300 s, run until every device started or a deadline of
     1.15 intervals (the agent's own jitter is ±10 %); the devices' polls are spread evenly over the
     interval (each device's first poll comes uniformly within one interval of its start), as in a fleet
     that has been running a while;
   * ``broker stopped``: a shorter interval (``--outage-interval``, default 20 s) so the part stays short;
     phases 50 % → 100 %: the first half is nudged, then the broker is killed and the rollout advanced by
     hand: the second half must converge by polling alone.

   Requests per second are counted by the server (every HTTP request, and assignment polls alone) in
   one-second bins; the peak is the busiest bin after the rollout started.

Prints one table with p50/p95/max time-to-install-start per scenario, the share of devices that started,
and the peak requests/s, with ratios to the polling-only baseline of the same run.

Run: ``.venv/bin/python bench/nudge_bench.py [--devices 200] [--spread 2] [--poll-interval 300]``.
Timings on a shared 2-core machine are upper bounds.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ota.edge.fleet import FleetOptions, FleetSummary, simulate_fleet
from ota.server.context import build_context
from ota.server.rollout_machine import in_cohort
from ota.server.settings import load_settings
from ota.server.testing import serve_in_thread
from ota.server.testing_broker import MosquittoProcess, free_port

PROFILE = "nudge-bench"
PREFIX = "bench"
SEED = 7
WARM_UP_S = 15.0  # with nudges, every agent polls once within this many seconds before the rollout starts
console = Console(width=160)
# Set at import, so the fleet's worker processes (which import this module) agree: one line per poll
# otherwise, and one per agent when the outage part kills the broker.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("ota.edge.nudge").setLevel(logging.ERROR)


def tiny_model(seed: int, size: int = 64) -> bytes:
    """A one-MatMul ONNX model (a few KB: installs are cheap, the bench measures time to notice)."""
    weights = np.random.default_rng(seed).normal(size=(size, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"])],
        "nudge-bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


class RequestCounter:
    """ASGI wrapper: (wall time, is-assignment-poll) of every HTTP request, and the device of each poll."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.stamps: list[tuple[float, bool]] = []
        self.poll_times: list[tuple[float, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            now, path = time.time(), scope["path"]
            poll = path.endswith("/assignment")
            self.stamps.append((now, poll))
            if poll:
                self.poll_times.append((now, path.split("/")[3]))
        await self.app(scope, receive, send)

    def first_polls(self, since: float) -> list[float]:
        """Seconds from ``since`` to each device's first assignment poll after it."""
        first: dict[str, float] = {}
        for at, device in list(self.poll_times):
            if at >= since and device not in first:
                first[device] = at - since
        return list(first.values())

    def polls(self, since: float, until: float) -> int:
        """Assignment polls in [since, until)."""
        return sum(1 for at, poll in list(self.stamps) if poll and since <= at < until)

    def peak(self, since: float, until: float) -> tuple[int, int]:
        """The busiest one-second bin in [since, until): (requests, polls)."""
        requests: Counter[int] = Counter()
        polls: Counter[int] = Counter()
        for at, poll in list(self.stamps):
            if since <= at < until:
                requests[int(at - since)] += 1
                polls[int(at - since)] += poll
        return max(requests.values(), default=0), max(polls.values(), default=0)


class SubscriptionCount:
    """The broker's ``$SYS/broker/subscriptions/count`` (published every second)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.value = 0
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe("$SYS/broker/subscriptions/count")
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.value = int(message.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Row:
    scenario: str
    interval: float
    latencies: list[float]
    notice: list[float]
    devices: int
    peak_requests: int
    peak_polls: int
    polls_per_device: float
    note: str = ""

    def pct(self, q: float, which: str = "latencies") -> float:
        ordered = sorted(getattr(self, which))
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Bench:
    def __init__(self, args: Any, work: Path) -> None:
        self.args = args
        self.work = work
        self.fleet_dir = work / "fleet"
        self.versions = 0

    # ---- server calls --------------------------------------------------------------------------------

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.admin}", **kwargs.pop("headers", {})}
        answer = self.http.request(method, path, headers=headers, **kwargs)
        if answer.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
        return answer.json()

    def publish(self) -> tuple[str, str]:
        self.versions += 1
        version = str(self.versions)
        release = self.call(
            "PUT",
            "/v1/releases",
            params={"model": "bench", "version": version, "profile": PROFILE},
            content=tiny_model(self.versions),
            headers={"Content-Type": "application/octet-stream"},
        )
        return release["release"]["id"], version

    def wait_no_active_rollout(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while any(r["state"] in {"running", "paused"} for r in self.call("GET", "/v1/rollouts")):
            if time.monotonic() > deadline:
                raise RuntimeError("a rollout is still active")
            time.sleep(0.5)

    # ---- fleet ---------------------------------------------------------------------------------------

    def options(
        self, *, interval: float, mqtt_url: str | None, spread: float = 0.0, first_poll: float | None = None
    ) -> FleetOptions:
        return FleetOptions(
            server=self.url,
            devices=self.args.devices,
            provisioning_token=self.provisioning,
            processes=self.args.processes,
            duration_s=interval * 1.15 + 120,
            poll_interval_s=interval,
            work_dir=self.fleet_dir,
            profile=PROFILE,
            seed=SEED,
            show_progress=False,
            mqtt_url=mqtt_url,
            mqtt_topic_prefix=PREFIX,
            nudge_spread_s=spread,
            first_poll_spread_s=first_poll,
        )

    def enrol(self) -> None:
        started = time.monotonic()
        options = self.options(interval=2.0, mqtt_url=None)
        summary = simulate_fleet(options, until=lambda s: s.settled() >= self.args.devices)
        if summary.settled() < self.args.devices:
            raise RuntimeError(f"only {summary.settled()} devices enrolled: {summary.causes.most_common(3)}")
        console.print(f"enrolled {self.args.devices} devices in {time.monotonic() - started:.0f} s")

    def scenario(
        self,
        name: str,
        *,
        interval: float,
        mqtt_url: str | None,
        spread: float = 0.0,
        deadline_s: float,
        phases: list[dict[str, Any]] | None = None,
        mid_run: Callable[[FleetSummary, float], bool] | None = None,
    ) -> Row:
        """Start the fleet, start a rollout once it listens, run until all devices started or the deadline."""
        self.wait_no_active_rollout()
        release_id, version = self.publish()
        devices = self.args.devices
        # The broker publishes its subscription count every second: wait until the last fleet's are gone.
        deadline = time.monotonic() + 15
        while self.subscriptions.value > devices and time.monotonic() < deadline:
            time.sleep(0.2)
        state: dict[str, Any] = {"t0": None}

        def ready(summary: FleetSummary) -> bool:
            if not mqtt_url:
                return len(summary.devices) > 0  # the workers run: polls spread over the interval from now
            # With nudges: every agent listens and has polled once (a running agent, not a cold start;
            # its next poll is an interval away), and that poll's answer is in.
            if self.subscriptions.value < 2 * devices + 1 or len(summary.devices) < devices:
                return False
            state.setdefault("all_polled", time.monotonic())
            return time.monotonic() - state["all_polled"] >= 3.0

        def on_tick(summary: FleetSummary) -> None:
            if state["t0"] is None and ready(summary):
                state["t0"] = time.time()
                body = {"release_id": release_id, "phases": phases or [{"percent": 100}]}
                state["rollout"] = self.call("POST", "/v1/rollouts", json=body)["id"]
            elif state["t0"] is not None and mid_run is not None and not state.get("mid"):
                state["mid"] = mid_run(summary, state["t0"])
                if state["mid"]:
                    state["mid_at"] = time.time()
                    self.call("POST", f"/v1/rollouts/{state['rollout']}/advance")

        def started_all(summary: FleetSummary) -> bool:
            t0 = state["t0"]
            if t0 is None:
                return False
            if time.time() - t0 > deadline_s:
                return True
            return sum(1 for s in summary.devices.values() if s.version == version) >= devices

        summary = simulate_fleet(
            self.options(
                interval=interval,
                mqtt_url=mqtt_url,
                spread=spread,
                first_poll=WARM_UP_S if mqtt_url else None,
            ),
            on_tick=on_tick,
            until=started_all,
        )
        t0 = state["t0"]
        if t0 is None:
            raise RuntimeError(f"{name}: the fleet never became ready")
        latencies = [
            min(at for at in s.install_starts if at >= t0) - t0
            for s in summary.devices.values()
            if any(at >= t0 for at in s.install_starts)
        ]
        ended = time.time()
        requests, polls = self.counter.peak(t0, ended)
        per_device = self.counter.polls(t0, ended) / devices
        note = ""
        if "mid_at" in state:
            after = [lat for lat in latencies if lat + t0 >= state["mid_at"]]
            note = (
                f"broker killed at +{state['mid_at'] - t0:.1f} s; {len(after)} devices started after it, the "
                f"last at +{max(after, default=0) + t0 - state['mid_at']:.1f} s after the kill"
            )
        installed = sum(1 for s in summary.devices.values() if s.version == version)
        console.print(
            f"{name}: {len(latencies)}/{devices} started, {installed} installed; peak {requests} req/s "
            f"({polls} polls/s); {note}"
        )
        notice = self.counter.first_polls(t0)
        return Row(name, interval, latencies, notice, devices, requests, polls, per_device, note)

    # ---- the run -------------------------------------------------------------------------------------

    def run(self) -> list[Row]:
        args = self.args
        broker = MosquittoProcess(self.work / "broker", extra_config="sys_interval 1\n")
        broker.start()
        self.subscriptions = SubscriptionCount(broker.url)
        port = free_port()
        settings = load_settings(
            home=self.work / "server",
            token_secret=secrets.token_urlsafe(48),
            port=port,
            public_base_url=f"http://127.0.0.1:{port}",
            poll_interval=int(args.poll_interval),
            poll_jitter=0,  # the agents jitter ±10 % themselves
            cache_refresh_interval=0.2,
            rollout_tick_interval=0.5,
            resign_check_interval=3600,
            rollout_min_soak_seconds=0,
            mqtt_url=broker.url,
            mqtt_topic_prefix=PREFIX,
        )
        ctx = build_context(settings)
        rows: list[Row] = []
        try:
            with serve_in_thread(ctx, label="nudge-bench", wrap=self._wrap) as served:
                self.url, self.admin, self.provisioning = served
                self.http = httpx.Client(base_url=self.url, timeout=60)
                self.enrol()
                interval = args.poll_interval
                nudge_deadline = 60.0
                rows.append(
                    self.scenario(
                        f"nudge, spread {args.spread:g} s",
                        interval=interval,
                        mqtt_url=broker.url,
                        spread=args.spread,
                        deadline_s=nudge_deadline,
                    )
                )
                rows.append(
                    self.scenario(
                        "nudge, no spread", interval=interval, mqtt_url=broker.url, deadline_s=nudge_deadline
                    )
                )
                if not args.skip_baseline:
                    rows.append(
                        self.scenario(
                            "polling only", interval=interval, mqtt_url=None, deadline_s=interval * 1.15
                        )
                    )
                rows.append(self._outage(broker))
                self.http.close()
        finally:
            self.subscriptions.close()
            broker.stop()
            ctx.close()
        return rows

    def _wrap(self, app: Any) -> Any:
        self.counter = RequestCounter(app)
        return self.counter

    def _outage(self, broker: MosquittoProcess) -> Row:
        """Phases 50 → 100 %: nudged first half, then the broker is killed and the rollout advanced."""
        interval = self.args.outage_interval
        ids = [f"sim-{SEED}-{i:05d}" for i in range(self.args.devices)]
        version_box: dict[str, Any] = {}

        def first_half_done(summary: FleetSummary, t0: float) -> bool:
            if "cohort" not in version_box:
                rollout = self.call("GET", "/v1/rollouts")[0]
                version_box["cohort"] = {d for d in ids if in_cohort(d, rollout["id"], 50)}
                version_box["v"] = str(self.versions)
            wanted = version_box["v"]
            done = all(
                d in summary.devices and summary.devices[d].version == wanted for d in version_box["cohort"]
            )
            if done:
                broker.stop()
            return done

        return self.scenario(
            f"broker stopped mid-run ({interval:g} s polls)",
            interval=interval,
            mqtt_url=broker.url,
            spread=self.args.spread,
            deadline_s=interval * 1.15 + 60,
            phases=[{"percent": 50, "min_soak_seconds": 3600}, {"percent": 100}],
            mid_run=first_half_done,
        )


def print_table(rows: list[Row], args: Any) -> None:
    base = next((r for r in rows if r.scenario == "polling only"), None)
    table = Table(
        title=f"nudge benchmark: {args.devices} agents, {args.processes} processes, one rollout each "
        "(time from rollout start to install start)"
    )
    for column in (
        "scenario",
        "poll s",
        "polled p50 / p95 s",
        "started",
        "p50 s",
        "p95 s",
        "max s",
        "p95 × polling",
        "peak req/s",
        "peak polls/s",
        "polls/device",
    ):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for row in rows:
        ratio = f"{row.pct(0.95) / base.pct(0.95):.3f}" if base and base.latencies and row.latencies else "-"
        table.add_row(
            row.scenario,
            f"{row.interval:g}",
            f"{row.pct(0.5, 'notice'):.2f} / {row.pct(0.95, 'notice'):.2f}",
            f"{len(row.latencies)}/{row.devices}",
            f"{row.pct(0.5):.2f}",
            f"{row.pct(0.95):.2f}",
            f"{max(row.latencies, default=float('nan')):.2f}",
            ratio,
            str(row.peak_requests),
            str(row.peak_polls),
            f"{row.polls_per_device:.2f}",
        )
    console.print(table)
    console.print(
        "polled: rollout start → the device's first assignment poll (what a nudge speeds up); started, p50, "
        "p95, max: rollout start → the install starting (after the signed assignment and TUF metadata are "
        "verified); every agent, the server and the broker share this machine's cores."
    )
    for row in rows:
        if row.note:
            console.print(f"{row.scenario}: {row.note}")
    steady = args.devices / args.poll_interval
    console.print(
        f"steady polling rate of this fleet: {steady:.2f} polls/s ({args.devices} / {args.poll_interval:g} s)"
    )
    nudged = rows[0]
    goal = nudged.pct(0.95) <= 3.0 and len(nudged.latencies) == nudged.devices
    console.print(f"goal p95 ≤ 3 s with nudges: {'met' if goal else 'NOT met'} ({nudged.pct(0.95):.2f} s)")
    if base is not None and base.latencies and nudged.latencies:
        console.print(f"median speed-up over polling only: {base.pct(0.5) / max(nudged.pct(0.5), 1e-9):.0f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--poll-interval", type=float, default=300.0)
    parser.add_argument("--spread", type=float, default=2.0, help="agents' nudge spread, seconds")
    parser.add_argument(
        "--outage-interval", type=float, default=20.0, help="poll interval of the outage part"
    )
    parser.add_argument(
        "--skip-baseline", action="store_true", help="skip the polling-only run (quick check)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nudge-bench-") as tmp:
        started = time.monotonic()
        rows = Bench(args, Path(tmp)).run()
        print_table(rows, args)
        console.print(f"wall time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()

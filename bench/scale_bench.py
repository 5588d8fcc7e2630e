"""Fleet-scale benchmark (PostgreSQL): bulk-signed assignments, polls during the job, 304 polls, queries.

In its own PostgreSQL database (created and dropped here), the bench

1. enrols ``--devices`` devices with ``COPY`` (1,000,000 by default) and publishes two releases;
2. measures the old poll-time path (``director.build_answer``, one ORM decision and signature per device) on
   a sample: the baseline, in the same run;
3. starts ``edgefleet server run --workers 1``, starts a rollout (phases 50 % → 100 %): the server's bulk
   job signs every device's assignment; meanwhile sample devices poll without an ETag (first polls after the
   change: latency, errors, and the answer is checked with the agent's ``verify_assignment``); reports the
   time until every assignment is ready, assignments/s, and per CPU-second of the server processes;
4. steady-state 304 polls with ``wrk`` (needs ``wrk`` on PATH) on the warmed sample;
5. restarts with ``--workers 2``, advances the rollout to its 100 % phase (every device re-signed), the
   same measurements;
6. fills ``rollout_devices`` with a report per device (``COPY``) and times the rollout status (the tick's
   counters and cohort size, and ``GET /v1/rollouts/{id}``) and a console devices page (``GET /v1/devices``);
7. database size per device.

Run: ``.venv/bin/python bench/scale_bench.py --devices 100000`` (quick) or without ``--devices`` (1M).
The numbers are upper bounds on a loaded 2-core machine that also runs PostgreSQL and the load tool.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from poll_bench import LUA, run_wrk, wait_ready, warm

from ota.server.testing import free_port

TOKEN_SECRET = "scale-bench-secret-" + "x" * 32
PROFILE = "cpu-generic"


def percentile(values: list[float], share: float) -> float:
    """Return the ``share`` percentile (0-100) of ``values`` (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share / 100 * (len(ordered) - 1)))]


def copy_devices(url: str, count: int) -> float:
    """Insert ``count`` accepted devices with COPY; return the seconds it took."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    columns = "id, public_key, keyid, hardware_profile, hardware, tags, state, last_report_counter, "
    columns += "created_at, updated_at"
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY devices ({columns}) FROM STDIN") as copy:
            for i in range(count):
                copy.write_row((f"dev-{i:07d}", "{}", "0" * 64, PROFILE, "{}", "[]", "accepted", 0, now, now))
        cursor.execute(
            "INSERT INTO counters (name, value) VALUES ('fleet', 1) "
            "ON CONFLICT (name) DO UPDATE SET value = counters.value + 1"
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE devices")
    return time.perf_counter() - started


def copy_reports(url: str, rollout_id: str, count: int) -> float:
    """Give every device a final report in the rollout (95 % committed, 5 % failed); return seconds."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        columns = "rollout_id, device_id, status, phase_index, started_at, updated_at"
        with cursor.copy(f"COPY rollout_devices ({columns}) FROM STDIN") as copy:
            for i in range(count):
                status = "failed" if i % 20 == 0 else "committed"
                copy.write_row((rollout_id, f"dev-{i:07d}", status, 0, now, now))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE rollout_devices")
    return time.perf_counter() - started


def server_cpu(process: subprocess.Popen[bytes]) -> float:
    """CPU seconds (user + system) of the server and its worker processes so far."""
    try:
        root = psutil.Process(process.pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process (the database works for the job too)."""
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] and proc.info["name"].startswith("postgres"):
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    return total


class Poller:
    """Polls sample devices (no ETag) in a few threads until stopped; records latency, status, checks."""

    def __init__(self, url: str, tokens: list[tuple[str, str]], director_key: Any, threads: int = 4) -> None:
        self.url, self.tokens, self.key = url, tokens, director_key
        self.latencies: list[float] = []
        self.first: dict[str, float] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i, threads)) for i in range(threads)]

    def _run(self, index: int, stride: int) -> None:
        from ota.core.manifest import verify_assignment

        mine = self.tokens[index::stride]
        with httpx.Client(base_url=self.url, timeout=30) as client:
            position = 0
            while not self.stop.is_set():
                device_id, token = mine[position % len(mine)]
                position += 1
                started = time.perf_counter()
                try:
                    answer = client.get(
                        f"/v1/devices/{device_id}/assignment", headers={"Authorization": f"Bearer {token}"}
                    )
                    elapsed = time.perf_counter() - started
                    if answer.status_code != 200:
                        self.errors.append(f"{device_id}: HTTP {answer.status_code}")
                        continue
                    if position % 10 == 0:
                        verify_assignment(
                            answer.content, self.key, device_id=device_id, now=datetime.now(UTC)
                        )
                except Exception as exc:  # a bench records every failure
                    self.errors.append(f"{device_id}: {exc}")
                    continue
                self.latencies.append(elapsed)
                self.first.setdefault(device_id, elapsed)
                time.sleep(0.005)

    def __enter__(self) -> Poller:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def wait_job_done(ctx: Any, after_id: int, timeout: float) -> float:
    """Wait until every job after ``after_id`` is done; return when (perf_counter)."""
    from sqlalchemy import func, select

    from ota.server.models import AssignmentJob

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        with ctx.sessions() as session:
            left = session.scalar(
                select(func.count()).where(AssignmentJob.id > after_id, AssignmentJob.done_at.is_(None))
            )
        if not left:
            return time.perf_counter()
        time.sleep(0.2)
    raise RuntimeError("bulk job did not finish in time")


def last_job_id(ctx: Any) -> int:
    from sqlalchemy import func, select

    from ota.server.models import AssignmentJob

    with ctx.sessions() as session:
        return int(session.scalar(select(func.max(AssignmentJob.id))) or 0)


def start_server(port: int, workers: int) -> subprocess.Popen[bytes]:
    """Start ``edgefleet server run --workers N`` (the real multi-process server) and wait for it."""
    entry = "import sys; from ota.cli import main; sys.argv[0] = 'edgefleet'; main()"
    command = [sys.executable, "-c", entry, "server", "run", "--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen([*command, "--no-migrate"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_ready(f"http://127.0.0.1:{port}", "/healthz")
    return process


def stop_server(process: subprocess.Popen[bytes]) -> str:
    process.terminate()
    try:
        _out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _out, err = process.communicate()
    lines = [
        x for x in (err or b"").decode(errors="replace").splitlines() if "Traceback" in x or "ERROR" in x
    ]
    return "\n".join(lines[:5])


def measure_old_path(ctx: Any, sample: list[str]) -> tuple[float, dict[str, float]]:
    """Time the poll-time path (an ORM decision and a signature per device): seconds each, and its steps.

    The rate is measured without the profiler; the steps (cumulative per device) come from a second,
    profiled pass, inflated by the profiler alike.
    """
    import cProfile
    import pstats

    from ota.server.director import build_answer

    signer = ctx.keyring.signer("director")

    def sign_all() -> None:
        for device_id in sample:
            with ctx.sessions() as session:
                build_answer(
                    session, device_id=device_id, current_sha256=None, signer=signer, config=ctx.director
                )

    started = time.perf_counter()
    sign_all()
    per_device = (time.perf_counter() - started) / len(sample)
    profile = cProfile.Profile()
    profile.runcall(sign_all)
    stats = pstats.Stats(profile)
    steps: dict[str, float] = {}
    wanted = {
        "decide_release": "decide (ORM: rollouts, release)",
        "read_counter": "read generation",
        "sign_assignment": "sign (Ed25519 via securesystemslib)",
        "canonical_json": "canonical JSON",
    }
    for (_file, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        if name in wanted:
            steps[wanted[name]] = steps.get(wanted[name], 0.0) + row[3] / len(sample)
    return per_device, steps


def main() -> None:
    """Set up, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=2000, help="Devices polled during jobs and by wrk.")
    parser.add_argument("--old-sample", type=int, default=300, help="Devices signed by the old poll path.")
    parser.add_argument("--duration", type=int, default=10, help="wrk seconds per 304 run.")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--job-timeout", type=float, default=1800)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is required: apt-get install wrk")

    database = f"edgefleet_scale_{secrets.token_hex(4)}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    base, _slash, _db = args.admin_url.rpartition("/")
    url = f"{base}/{database}"
    results: list[tuple[str, str]] = []
    notes: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
            home = Path(tmp)
            os.environ.update(
                {
                    "EDGEFLEET_HOME": str(home),
                    "EDGEFLEET_DATABASE_URL": url,
                    "EDGEFLEET_TOKEN_SECRET": TOKEN_SECRET,
                    "EDGEFLEET_DEVICE_TOKEN_TTL": "7200",
                    "EDGEFLEET_POLL_JITTER": "0",
                    "EDGEFLEET_ROLLOUT_TICK_INTERVAL": "3600",
                    "EDGEFLEET_ASSIGNMENT_JOB_INTERVAL": "0.5",
                    "EDGEFLEET_CACHE_REFRESH_INTERVAL": "0.5",
                    "EDGEFLEET_METRICS_PUBLIC": "true",
                }
            )
            run(args, home, url, results, notes)
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    print()
    print(f"scale bench: {args.devices:,} devices, PostgreSQL, sample {args.sample}; loaded 2-core machine")
    width = max(len(k) for k, _ in results)
    for key, value in results:
        print(f"{key:<{width}}  {value}")
    for note in notes:
        print("note:", note)


def run(
    args: argparse.Namespace, home: Path, url: str, results: list[tuple[str, str]], notes: list[str]
) -> None:
    from sqlalchemy import func, select

    from ota.server.auth import create_operator_token
    from ota.server.context import build_context
    from ota.server.db import transaction
    from ota.server.models import Rollout, SignedAssignment
    from ota.server.releases import publish_release
    from ota.server.rollout_machine import Phase, RolloutEvent
    from ota.server.rollouts import control_rollout, counted_cohort_size, counters, create_rollout
    from ota.server.settings import load_settings

    ctx = build_context(load_settings())
    releases = []
    for version in ("1", "2"):
        artifact = home / f"model-{version}.onnx"
        artifact.write_bytes(os.urandom(64 * 1024))
        releases.append(
            publish_release(
                artifact_format="raw",
                factory=ctx.sessions,
                blobs=ctx.blobs,
                repository=ctx.repository,
                artifact=artifact,
                model="bench",
                version=version,
                profile=PROFILE,
            ).release
        )
    from ota.server.assignments import run_jobs

    run_jobs(ctx)  # the publish jobs (global) of an empty fleet: done before the fleet exists
    seconds = copy_devices(url, args.devices)
    results.append(("set-up: COPY devices + VACUUM ANALYZE", f"{seconds:.1f} s"))
    ids = [f"dev-{i:07d}" for i in range(args.devices)]
    step = max(args.devices // args.sample, 1)
    sample = ids[::step][: args.sample]
    tokens = [(d, ctx.tokens.issue(d)[0]) for d in sample]
    with transaction(ctx.sessions) as session:
        _row, admin = create_operator_token(
            session, name="bench", scopes=["admin", "read", "rollout", "release"]
        )
    key = ctx.keyring.public_keys("director")[0]
    rollout_id = ""

    def change(event: RolloutEvent | None) -> None:
        nonlocal rollout_id
        with transaction(ctx.sessions) as session:
            if event is None:
                rollout_id = create_rollout(
                    session,
                    release_id=releases[1].id,
                    phases=[Phase(50, 0, 1, 0), Phase(100, 0, 1, 0)],
                    actor="bench",
                ).id
            else:
                control_rollout(session, rollout_id, event, actor="bench")

    for workers, event in ((1, None), (2, RolloutEvent.ADVANCE)):
        port = free_port()
        server_url = f"http://127.0.0.1:{port}"
        process = start_server(port, workers)
        try:
            time.sleep(2)  # let workers finish start-up (and clear the paused rollout's job)
            wait_job_done(ctx, 0, args.job_timeout)
            after = last_job_id(ctx)
            cpu_before, pg_before = server_cpu(process), postgres_cpu()
            with Poller(server_url, tokens, key) as poller:
                started = time.perf_counter()
                change(event)
                done = wait_job_done(ctx, after, args.job_timeout)
            elapsed = done - started
            cpu = server_cpu(process) - cpu_before
            pg = postgres_cpu() - pg_before
            label = f"{workers} worker{'s' if workers > 1 else ''}"
            phase = "rollout start, 50 % phase" if event is None else "advance to the 100 % phase"
            results.append((f"[{label}] all {args.devices:,} assignments ready, {phase}", f"{elapsed:.1f} s"))
            results.append((f"[{label}] bulk signing", f"{args.devices / elapsed:,.0f} assignments/s wall"))
            results.append(
                (
                    f"[{label}] per server CPU-second",
                    f"{args.devices / max(cpu, 1e-9):,.0f} assignments/s "
                    f"(server CPU {cpu:.0f} s, PostgreSQL CPU {pg:.0f} s)",
                )
            )
            results.append(
                (
                    f"[{label}] per CPU-second incl. PostgreSQL",
                    f"{args.devices / max(cpu + pg, 1e-9):,.0f} assignments/s",
                )
            )
            first = list(poller.first.values())
            results.append(
                (
                    f"[{label}] polls during the job",
                    f"{len(poller.latencies)} polls, first-poll P50 {percentile(first, 50) * 1000:.1f} ms "
                    f"P99 {percentile(first, 99) * 1000:.1f} ms; all polls P99 "
                    f"{percentile(poller.latencies, 99) * 1000:.1f} ms; errors {len(poller.errors)}",
                )
            )
            notes.extend(poller.errors[:3])
            if workers == 1:
                # The baseline in the same run, while the server idles: the poll-time path per device.
                sample_old = ids[:: max(args.devices // args.old_sample, 1)][: args.old_sample]
                old_per, old_steps = measure_old_path(ctx, sample_old)
                results.append(
                    (
                        "old poll-time signing (baseline, 1 process)",
                        f"{1 / old_per:,.0f} assignments/s ({old_per * 1000:.2f} ms each)",
                    )
                )
                for name, cost in old_steps.items():
                    results.append((f"  old path step (profiled): {name}", f"{cost * 1000:.3f} ms"))
            # Steady state: every sampled device polls with its current ETag.
            entries = warm(server_url, tokens)
            lua = home / "poll.lua"
            lua.write_text(LUA)
            devices_file = home / "devices.lua"
            rows = ",\n".join(f'{{"{d}", "{t}", {json.dumps(e)}}}' for d, t, e in entries)
            devices_file.write_text("return {\n" + rows + "\n}\n")
            wrk_args = argparse.Namespace(threads=2, connections=64, duration=args.duration)
            r = run_wrk(server_url, "304", lua, devices_file, wrk_args)
            results.append(
                (
                    f"[{label}] steady-state 304 polls",
                    f"{r['rps']:,.0f} req/s, P50 {r['p50_ms']:.2f} ms, P99 {r['p99_ms']:.2f} ms, "
                    f"errors {r['errors']:.0f}",
                )
            )
            metrics = httpx.get(server_url + "/metrics").text
            signed = [x for x in metrics.splitlines() if x.startswith("edgefleet_assignments_")]
            notes.append(f"{label} metrics (one worker's view): " + "; ".join(signed))
        finally:
            problem = stop_server(process)
            if problem:
                notes.append(f"server stderr: {problem}")

    with ctx.sessions() as session:
        stored = session.scalar(select(func.count()).select_from(SignedAssignment))
    results.append(("signed assignments stored", f"{stored:,}"))

    # --- queries at full size ------------------------------------------------------------------------------
    seconds = copy_reports(url, rollout_id, args.devices)
    results.append(("set-up: COPY one report per device", f"{seconds:.1f} s"))
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        with transaction(ctx.sessions) as session:
            counted = counters(session, rollout_id)
            size = counted_cohort_size(session, session.get_one(Rollout, rollout_id))
        timings.append(time.perf_counter() - started)
    results.append(
        (
            "rollout status (counters + cohort size), in process",
            f"median {statistics.median(timings) * 1000:.1f} ms, first {timings[0] * 1000:.1f} ms "
            f"({counted.succeeded:,} ok, {counted.failed:,} failed, cohort {size})",
        )
    )
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    process = start_server(port, 1)
    try:
        headers = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=server_url, timeout=60, headers=headers) as client:
            for name, path in (
                ("GET /v1/rollouts/{id}", f"/v1/rollouts/{rollout_id}"),
                ("console devices page: GET /v1/devices?limit=50", "/v1/devices?limit=50"),
                (
                    "devices page deep (after=middle id)",
                    f"/v1/devices?limit=50&after=dev-{args.devices // 2:07d}",
                ),
                (
                    "devices page filtered state=accepted&profile",
                    f"/v1/devices?limit=50&state=accepted&profile={PROFILE}",
                ),
            ):
                timings = []
                for _ in range(5):
                    started = time.perf_counter()
                    client.get(path).raise_for_status()
                    timings.append(time.perf_counter() - started)
                results.append((name, f"median {statistics.median(timings) * 1000:.1f} ms"))
    finally:
        stop_server(process)

    with psycopg.connect(url) as conn:
        total = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
        table = conn.execute("SELECT pg_total_relation_size('signed_assignments')").fetchone()[0]  # type: ignore[index]
        devices = conn.execute("SELECT pg_total_relation_size('devices')").fetchone()[0]  # type: ignore[index]
    results.append(
        (
            "database size per device",
            f"{total / args.devices:,.0f} B total; devices {devices / args.devices:,.0f} B, "
            f"signed_assignments {table / args.devices:,.0f} B",
        )
    )
    ctx.close()


if __name__ == "__main__":
    main()

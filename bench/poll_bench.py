"""Assignment poll benchmark: throughput and P99 of 304 and 200 polls against a bare ASGI baseline.

Sets up an OTA server state with 100,000 enrolled devices (SQLite by default, ``--database-url`` for
PostgreSQL), one release and a 100 % rollout, starts the server with one uvicorn worker, warms the
assignment cache for the polled working set, then drives it with ``wrk`` (64 connections):

* ``304``: every request carries the device's current ETag (the fleet's steady state);
* ``200``: no ETag, the cached signed assignment is sent each time;
* ``bare``: a hello-world ASGI app under the same uvicorn settings and the same load tool.

Prints a table with requests/s, P50/P99 latency and the ratio to the bare endpoint. Needs ``wrk`` on PATH
(``apt-get install wrk``). Run: ``.venv/bin/python bench/poll_bench.py [--duration 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

TOKEN_SECRET = "poll-bench-secret"
LUA = r"""
local devices = dofile(os.getenv("POLL_BENCH_DEVICES"))
local with_etag = os.getenv("POLL_BENCH_MODE") == "304"
local bare = os.getenv("POLL_BENCH_MODE") == "bare"
local counter = 0
function setup(thread)
  thread:set("offset", math.random(1, #devices))
end
function request()
  counter = counter + 1
  if bare then
    return wrk.format("GET", "/hello")
  end
  local d = devices[((counter + offset) % #devices) + 1]
  local headers = { ["Authorization"] = "Bearer " .. d[2] }
  if with_etag then headers["If-None-Match"] = d[3] end
  return wrk.format("GET", "/v1/devices/" .. d[1] .. "/assignment", headers)
end
function done(summary, latency, requests)
  io.write(string.format(
    "RESULT {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"errors\": %d, \"status_errors\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""


async def hello_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The bare ASGI baseline: one fixed answer, nothing else."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def uvicorn_options(port: int) -> dict[str, Any]:
    """The server settings shared by the OTA server and the baseline (one worker, uvloop, httptools)."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "workers": 1,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": "warning",
        "access_log": False,
    }


def serve(kind: str, port: int) -> None:
    """Run one server in this process (the bench starts itself as a subprocess with ``--serve``)."""
    import uvicorn

    if kind == "hello":
        uvicorn.run(hello_app, **uvicorn_options(port))
    else:
        from ota.server.app import create_app_from_env

        uvicorn.run(create_app_from_env(), **uvicorn_options(port))


def prepare(home: Path, devices: int, working_set: int) -> list[tuple[str, str]]:
    """Create the server state: release, rollout, ``devices`` enrolled devices; return tokens to poll."""
    from sqlalchemy import insert

    from ota.server.context import build_context
    from ota.server.db import transaction
    from ota.server.models import Device
    from ota.server.releases import publish_release
    from ota.server.rollout_machine import Phase
    from ota.server.rollouts import create_rollout
    from ota.server.settings import load_settings

    ctx = build_context(load_settings())
    artifact = home / "model.onnx"
    artifact.write_bytes(os.urandom(256 * 1024))
    release = publish_release(
        artifact_format="raw",
        factory=ctx.sessions,
        blobs=ctx.blobs,
        repository=ctx.repository,
        artifact=artifact,
        model="bench",
        version="1",
        profile="cpu-generic",
    ).release
    rows = [
        {
            "id": f"dev-{i:06d}",
            "public_key": {},
            "keyid": "0" * 64,
            "hardware_profile": "cpu-generic",
            "hardware": {},
            "tags": [],
            "state": "accepted",
            "last_report_counter": 0,
        }
        for i in range(devices)
    ]
    with transaction(ctx.sessions) as session:
        for start in range(0, len(rows), 10_000):
            session.execute(insert(Device), rows[start : start + 10_000])
        create_rollout(session, release_id=release.id, phases=[Phase(100)], actor="bench")
    step = max(devices // working_set, 1)
    polled = [str(row["id"]) for row in rows[::step][:working_set]]
    tokens = [(device_id, ctx.tokens.issue(device_id)[0]) for device_id in polled]
    ctx.close()
    return tokens


def warm(url: str, tokens: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Poll every device once (fills the server's cache) and collect the ETags."""
    result = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for device_id, token in tokens:
            answer = client.get(
                f"/v1/devices/{device_id}/assignment", headers={"Authorization": f"Bearer {token}"}
            )
            answer.raise_for_status()
            result.append((device_id, token, answer.headers["etag"]))
    return result


def wait_ready(url: str, path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


def run_wrk(url: str, mode: str, lua: Path, devices_file: Path, args: argparse.Namespace) -> dict[str, float]:
    env = os.environ | {"POLL_BENCH_MODE": mode, "POLL_BENCH_DEVICES": str(devices_file)}
    command = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        "-s",
        str(lua),
        url,
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in output.splitlines() if x.startswith("RESULT "))
    raw = json.loads(line[len("RESULT ") :])
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": raw["errors"] + raw["status_errors"],
    }


def main() -> None:
    """Set up, measure the three scenarios and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--working-set", type=int, default=10_000, help="Devices polled (cache warmed).")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is required: apt-get install wrk")

    with tempfile.TemporaryDirectory(prefix="poll-bench-") as tmp:
        home = Path(tmp)
        os.environ.update(
            {
                "EDGEFLEET_HOME": str(home),
                "EDGEFLEET_TOKEN_SECRET": TOKEN_SECRET,
                "EDGEFLEET_DEVICE_TOKEN_TTL": "7200",
                "EDGEFLEET_POLL_JITTER": "0",
                "EDGEFLEET_ROLLOUT_TICK_INTERVAL": "3600",
                # The bench scrapes /metrics without an operator token.
                "EDGEFLEET_METRICS_PUBLIC": "true",
            }
        )
        if args.database_url:
            os.environ["EDGEFLEET_DATABASE_URL"] = args.database_url
        started = time.perf_counter()
        tokens = prepare(home, args.devices, args.working_set)
        print(
            f"enrolled {args.devices} devices in {time.perf_counter() - started:.1f}s; polling {len(tokens)}"
        )

        from ota.server.testing import free_port

        results: dict[str, dict[str, float]] = {}
        lua = home / "poll.lua"
        lua.write_text(LUA)
        devices_file = home / "devices.lua"
        for kind in ("server", "hello"):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            process = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port)])
            try:
                wait_ready(url, "/healthz" if kind == "server" else "/hello")
                if kind == "server":
                    started = time.perf_counter()
                    entries = warm(url, tokens)
                    print(f"warmed {len(entries)} cache entries in {time.perf_counter() - started:.1f}s")
                    rows = ",\n".join(f'{{"{d}", "{t}", {json.dumps(e)}}}' for d, t, e in entries)
                    devices_file.write_text("return {\n" + rows + "\n}\n")
                    results["304"] = run_wrk(url, "304", lua, devices_file, args)
                    results["200"] = run_wrk(url, "200", lua, devices_file, args)
                    metrics = httpx.get(url + "/metrics").text
                    cached = [x for x in metrics.splitlines() if x.startswith("edgefleet_polls")]
                    print("server metrics:", "; ".join(cached))
                else:
                    results["bare"] = run_wrk(url, "bare", lua, devices_file, args)
            finally:
                process.terminate()
                process.wait(timeout=30)

    bare = results["bare"]["rps"]
    print()
    print(f"assignment poll, 1 uvicorn worker, wrk -t{args.threads} -c{args.connections} -d{args.duration}s")
    print(f"{'scenario':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs bare':>9}")
    labels = {
        "304": "304 (If-None-Match)",
        "200": "200 (cached signed body)",
        "bare": "bare ASGI hello-world",
    }
    for key in ("304", "200", "bare"):
        r = results[key]
        print(
            f"{labels[key]:<28}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['errors']:>8.0f}{r['rps'] / bare:>9.2f}"
        )
    goal = results["304"]["rps"] / bare >= 0.5 and results["304"]["p99_ms"] <= 25
    print(f"goal (304 ≥ 50 % of bare, P99 ≤ 25 ms): {'met' if goal else 'NOT met'}")


if __name__ == "__main__":
    main()

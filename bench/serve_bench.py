"""``edgefleet serve`` against its ceiling and its peer, on a ResNet-18-class model and a small one.

One run measures, for each model (ResNet-18 at 3×64×64, built with torchvision and random weights, never
downloaded; the digits student at 1×8×8, ``ml.nets.STUDENT_SPEC``):

* **service**: ``edgefleet serve`` (a child process, 1 ORT intra-op thread, one instance), batching off and
  on (``max_batch_size`` 16, ``max_queue_delay_us`` 2000), under a closed loop at concurrency 1, 4, 16
  and 64: QPS, client P50/P99, and the formed batch (inferences ÷ executions from ``/metrics``);
* **peer**: the hand-written server a user would write (``bench/serve_peer.py``: FastAPI, ``session.run``
  per request on the thread pool, same threads per session), same load, same JSON body;
* **ceiling**: ONNX Runtime called directly (same thread count) at batch 1 and at the formed batch size;
* **JSON vs binary** tensors for the 3×64×64 input at concurrency 16, batching on;
* **cold start**: process start → ready, and the first request's latency after ready vs the median;
* where the time goes: mean queue and compute time per request from the service's metrics; the rest of
  the client's latency is HTTP, parsing and scheduling.

The load generator is :class:`ota.serve.testing.LoadClient` (pre-encoded requests on asyncio streams), so
the client costs little CPU; it still shares the machine with the server. Run:
``.venv/bin/python bench/serve_bench.py [--seconds 3]`` (about three minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ota.serve.testing import LoadClient, free_port, run_service  # noqa: E402

CONCURRENCY = (1, 4, 16, 64)
MAX_BATCH = 16
DELAY_US = 2000
THREADS = 1
PATH = "/v2/models/model/infer"


@dataclass(frozen=True)
class Bench:
    name: str
    path: Path
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Point:
    qps: float
    p50_ms: float
    p99_ms: float
    errors: int
    mean_ms: float = 0.0
    batch: float | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    server_ms: float | None = None


def export_models(folder: Path) -> list[Bench]:
    """Export ResNet-18 (random weights, 10 classes) at 64×64 and the digits student to ONNX."""
    import torch
    import torchvision

    from ml.nets import STUDENT_SPEC, build_net

    torch.manual_seed(0)
    models = [
        ("resnet18-64", torchvision.models.resnet18(weights=None, num_classes=10), (3, 64, 64)),
        ("digits-student", build_net(STUDENT_SPEC, in_channels=1, num_classes=10), (1, 8, 8)),
    ]
    benches = []
    for name, net, shape in models:
        path = folder / f"{name}.onnx"
        torch.onnx.export(
            net.eval(),
            (torch.zeros(1, *shape),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        benches.append(Bench(name, path, shape))
    return benches


def ceiling(bench: Bench, batch: int, seconds: float) -> float:
    """Samples per second of ONNX Runtime called directly at ``batch``, with the service's thread count."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(bench.path), sess_options=options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(batch, *bench.shape)).astype(np.float32)
    for _ in range(3):
        session.run(None, {"x": x})
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {"x": x})
        runs += 1
    return runs * batch / (time.perf_counter() - started)


def request(bench: Bench, *, binary: bool = False, path: str = PATH) -> bytes:
    x = np.random.default_rng(1).normal(size=(1, *bench.shape)).astype(np.float32)
    tensor: dict[str, object] = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
    if not binary:
        tensor["data"] = x.ravel().tolist()
        return LoadClient.encode(
            PATH, json.dumps({"inputs": [tensor]}).encode(), {"content-type": "application/json"}
        )
    tensor["parameters"] = {"binary_data_size": x.nbytes}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return LoadClient.encode(
        path,
        header + x.tobytes(),
        {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"},
    )


async def closed_loop(port: int, payload: bytes, concurrency: int, seconds: float) -> tuple[list[float], int]:
    """``concurrency`` clients, each sending when its last request is answered (after 0.3 s of warm-up)."""
    client = LoadClient("127.0.0.1", port)
    latencies: list[float] = []
    errors = 0
    begin = time.perf_counter()
    measure_from, end = begin + 0.3, begin + 0.3 + seconds

    async def one() -> None:
        nonlocal errors
        while (now := time.perf_counter()) < end:
            answer = await client.send(payload)
            if now >= measure_from:
                if answer.status == 200:
                    latencies.append(time.perf_counter() - now)
                else:
                    errors += 1

    try:
        await asyncio.gather(*(one() for _ in range(concurrency)))
    finally:
        await client.close()
    return latencies, errors


def scrape(url: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("edgefleet_serve_") and "{" in line and "_bucket" not in line:
            name, value = line.split("{")[0], float(line.rsplit(" ", 1)[1])
            values[name] = values.get(name, 0.0) + value
    return values


def measure(port: int, url: str | None, payload: bytes, concurrency: int, seconds: float) -> Point:
    before = scrape(url) if url else {}
    latencies, errors = asyncio.run(closed_loop(port, payload, concurrency, seconds))
    qps = len(latencies) / seconds
    p50, p99 = (float(np.percentile(latencies, q)) * 1e3 for q in (50, 99))
    mean = statistics.fmean(latencies) * 1e3
    if not url:
        return Point(qps, p50, p99, errors, mean)
    after = scrape(url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    executions = delta("edgefleet_serve_execution_count_total") or 1.0
    requests = delta("edgefleet_serve_queue_duration_seconds_count") or 1.0
    return Point(
        qps,
        p50,
        p99,
        errors,
        mean,
        batch=delta("edgefleet_serve_inference_count_total") / executions,
        queue_ms=delta("edgefleet_serve_queue_duration_seconds_sum") / requests * 1e3,
        compute_ms=delta("edgefleet_serve_compute_duration_seconds_sum") / executions * 1e3,
        server_ms=delta("edgefleet_serve_request_duration_seconds_sum")
        / max(delta("edgefleet_serve_request_duration_seconds_count"), 1.0)
        * 1e3,
    )


@contextlib.contextmanager
def peer(bench: Bench) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "PEER_MODEL": str(bench.path), "PEER_THREADS": str(THREADS), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.serve_peer:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the peer did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def service_args(bench: Bench, batching: bool) -> list[str]:
    return [
        "--model",
        str(bench.path),
        "--max-batch-size",
        str(MAX_BATCH),
        "--max-queue-delay-us",
        str(DELAY_US),
        "--intra-op-threads",
        str(THREADS),
        "--max-queue-size",
        "256",
    ] + ([] if batching else ["--no-batching"])


def cold_start(bench: Bench, log: Path) -> tuple[float, float, float]:
    """Process start → ready (s), the first request's latency after ready (ms), and the median of 30 more."""
    payload = request(bench)
    with run_service(service_args(bench, True), log=log) as service:

        async def series() -> list[float]:
            client = LoadClient("127.0.0.1", service.port)
            await client.connect()  # the first request is timed without the TCP handshake, as the others
            times = []
            try:
                for _ in range(31):
                    started = time.perf_counter()
                    answer = await client.send(payload)
                    assert answer.status == 200, answer.body
                    times.append((time.perf_counter() - started) * 1e3)
            finally:
                await client.close()
            return times

        times = asyncio.run(series())
        return service.ready_s, times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="Measured seconds per load point.")
    args = parser.parse_args()
    console = Console(width=160)
    folder = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    benches = export_models(folder)
    console.print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    summary: list[str] = []
    for bench in benches:
        seconds = args.seconds if bench.name.startswith("resnet") else max(1.5, args.seconds * 0.6)
        payload = request(bench)
        ready_s, first_ms, median_ms = cold_start(bench, folder / f"{bench.name}-cold.log")
        results: dict[tuple[str, int], Point] = {}
        for batching in (False, True):
            label = "serve, batching " + ("on" if batching else "off")
            with run_service(
                service_args(bench, batching), log=folder / f"{bench.name}-{batching}.log"
            ) as service:
                for c in CONCURRENCY:
                    results[(label, c)] = measure(service.port, service.url, payload, c, seconds)
                    if batching and c == 16:
                        # The ceiling right after the run it is compared with (the machine's load drifts).
                        formed = max(1, round(results[(label, c)].batch or 1))
                        ceil1, ceil_fb = ceiling(bench, 1, 2.0), ceiling(bench, formed, 2.0)
                if batching:
                    json16 = results[(label, 16)]
                    bin16 = measure(service.port, service.url, request(bench, binary=True), 16, seconds)
                    formed_b = max(1, round(bin16.batch or 1))
                    ceil_b = ceiling(bench, formed_b, 2.0)
                idle_rss = service.rss_mib()
        with peer(bench) as port:
            for c in CONCURRENCY:
                results[("peer (FastAPI, run per request)", c)] = measure(port, None, payload, c, seconds)
            peer_bin = measure(
                port, None, request(bench, binary=True, path="/binary/model/infer"), 16, seconds
            )
        on16 = results[("serve, batching on", 16)]

        table = Table(
            title=f"{bench.name}: input {'×'.join(map(str, bench.shape))}, {THREADS} ORT thread, "
            f"max_batch {MAX_BATCH}, delay {DELAY_US} µs"
        )
        for column in (
            "server",
            "conc",
            "QPS",
            "P50 ms",
            "P99 ms",
            "err",
            "batch",
            "queue ms",
            "compute ms/exec",
            "server ms",
            "× peer",
            "÷ ceiling@batch",
        ):
            table.add_column(column, justify="right")
        for (label, c), p in results.items():
            peer_qps = results[("peer (FastAPI, run per request)", c)].qps
            ceil = ceil_fb if p.batch and round(p.batch) == formed else ceiling_for(p, ceil1, ceil_fb, formed)
            table.add_row(
                label,
                str(c),
                f"{p.qps:.0f}",
                f"{p.p50_ms:.1f}",
                f"{p.p99_ms:.1f}",
                str(p.errors),
                "" if p.batch is None else f"{p.batch:.1f}",
                "" if p.queue_ms is None else f"{p.queue_ms:.2f}",
                "" if p.compute_ms is None else f"{p.compute_ms:.2f}",
                "" if p.server_ms is None else f"{p.server_ms:.2f}",
                f"{p.qps / peer_qps:.2f}",
                "" if ceil is None else f"{p.qps / ceil:.2f}",
            )
        console.print(table)
        console.print(
            f"  ceiling (ORT direct, {THREADS} thread): batch 1 {ceil1:.0f}/s, "
            f"batch {formed} {ceil_fb:.0f}/s "
            f"(×{ceil_fb / ceil1:.2f}); idle RSS of the service after the runs {idle_rss:.0f} MiB"
        )
        console.print(
            f"  cold start: process start → ready {ready_s:.2f} s; first request {first_ms:.1f} ms vs median "
            f"{median_ms:.1f} ms (×{first_ms / median_ms:.2f})"
        )
        console.print(
            f"  JSON vs binary at concurrency 16, batching on: {json16.qps:.0f} vs {bin16.qps:.0f} QPS "
            f"(×{bin16.qps / json16.qps:.2f}), P50 {json16.p50_ms:.1f} vs {bin16.p50_ms:.1f} ms, "
            f"request body {len(payload)} vs {len(request(bench, binary=True))} bytes; formed batch "
            f"{bin16.batch:.1f}, compute {bin16.compute_ms:.1f} ms/exec, P99 {bin16.p99_ms:.1f} ms"
        )
        console.print(
            f"  peer with binary bodies at concurrency 16: {peer_bin.qps:.0f} QPS, "
            f"P50 {peer_bin.p50_ms:.1f} ms, "
            f"P99 {peer_bin.p99_ms:.1f} ms"
        )
        off1 = results[("serve, batching off", 1)]
        compute1, server1 = off1.compute_ms or 0.0, off1.server_ms or 0.0
        console.print(
            f"  per-request overhead at concurrency 1, batching off (means, same run): client "
            f"{off1.mean_ms:.2f} ms = ORT {compute1:.2f} + server outside ORT {server1 - compute1:.2f} "
            f"(decode, queue, encode) + HTTP, uvicorn and client {off1.mean_ms - server1:.2f}; "
            f"ORT direct batch 1: {1e3 / ceil1:.2f} ms"
        )
        peer16 = results[("peer (FastAPI, run per request)", 16)]
        bound = DELAY_US / 1e3 + 2 * (on16.compute_ms or 0)
        summary.append(
            f"{bench.name} @16, batching on, JSON: {on16.qps / ceil_fb:.0%} of the ceiling at batch {formed} "
            f"(goal ≥ 80 %), ×{on16.qps / peer16.qps:.2f} the peer (goal ≥ 1.2), P99 {on16.p99_ms:.1f} ms vs "
            f"delay + 2 batches {bound:.1f} ms ({'met' if on16.p99_ms <= bound else 'missed'})"
        )
        bound_b = DELAY_US / 1e3 + 2 * (bin16.compute_ms or 0)
        summary.append(
            f"{bench.name} @16, batching on, binary: {bin16.qps / ceil_b:.0%} of the ceiling at batch "
            f"{formed_b}, ×{bin16.qps / peer_bin.qps:.2f} the binary peer, P99 {bin16.p99_ms:.1f} ms "
            f"vs delay + 2 batches {bound_b:.1f} ms ({'met' if bin16.p99_ms <= bound_b else 'missed'})"
        )
    for line in summary:
        console.print(line)
    console.print(f"load average at end: {os.getloadavg()[0]:.2f}")


def ceiling_for(p: Point, ceil1: float, ceil_fb: float, formed: int) -> float | None:
    """The ceiling for a point: batch 1 for unbatched runs and the peer, else the formed batch's."""
    if p.batch is None or p.batch < 1.5:
        return ceil1
    return ceil_fb if round(p.batch) >= formed else None


if __name__ == "__main__":
    main()

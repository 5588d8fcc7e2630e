"""Overload: at 10× the sustainable rate the service sheds with 503 fast, RSS stays bounded, it recovers."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import numpy as np

from ota.serve.testing import LoadClient, run_service
from tests.unit.serve.models import slow

WIDTH = 512
MAX_BATCH = 4
REQUEST = LoadClient.encode(
    "/v2/models/model/infer",
    json.dumps(
        {"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": [0.5] * WIDTH}]}
    ).encode(),
    {"content-type": "application/json"},
)


async def closed_loop(client: LoadClient, clients: int, seconds: float) -> list[int]:
    statuses: list[int] = []

    async def one() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            statuses.append((await client.send(REQUEST)).status)

    await asyncio.gather(*(one() for _ in range(clients)))
    return statuses


async def measure(port: int, clients: int, seconds: float) -> list[int]:
    client = LoadClient("127.0.0.1", port)
    try:
        return await closed_loop(client, clients, seconds)
    finally:
        await client.close()


async def overload(port: int, rate: float, seconds: float):
    """An open loop at ``rate`` per second for ``seconds``, then a closed loop to check recovery."""
    client = LoadClient("127.0.0.1", port)
    results: list[tuple[int, float, str | None]] = []

    async def one() -> None:
        started = time.perf_counter()
        answer = await client.send(REQUEST)
        results.append((answer.status, time.perf_counter() - started, answer.headers.get("retry-after")))

    try:
        tasks = []
        begin = time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, begin + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        offered_s = time.perf_counter() - begin
        await asyncio.sleep(0.2)
        recovered = await closed_loop(client, 2, 0.5)
    finally:
        await client.close()
    return results, offered_s, recovered


def test_ten_times_the_sustainable_rate_is_shed_with_503_and_rss_stays_bounded(tmp_path):
    data = slow(layers=2048, width=WIDTH)
    model = tmp_path / "slow.onnx"
    model.write_bytes(data)
    with run_service(
        [
            "--model",
            str(model),
            "--max-batch-size",
            str(MAX_BATCH),
            "--max-queue-delay-us",
            "2000",
            "--max-queue-size",
            "8",
            "--intra-op-threads",
            "1",
        ],
        log=tmp_path / "serve.log",
    ) as service:
        idle_rss = service.rss_mib()
        # The sustainable rate is what the service serves to a closed loop of 8 clients (full batches).
        statuses = asyncio.run(measure(service.port, 8, 1.0))
        assert set(statuses) == {200}
        rate = len(statuses) / 1.0
        results, offered_s, recovered = asyncio.run(overload(service.port, 10 * rate, 2.0))
        peak_rss = service.rss_mib("VmHWM")
    shed = [latency for status, latency, _ in results if status == 503]
    served = [latency for status, latency, _ in results if status == 200]
    print(
        f"\nsustainable {rate:.0f} req/s, offered {len(results) / offered_s:.0f} req/s "
        f"for {offered_s:.1f} s: "
        f"{len(served)} served, {len(shed)} shed; 503 latency median {statistics.median(shed) * 1e3:.1f} ms, "
        f"p99 {np.percentile(shed, 99) * 1e3:.1f} ms, max {max(shed) * 1e3:.1f} ms; "
        f"RSS idle {idle_rss:.0f} MiB, peak {peak_rss:.0f} MiB"
    )
    assert {status for status, _, _ in results} <= {200, 503}
    assert len(shed) > len(results) / 2
    assert all(retry == "1" for status, _, retry in results if status == 503)
    assert np.percentile(shed, 99) < 0.050  # shed within 50 ms (measured at the client, on a shared box)
    assert peak_rss - idle_rss < 64  # the bounded queue keeps memory flat
    assert recovered and set(recovered) == {200}

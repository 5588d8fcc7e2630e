"""Unit tests of the agent's poll loop against a failing server (in-memory transport, no network):
500s and timeouts back off exponentially with full jitter, are capped, and never busy-loop."""

from __future__ import annotations

import random
import statistics

import httpx
import pytest

from ota.edge.agent import Agent
from ota.edge.config import AgentConfig


def failing_agent(tmp_path, handler, seed: int = 5) -> Agent:
    config = AgentConfig(poll_interval_min_s=5, retry_base_s=2, retry_cap_s=120)
    return Agent(
        server_url="http://ota.test",
        state_dir=tmp_path,
        config=config,
        provisioning_token="token",
        profile="test-profile",
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        rng=random.Random(seed),
    )


def answer_500(request: httpx.Request) -> httpx.Response:
    return httpx.Response(500, json={"error": "boom"})


def time_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("simulated timeout", request=request)


@pytest.mark.parametrize("handler", [answer_500, time_out], ids=["500", "timeout"])
def test_errors_back_off_exponentially_with_a_cap_and_a_floor(tmp_path, handler):
    delays = []
    for run in range(60):
        agent = failing_agent(tmp_path / str(run), handler, seed=run)
        delays.append([agent.poll_once().delay_s for _ in range(10)])
    for series in delays:
        assert all(5 <= d <= 120 for d in series)  # never below the poll floor, never above the cap
    means = [statistics.mean(series[i] for series in delays) for i in range(10)]
    print("mean delay per consecutive error:", [round(m, 1) for m in means])
    assert means[0] < means[3] < means[6]  # grows with consecutive errors
    assert means[9] == pytest.approx(60, rel=0.25)  # capped: uniform(0, 120) with a 5 s floor


def test_success_resets_the_backoff(tmp_path):
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(500)

    agent = failing_agent(tmp_path, flaky)
    for _ in range(5):
        agent.poll_once()
    assert agent._errors_in_a_row == 5
    assert calls["n"] == 5  # one request per poll: no hidden retry storm

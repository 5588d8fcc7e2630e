"""Unit tests of ota.edge.config and ota.edge.backoff."""

from __future__ import annotations

import random
import statistics

import pytest

from ota.edge.backoff import full_jitter_delay, jittered_interval
from ota.edge.config import AgentConfig
from ota.edge.errors import ConfigError


@pytest.mark.parametrize(
    "overrides",
    [
        {"poll_interval_min_s": 0},
        {"poll_interval_min_s": 100, "poll_interval_max_s": 10},
        {"poll_interval_default_s": 1},
        {"max_download_bytes": -1},
        {"retry_base_s": 10, "retry_cap_s": 1},
        {"poll_jitter_fraction": 1.0},
        {"max_trial_boots": 0},
    ],
)
def test_nonsense_limits_are_refused(overrides):
    with pytest.raises(ConfigError):
        AgentConfig(**overrides)


def test_clamp_poll_interval():
    config = AgentConfig(poll_interval_min_s=5, poll_interval_max_s=100, poll_interval_default_s=30)
    assert config.clamp_poll_interval(None) == 30
    assert config.clamp_poll_interval(0) == 5
    assert config.clamp_poll_interval(10**9) == 100
    assert config.clamp_poll_interval(float("nan")) == 30
    assert config.clamp_poll_interval(42) == 42


def test_full_jitter_is_bounded_capped_and_grows():
    rng = random.Random(3)
    means = []
    for attempt in range(12):
        samples = [full_jitter_delay(attempt, base_s=1, cap_s=60, rng=rng) for _ in range(400)]
        assert all(0 <= s <= min(60, 2**attempt) for s in samples)
        means.append(statistics.mean(samples))
    assert means[0] < means[3] < means[6]
    assert means[-1] == pytest.approx(30, rel=0.15)  # uniform(0, cap) once capped
    assert full_jitter_delay(10**6, base_s=1, cap_s=60, rng=rng) <= 60  # no overflow after weeks offline


def test_jittered_interval_spreads_within_fraction():
    rng = random.Random(4)
    samples = [jittered_interval(100, fraction=0.1, rng=rng) for _ in range(500)]
    assert min(samples) >= 90 and max(samples) <= 110
    assert max(samples) - min(samples) > 15

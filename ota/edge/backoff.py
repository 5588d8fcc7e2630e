"""Retry timing for the edge agent: exponential backoff with full jitter and a cap, and jittered polls.

Full jitter (``sleep = uniform(0, min(cap, base · 2^attempt))``) is the variant AWS measured to spread a
fleet's retries best after an outage ("Exponential Backoff And Jitter", AWS Architecture Blog, 2015). The
functions take a :class:`random.Random` so tests can seed them and measure the waits.
"""

from __future__ import annotations

import random


def full_jitter_delay(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Return how long to wait before retry number ``attempt`` (0 for the first retry).

    Args:
        attempt: How many retries have already failed (≥ 0).
        base_s: The first step of the exponential.
        cap_s: No wait exceeds this.
        rng: Source of randomness.

    Returns:
        A delay uniformly drawn from ``[0, min(cap_s, base_s · 2^attempt)]``.
    """
    # Bound the exponent before computing 2**attempt: an agent offline for weeks must not overflow.
    ceiling = min(cap_s, base_s * (2 ** min(max(attempt, 0), 62)))
    return rng.uniform(0.0, ceiling)


def jittered_interval(interval_s: float, *, fraction: float, rng: random.Random) -> float:
    """Spread a poll interval by ± ``fraction`` so that a fleet started together does not poll together.

    Args:
        interval_s: The nominal interval.
        fraction: Relative spread in [0, 1).
        rng: Source of randomness.

    Returns:
        A delay uniformly drawn from ``[interval·(1-fraction), interval·(1+fraction)]``.
    """
    return interval_s * rng.uniform(1.0 - fraction, 1.0 + fraction)

"""The fleet loop keeps ticking while agents flood it with events (it once drained a busy queue forever)."""

from __future__ import annotations

import queue
import time
from typing import Any

from ota.edge.fleet import FleetSummary, drain_events


class EndlessQueue:
    """A queue that always has another event, like 50 agents polling every second."""

    def __init__(self) -> None:
        self.served = 0

    def get(self, timeout: float | None = None) -> dict[str, Any]:
        self.served += 1
        return {"device": f"sim-{self.served % 50}", "outcome": "noop"}


def test_drain_returns_by_its_deadline_even_when_events_never_stop() -> None:
    events = EndlessQueue()
    started = time.monotonic()
    applied = drain_events(events, FleetSummary(), until=started + 0.2)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.0
    assert applied == events.served > 0
    summary = FleetSummary()
    drain_events(EndlessQueue(), summary, until=time.monotonic() + 0.05)
    assert summary.devices and all(d.polls >= 1 for d in summary.devices.values())


def test_drain_of_an_idle_queue_waits_at_most_until_its_deadline() -> None:
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    started = time.monotonic()
    assert drain_events(events, FleetSummary(), until=started + 0.3) == 0
    assert time.monotonic() - started < 0.6

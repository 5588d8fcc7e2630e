"""Drive a simulated fleet through one rollout until the server says it is over and every device settled.

The ``make run`` demo and ``bench/fleet_bench.py`` share this loop: :func:`simulate_fleet` runs the agents,
and an operator client (:mod:`ota.client`) asks the server, at most every half second, whether the rollout
reached a final state and every device reports the release it should run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ota.client.api import OperatorClient
from ota.edge.errors import EdgeError
from ota.edge.fleet import FleetOptions, FleetSummary, simulate_fleet

# The rollout machine's final states (ota.server.rollout_machine; the agent side may not import it).
TERMINAL_STATES = frozenset({"completed", "aborted", "rolled-back"})


class RolloutNotSettledError(EdgeError):
    """The rollout did not reach a final state with every device on the expected release in time."""


def held(
    check: Callable[[], bool], every_s: float = 0.5, hold_s: float = 0.0
) -> Callable[[FleetSummary], bool]:
    """Ask ``check`` at most every ``every_s``; say yes once it has held for ``hold_s`` without a no.

    The hold matters at the end of an aborted rollout: a device that fetched the release just before the
    abort may still be installing it while every device the server knows of looks settled.
    """
    last = [0.0]
    since: list[float | None] = [None]

    def until(_summary: FleetSummary) -> bool:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            if not check():
                since[0] = None
            elif since[0] is None:
                since[0] = now
        return since[0] is not None and now - since[0] >= hold_s

    return until


def drive_rollout(
    options: FleetOptions, *, operator_token: str, rollout_id: str, expect_version: str
) -> FleetSummary:
    """Run the fleet until rollout ``rollout_id`` is final and every device runs ``expect_version``.

    Args:
        options: The fleet (``options.duration_s`` bounds the wait; ``options.devices`` is the fleet size).
        operator_token: A token with read scope on ``options.server``.
        rollout_id: The rollout to watch.
        expect_version: The release version (MLflow version) every device must run at the end.

    Raises:
        RolloutNotSettledError: The rollout did not settle within ``options.duration_s``.
        ClientError: The server refused or did not answer (ota.client.errors).
    """
    sha_of_version: dict[str, str] = {}
    with OperatorClient(base_url=options.server, token=operator_token) as api:

        def settled() -> bool:
            if api.rollout(rollout_id).state not in TERMINAL_STATES:
                return False
            if not sha_of_version:
                for release in api.releases():
                    sha_of_version.setdefault(release.version, release.sha256)
            wanted = sha_of_version.get(expect_version)
            devices = api.devices()
            return len(devices) == options.devices and all(d.current_sha256 == wanted for d in devices)

        # Settled for three poll intervals: no device is still installing what it fetched before.
        summary = simulate_fleet(
            options,
            until=held(settled, hold_s=3 * options.poll_interval_s),
        )
        if not settled():
            raise RolloutNotSettledError(
                f"rollout {rollout_id} did not settle on version {expect_version} in {options.duration_s} s"
            )
    return summary


def latest_rollout_id(server: str, operator_token: str, release_version: str) -> str | None:
    """The newest rollout whose release has version ``release_version``, or None.

    Raises:
        ClientError: The server refused or did not answer.
    """
    with OperatorClient(base_url=server, token=operator_token) as api:
        versions = {r.id: r.version for r in api.releases()}
        for rollout in api.rollouts():
            if versions.get(rollout.release_id) == release_version:
                return rollout.id
    return None

"""The fleet simulator against the real server: a staged rollout with deltas and flaky links, and an
auto-abort when health checks fail."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from ota.core.savings import bytes_saved
from ota.edge.fleet import FleetOptions, simulate_fleet

from .conftest import LiveServer
from .test_agent_server import PROFILE, linear_onnx


def options(server: LiveServer, tmp_path: Path, **overrides) -> FleetOptions:
    values: dict[str, Any] = {
        "server": server.url,
        "devices": 6,
        "provisioning_token": server.provisioning_token,
        "processes": 2,
        "duration_s": 90.0,
        "poll_interval_s": 0.3,
        "work_dir": tmp_path / "fleet",
        "profile": PROFILE,
        "show_progress": False,
    }
    values.update(overrides)
    return FleetOptions(**values)


def all_on(version: str, devices: int):
    return lambda summary: summary.versions().get(version, 0) == devices


@pytest.mark.slow
def test_staged_rollout_with_deltas_over_flaky_links(ota_server: LiveServer, tmp_path: Path):
    v1, v2 = linear_onnx(7, size=512), linear_onnx(7, size=512, tweak=0.25)
    r1 = ota_server.publish(v1, model="m", version="1", profile=PROFILE)["release"]
    ota_server.rollout(r1["id"])
    first = simulate_fleet(options(ota_server, tmp_path, flaky_network=0.2), until=all_on("1", 6))
    assert first.versions()["1"] == 6

    r2 = ota_server.publish(v2, model="m", version="2", profile=PROFILE)["release"]
    ota_server.rollout(
        r2["id"],
        phases=[
            {"percent": 34, "min_soak_seconds": 0, "min_reports": 1},
            {"percent": 100, "min_soak_seconds": 0, "min_reports": 1},
        ],
    )
    second = simulate_fleet(options(ota_server, tmp_path, flaky_network=0.2), until=all_on("2", 6))
    totals = second.totals()
    print(f"fleet: {totals} in {second.duration_s:.1f} s")
    assert second.versions()["2"] == 6
    assert totals["delta_installs"] == 6  # every device had v1 as the base
    assert totals["bytes_downloaded"] < totals["full_bytes"]


@pytest.mark.slow
def test_health_failures_abort_the_rollout_and_devices_keep_the_old_release(
    ota_server: LiveServer, tmp_path: Path
):
    v1, v2 = linear_onnx(8, size=256), linear_onnx(9, size=256)
    r1 = ota_server.publish(v1, model="m", version="1", profile=PROFILE)["release"]
    ota_server.rollout(r1["id"])
    simulate_fleet(options(ota_server, tmp_path), until=all_on("1", 6))
    r2 = ota_server.publish(v2, model="m", version="2", profile=PROFILE)["release"]
    rollout = ota_server.rollout(
        r2["id"], phases=[{"percent": 100, "min_reports": 6}], failure_threshold=0.2, min_reports_for_abort=2
    )

    def aborted(_summary) -> bool:
        return ota_server.get(f"/v1/rollouts/{rollout['id']}")["state"] in {"aborted", "paused"}

    summary = simulate_fleet(options(ota_server, tmp_path, fail_rate=1.0, duration_s=60.0), until=aborted)
    final = ota_server.get(f"/v1/rollouts/{rollout['id']}")
    assert aborted(summary), (
        final["state"],
        final["reason"],
        final["succeeded"],
        final["failed"],
        final["in_progress"],
    )
    assert summary.totals()["rollbacks"] >= 2
    assert summary.versions().get("2", 0) == 0
    # Every device still runs the previous release, as the server knows it (the simulator may stop on the
    # abort before every device has polled in this run, so its own summary can list fewer than six).
    devices = ota_server.get("/v1/devices")
    rows = devices if isinstance(devices, list) else devices["devices"]
    assert len(rows) == 6
    assert {row["current_sha256"] for row in rows} == {hashlib.sha256(v1).hexdigest()}
    state = ota_server.get(f"/v1/rollouts/{rollout['id']}")
    print(f"rollout {state['state']}: {state['reason']} ({summary.totals()['rollbacks']} rollbacks)")


@pytest.mark.slow
def test_bytes_saved_agree_between_the_fleet_summary_and_rollout_status(
    ota_server: LiveServer, tmp_path: Path
):
    """Issue 15: one definition of bytes saved; the fleet's summary and the server's rollout report of the
    same rollout used to disagree (37.3 % vs 47.7 %)."""
    v1, v2 = linear_onnx(11, size=512), linear_onnx(11, size=512, tweak=0.25)
    r1 = ota_server.publish(v1, model="m", version="1", profile=PROFILE)["release"]
    ota_server.rollout(r1["id"])
    simulate_fleet(options(ota_server, tmp_path), until=all_on("1", 6))
    r2 = ota_server.publish(v2, model="m", version="2", profile=PROFILE)["release"]
    rollout = ota_server.rollout(r2["id"])
    fleet = simulate_fleet(options(ota_server, tmp_path), until=all_on("2", 6))
    ota_server.wait_rollouts_settled()
    report = ota_server.get(f"/v1/rollouts/{rollout['id']}/report")
    totals = fleet.totals()
    ours = bytes_saved(totals["bytes_downloaded"], totals["full_bytes"])
    print(
        f"fleet {ours.describe()}; server saved {report['saved_bytes']:,} B ({report['saved_fraction']:.1%})"
    )
    assert totals["delta_installs"] == 6
    assert (report["delta_bytes"] + report["full_bytes"], report["full_equivalent_bytes"]) == (
        totals["bytes_downloaded"],
        totals["full_bytes"],
    )
    assert (report["saved_bytes"], report["saved_fraction"]) == (ours.saved_bytes, ours.saved_fraction)

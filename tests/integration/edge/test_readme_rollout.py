"""The README's rollout example, run as written against a real server and a simulated fleet, stages
(issue 9, defect 1): `edgefleet rollout start --release R --phases 1,10,50,100` used to race through every
phase on ticks alone and "complete" with no device report. Now each phase advances only after real
successes of its cohort; the audit log's timeline shows them.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from ota.edge.fleet import simulate_fleet

from .conftest import LiveServer
from .test_agent_server import PROFILE, linear_onnx
from .test_fleet import all_on, options

DEVICES = 20
ADVANCE = re.compile(r"with (\d+) of (\d+) required successes \(cohort (\d+) device\(s\)\)")


@pytest.mark.slow
def test_the_readme_rollout_example_stages(ota_server: LiveServer, tmp_path: Path) -> None:
    v1, v2 = linear_onnx(3, size=256), linear_onnx(3, size=256, tweak=0.5)
    r1 = ota_server.publish(v1, model="m", version="1", profile=PROFILE)["release"]
    ota_server.rollout(r1["id"])
    simulate_fleet(options(ota_server, tmp_path, devices=DEVICES), until=all_on("1", DEVICES))
    ota_server.wait_rollouts_settled()
    r2 = ota_server.publish(v2, model="m", version="2", profile=PROFILE)["release"]

    # The README's command, as written, over the API; the server fills in the phases' soak and success rule.
    # A 2 s soak stands for the default minute: the fleet polls every 0.3 s.
    ota_server.ctx.settings.rollout_min_soak_seconds = 2
    env = {
        **os.environ,
        "EDGEFLEET_SERVER": ota_server.url,
        "EDGEFLEET_OPERATOR_TOKEN": ota_server.admin_token,
    }
    started = subprocess.run(
        [
            str(Path(sys.executable).with_name("edgefleet")),
            "rollout",
            "start",
            "--release",
            r2["id"],
            "--phases",
            "1,10,50,100",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    rollout_id = started.stdout.split()[-1]
    # What the command left out is the server's safe default (one place: ota.server.rollout_machine).
    report = ota_server.get(f"/v1/rollouts/{rollout_id}/report")
    assert (report["failure_threshold"], report["min_reports_for_abort"]) == (0.1, 5)

    def completed(_summary: object) -> bool:
        state = ota_server.get(f"/v1/rollouts/{rollout_id}")["state"]
        return bool(state == "completed") and _summary.versions().get("2", 0) == DEVICES  # type: ignore[attr-defined]

    summary = simulate_fleet(
        options(ota_server, tmp_path, devices=DEVICES, duration_s=120.0), until=completed
    )
    assert summary.versions().get("2", 0) == DEVICES
    entries = [e for e in reversed(ota_server.get("/v1/audit?limit=1000")) if e["subject"] == rollout_id]
    advances = [e for e in entries if e["action"] == "rollout.advance"]
    assert [e["details"]["phase"] for e in advances] == [1, 2, 3, 3]  # the last advance completes it
    timeline = []
    for entry in advances:
        found = ADVANCE.search(entry["details"]["reason"])
        assert found, entry["details"]["reason"]
        successes, required, cohort = map(int, found.groups())
        assert successes >= required >= min(1, cohort), entry
        timeline.append(
            f"{entry['at'][11:19]} → phase {entry['details']['phase']}: {entry['details']['reason']}"
        )
    print("\n".join(["README rollout timeline:", *timeline]))
    # The soak held each phase: the rollout's start and its advances are at least the soak apart. Audit
    # entries are stamped when written, a few ms after the phase clock the soak is measured from (a loaded
    # machine saw 1.98 s between two entries of a 2 s soak), hence the 0.1 s allowance.
    created = next(e for e in entries if e["action"] == "rollout.create")
    moments = [datetime.fromisoformat(e["at"]) for e in [created, *advances]]
    assert all((b - a).total_seconds() >= 1.9 for a, b in itertools.pairwise(moments)), moments

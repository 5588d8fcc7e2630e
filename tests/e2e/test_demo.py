"""The reduced ``make run`` demo, end to end: ci training configs, ~20 simulated agents, three rollouts.

One module-scoped run of ``python -m pipelines.demo configs/ci.yaml configs/release-ci.yaml 20`` on a
fresh project folder feeds every assertion. Each assertion reads the real stores again (the OTA server's
database, MLflow's SQLite registry, the server's HTTP API for ``trace``) instead of trusting the demo's
own summary, and checks that the summary the demo wrote agrees with them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEVICES = 20
MODEL = "edgefleet-digits-ci-cpu-int8-small"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("edgefleet-e2e")
    env = {
        **os.environ,
        "EDGEFLEET_HOME": str(home),
        "ZENML_CONFIG_PATH": str(home / "zenml"),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "AUTO_OPEN_DASHBOARD": "false",
    }
    for leaked in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "EDGEFLEET_SERVER",
        "EDGEFLEET_SERVER_URL",
        "EDGEFLEET_OPERATOR_TOKEN",
    ):
        env.pop(leaked, None)
    init = subprocess.run(
        [str(BIN / "edgefleet"), "stack", "init"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    run = subprocess.run(
        [sys.executable, "-m", "pipelines.demo", "configs/ci.yaml", "configs/release-ci.yaml", str(DEVICES)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    summary = json.loads((home / "demo" / "summary.json").read_text())
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return {
        "home": home,
        "env": env,
        "stdout": run.stdout,
        "summary": summary,
        "mlflow": MlflowClient(tracking_uri=uri, registry_uri=uri),
        "uri": uri,
    }


@pytest.fixture(scope="module")
def server_db(demo: dict[str, Any]) -> Iterator[Any]:
    """Sessions on the demo server's own database (the server itself has stopped)."""
    from ota.server.context import build_context
    from ota.server.settings import load_settings

    ctx = build_context(load_settings(home=demo["home"] / "ota"))
    try:
        yield ctx.sessions
    finally:
        ctx.close()


def _release_sha(server_db: Any, version: str) -> str:
    from ota.server.models import Release

    with server_db() as session:
        release = session.scalars(
            select(Release).where(Release.model == MODEL, Release.version == version)
        ).one()
        return str(release.sha256)


def test_every_agent_ends_on_the_second_version(demo: dict[str, Any], server_db: Any) -> None:
    from ota.server.models import Device

    versions = demo["summary"]["versions"]
    assert len({versions["v1"], versions["v2"], versions["v3"]}) == 3, versions
    wanted = _release_sha(server_db, versions["v2"])
    with server_db() as session:
        devices = list(session.scalars(select(Device)))
    assert len(devices) == DEVICES
    assert {d.current_sha256 for d in devices} == {wanted}
    # the printed/written summary says the same as the database
    assert demo["summary"]["devices_per_version"] == {versions["v2"]: DEVICES}


def test_second_version_went_out_as_deltas(demo: dict[str, Any], server_db: Any) -> None:
    from ota.server.status_cli import rollout_report

    second = next(r for r in demo["summary"]["rollouts"] if r["label"] == "second")
    with server_db() as session:
        report = rollout_report(session, second["rollout_id"])
    assert report.state == "completed"
    assert report.deltas_published >= 1
    assert report.delta_installs >= 1, report
    assert report.delta_bytes + report.full_bytes < report.full_equivalent_bytes
    # A fine-tune moves the weights of the same graph a little: its deltas are well under the full file
    # (about 40 % with the ci configs; a from-scratch retrain's were about 85 %).
    assert report.delta_bytes < 0.6 * report.full_equivalent_bytes, report
    assert second["report"]["delta_installs"] == report.delta_installs
    assert second["fleet"]["delta_installs"] >= 1


def test_second_version_is_a_fine_tune_of_the_first_on_new_data(demo: dict[str, Any]) -> None:
    client: MlflowClient = demo["mlflow"]
    versions = demo["summary"]["versions"]
    first = client.get_model_version(MODEL, versions["v1"]).tags
    second = client.get_model_version(MODEL, versions["v2"]).tags
    # lineage names the parent, resolved from the production alias the demo fine-tuned from
    assert "edgefleet.lineage.init_from" not in first
    assert second["edgefleet.lineage.init_from"] == f"models:/{MODEL}/{versions['v1']}"
    # new data: the field samples changed the fingerprint
    assert second["edgefleet.lineage.data_fingerprint"] != first["edgefleet.lineage.data_fingerprint"]
    # the same graph (not pruned again, quantized the same way), other weights
    assert second["edgefleet.variant"] == first["edgefleet.variant"]
    assert second["edgefleet.sha256"] != first["edgefleet.sha256"]
    # the retrain config the demo ran says the same, and so does its summary
    retrain = yaml.safe_load((demo["home"] / "demo" / "retrain.yaml").read_text())["parameters"]["config"]
    assert retrain["init_from"] == f"models:/{MODEL}@production"
    assert retrain["data"]["extra_train"] == [str(demo["home"] / "demo" / "field-data.npz")]
    lineage = demo["summary"]["lineage"]
    assert lineage["v2"]["init_from"] == second["edgefleet.lineage.init_from"]
    assert lineage["v1"]["data_fingerprint"] == first["edgefleet.lineage.data_fingerprint"]
    assert lineage["v2"]["data_fingerprint"] == second["edgefleet.lineage.data_fingerprint"]
    assert f"models:/{MODEL}/{versions['v1']}" in demo["stdout"]


def test_broken_version_was_aborted_and_rolled_back(demo: dict[str, Any], server_db: Any) -> None:
    from ota.server.models import Device, Rollout, StatusReportRow
    from ota.server.rollouts import cohort_size
    from ota.server.status_cli import rollout_report

    broken = next(r for r in demo["summary"]["rollouts"] if r["label"] == "broken")
    with server_db() as session:
        report = rollout_report(session, broken["rollout_id"])
        cohort = cohort_size(session, session.get(Rollout, broken["rollout_id"]))
        failures = list(
            session.scalars(
                select(StatusReportRow).where(
                    StatusReportRow.rollout_id == broken["rollout_id"],
                    StatusReportRow.status == "health-check-failed",
                )
            )
        )
        broken_sha = _release_sha(server_db, broken["version"])
        on_broken = [d.id for d in session.scalars(select(Device)) if d.current_sha256 == broken_sha]
    assert report.state in {"aborted", "rolled-back"}, report.state
    assert any(event.actor == "auto" and event.action == "rollout.abort" for event in report.timeline)
    # The rule that fired: enough final reports (or the whole cohort) with a failure rate over the threshold.
    # A slow model can pass one device's latency check, so successes may be among the reports.
    assert report.succeeded + report.failed >= min(report.min_reports_for_abort, cohort or 10**9)
    assert report.failed / (report.succeeded + report.failed) > report.failure_threshold
    assert failures and all("latency" in json.dumps(row.body) for row in failures)
    assert on_broken == []
    client: MlflowClient = demo["mlflow"]
    production = client.get_model_version_by_alias(MODEL, "production")
    assert str(production.version) == demo["summary"]["versions"]["v2"]
    demoted = client.get_model_version(MODEL, broken["version"])
    assert demoted.tags["edgefleet.rollback.to_version"] == str(production.version)


def test_trace_links_a_device_to_its_mlflow_version_and_data(demo: dict[str, Any]) -> None:
    from pipelines.demo import ota_server

    client: MlflowClient = demo["mlflow"]
    v2 = demo["summary"]["versions"]["v2"]
    tags = client.get_model_version(MODEL, v2).tags
    device = sorted(demo["summary"]["device_versions"])[0]
    with ota_server(demo["home"] / "ota", fresh=False) as server:
        env = {
            **demo["env"],
            "EDGEFLEET_SERVER_URL": server.url,
            "EDGEFLEET_OPERATOR_TOKEN": server.operator_token,
            "MLFLOW_TRACKING_URI": demo["uri"],
        }
        traced = subprocess.run(
            [
                sys.executable,
                "-c",
                "import typer; from registry.trace_cli import trace; typer.run(trace)",
                device,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert traced.returncode == 0, traced.stdout + traced.stderr
    out = traced.stdout
    assert f"models:/{MODEL}/{v2}" in out
    assert tags["edgefleet.lineage.data_fingerprint"] in out
    assert tags["edgefleet.lineage.git_commit"] in out
    assert tags["edgefleet.lineage.config_hash"] in out
    assert tags["edgefleet.lineage.teacher_model_id"] in out
    assert f"fine-tuned from   models:/{MODEL}/{demo['summary']['versions']['v1']}" in out
    assert str(client.get_model_version(MODEL, v2).run_id) in out
    # the release pipeline wrote the release and rollout ids back onto the version
    second = next(r for r in demo["summary"]["rollouts"] if r["label"] == "second")
    assert tags["edgefleet.release.rollout_id"] == second["rollout_id"]
    assert demo["summary"]["trace"]["model_version"]["version"] == v2

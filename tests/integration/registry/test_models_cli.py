"""``edgefleet models`` against a real MLflow SQLite store: list, show, compare, promote, rollback, errors.

Fixtures (``conftest.py``) register five versions of one model through ``register_variant``:
1 baseline, 2 slightly better, 3 fails ``min_accuracy``, 4 regresses accuracy vs 2, 5 regresses P99 vs 2;
plus one version of a second EdgeFleet model and a registered model EdgeFleet did not write.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ota.cli import app as root_app
from registry.store import use_tracking_uri

from .conftest import FOREIGN_MODEL, LINEAGE, MODEL, OTHER_MODEL, VERSIONS, Store, register

Cli = Callable[..., Result]
PROMO = "edgefleet.promotion."


def assert_clean_failure(result: Result, *fragments: str) -> None:
    """Exit 1 with a one-line error naming the problem, and no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exc_info is not None and result.exc_info[0] is SystemExit
    assert "Traceback" not in result.output
    assert "error:" in result.stderr
    for fragment in fragments:
        assert fragment in result.output, result.output


def _cell(line: str, index: int) -> str:
    """The text of one cell of a rich table row ('' when the line is not a row)."""
    cells = line.split("│")[1:-1]
    return cells[index].strip() if index < len(cells) else ""


def promote_ok(cli: Cli, version: str, *extra: str) -> Result:
    result = cli("promote", MODEL, version, "--to", "production", "--actor", "alice", *extra)
    assert result.exit_code == 0, result.output
    return result


# --- registration ------------------------------------------------------------------------------------


def test_register_variant_is_idempotent(store: Store) -> None:
    use_tracking_uri(store.uri)
    experiment = store.client.get_experiment_by_name("edgefleet-training")
    assert experiment is not None
    before = store.client.search_model_versions(f"name = '{MODEL}'")
    again = register(
        store.template.onnx_files["2"],
        model_name=MODEL,
        profile="cpu-int8-small",
        accuracy=VERSIONS["2"][1],
        p99_ms=VERSIONS["2"][2],
        experiment_id=str(experiment.experiment_id),
    )
    after = store.client.search_model_versions(f"name = '{MODEL}'")
    assert again.created is False
    assert again.version == "2"
    assert len(after) == len(before) == len(VERSIONS)
    # Re-registering points the candidate alias back at the existing version.
    assert store.aliases()["candidate"] == "2"


# --- list, show, compare -------------------------------------------------------------------------------


def test_list_without_name_shows_every_edgefleet_model_only(cli: Cli) -> None:
    result = cli("list")
    assert result.exit_code == 0, result.output
    assert MODEL in result.stdout and OTHER_MODEL in result.stdout
    assert FOREIGN_MODEL not in result.stdout


def test_list_one_model_shows_versions_aliases_and_metrics(cli: Cli, store: Store) -> None:
    promote_ok(cli, "1")
    result = cli("list", MODEL)
    assert result.exit_code == 0, result.output
    rows = {_cell(line, 0): line for line in result.stdout.splitlines() if line.count("│") > 5}
    assert set(VERSIONS) <= set(rows)
    assert "production" in rows["1"] and "candidate" in rows["5"]
    assert "97.00 %" in rows["1"] and "93.00 %" in rows["3"]
    assert _cell(rows["5"], 7) == "0.9"  # P99 ms
    assert f"{MODEL} (profile cpu-int8-small)" in result.stdout
    assert OTHER_MODEL not in result.stdout


def test_show_version_has_lineage_metrics_gates_and_artifacts(cli: Cli) -> None:
    result = cli("show", MODEL, "3")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in (
        LINEAGE.git_commit,
        LINEAGE.data_fingerprint,
        LINEAGE.config_hash,
        LINEAGE.pipeline_run_id,
        LINEAGE.teacher_model_id,
        "model.onnx",
        "extra_files/v3.onnx",
        "student-int8-static",
        "93.00 %",
    ):
        assert expected in out, expected
    gate_line = next(line for line in out.splitlines() if "min_accuracy" in line)
    assert "FAIL" in gate_line and "95.00 %" in gate_line


def test_show_resolves_an_alias(cli: Cli) -> None:
    result = cli("show", MODEL, "candidate")
    assert result.exit_code == 0, result.output
    assert f"{MODEL} version 5" in result.stdout


def test_compare_shows_both_sides_difference_and_gates(cli: Cli) -> None:
    result = cli("compare", MODEL, "1", "3")
    assert result.exit_code == 0, result.output
    accuracy = next(line for line in result.stdout.splitlines() if _cell(line, 0) == "accuracy")
    assert "97.00 %" in accuracy and "93.00 %" in accuracy and "-4.00 pp" in accuracy
    p99 = next(line for line in result.stdout.splitlines() if _cell(line, 0) == "p99_ms")
    assert "-10" in p99  # 0.50 → 0.45 ms is -10 %
    gates = [line for line in result.stdout.splitlines() if "min_accuracy" in line]
    assert len(gates) == 2
    assert "pass" in gates[0] and "A = v1" in gates[0]
    assert "FAIL" in gates[1] and "B = v3" in gates[1]


# --- promote -------------------------------------------------------------------------------------------


def test_first_promotion_moves_alias_and_writes_audit_tags(cli: Cli, store: Store) -> None:
    started = datetime.now(UTC)
    result = promote_ok(cli, "1")
    assert "promoted" in result.stdout
    assert store.aliases()["production"] == "1"
    assert "previous" not in store.aliases()
    tags = store.tags("1")
    assert tags[f"{PROMO}actor"] == "alice"
    assert tags[f"{PROMO}forced"] == "false"
    assert tags[f"{PROMO}from_version"] == "none"
    assert tags[f"{PROMO}alias"] == "production"
    assert tags[f"{PROMO}reason"]
    at = datetime.fromisoformat(tags[f"{PROMO}at"])
    assert at.utcoffset() == timedelta(0)
    assert started - timedelta(seconds=2) <= at <= datetime.now(UTC) + timedelta(seconds=2)


def test_promotion_keeps_the_replaced_version_as_previous(cli: Cli, store: Store) -> None:
    promote_ok(cli, "1")
    promote_ok(cli, "2", "--reason", "retrained on fresh data")
    assert store.aliases()["production"] == "2"
    assert store.aliases()["previous"] == "1"
    assert store.tags("2")[f"{PROMO}from_version"] == "1"
    assert store.tags("2")[f"{PROMO}reason"] == "retrained on fresh data"
    assert store.tags("1")[f"{PROMO}superseded_by"] == "2"


def test_promoting_the_production_version_again_changes_nothing(cli: Cli, store: Store) -> None:
    promote_ok(cli, "1")
    tags = store.tags("1")
    result = promote_ok(cli, "1")
    assert "nothing changed" in result.stdout
    assert store.aliases() == {"candidate": "5", "production": "1"}
    assert store.tags("1") == tags


def test_promotion_refused_on_a_failing_gate(cli: Cli, store: Store) -> None:
    promote_ok(cli, "1")
    aliases = store.aliases()
    result = cli("promote", MODEL, "3", "--to", "production")
    assert_clean_failure(result, "checks FAILED", "refusing to promote", "min_accuracy")
    gate_line = next(line for line in result.stdout.splitlines() if "min_accuracy" in line)
    assert "FAIL" in gate_line and "93.00 %" in gate_line
    assert store.aliases() == aliases
    assert not any(key.startswith(PROMO) for key in store.tags("3"))


@pytest.mark.parametrize(
    ("version", "failing_check", "measured"),
    [
        ("4", "accuracy_drop_vs_production", "1.20 %"),
        ("5", "p99_ms_increase_vs_production", "0.42"),
    ],
)
def test_promotion_refused_on_regression_beyond_margin(
    cli: Cli, store: Store, version: str, failing_check: str, measured: str
) -> None:
    promote_ok(cli, "1")
    promote_ok(cli, "2")
    aliases = store.aliases()
    result = cli("promote", MODEL, version)
    assert_clean_failure(result, failing_check)
    line = next(line for line in result.stdout.splitlines() if failing_check in line)
    assert "FAIL" in line and measured in line
    # Its own gates pass: the refusal is only about the comparison with production.
    gate_rows = [row for row in result.stdout.splitlines() if _cell(row, 0) == "gate"]
    assert gate_rows and all(_cell(row, 4) == "pass" for row in gate_rows)
    assert store.aliases() == aliases


def test_margin_flags_override_the_defaults(cli: Cli, store: Store) -> None:
    promote_ok(cli, "1")
    promote_ok(cli, "2")
    assert cli("promote", MODEL, "4", "--margin-accuracy", "0.011").exit_code == 1
    promote_ok(cli, "4", "--margin-accuracy", "0.013")
    assert store.aliases()["production"] == "4"
    promote_ok(cli, "5", "--margin-p99", "1.0")
    assert store.aliases()["production"] == "5"


@pytest.mark.parametrize("reason", [None, "   "])
def test_force_without_a_reason_is_refused(cli: Cli, store: Store, reason: str | None) -> None:
    promote_ok(cli, "1")
    aliases = store.aliases()
    args = ["promote", MODEL, "3", "--force"] + (["--reason", reason] if reason is not None else [])
    result = cli(*args)
    assert_clean_failure(result, "--reason")
    assert "min_accuracy" not in result.output  # the problem is the missing reason, not the gates
    assert store.aliases() == aliases
    assert not any(key.startswith(PROMO) for key in store.tags("3"))


def test_force_with_a_reason_promotes_and_records_the_override(cli: Cli, store: Store) -> None:
    promote_ok(cli, "1")
    result = promote_ok(cli, "3", "--force", "--reason", "hotfix for INC-42, accuracy accepted")
    assert "forced" in result.stderr
    assert store.aliases()["production"] == "3"
    assert store.aliases()["previous"] == "1"
    tags = store.tags("3")
    assert tags[f"{PROMO}forced"] == "true"
    assert tags[f"{PROMO}reason"] == "hotfix for INC-42, accuracy accepted"
    assert tags[f"{PROMO}actor"] == "alice"
    assert "min_accuracy" in tags[f"{PROMO}failed_checks"].split(",")
    # A later clean promotion over the forced one is not marked forced.
    promote_ok(cli, "2", "--margin-accuracy", "0.5", "--margin-p99", "5")
    assert store.tags("2")[f"{PROMO}forced"] == "false"


def test_actor_defaults_to_the_os_user(cli: Cli, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "bob-from-env")  # getpass.getuser reads LOGNAME first
    assert cli("promote", MODEL, "1").exit_code == 0
    assert store.tags("1")[f"{PROMO}actor"] == "bob-from-env"


# --- rollback ------------------------------------------------------------------------------------------


def test_rollback_walks_back_through_promotions(cli: Cli, store: Store) -> None:
    promote_ok(cli, "1")
    promote_ok(cli, "2")
    promote_ok(cli, "3", "--force", "--reason", "experiment")
    assert store.aliases()["previous"] == "2"

    first = cli("rollback", MODEL, "--reason", "health check failures", "--actor", "carol")
    assert first.exit_code == 0, first.output
    assert store.aliases()["production"] == "2" and store.aliases()["previous"] == "1"
    for version in ("2", "3"):
        tags = store.tags(version)
        assert tags["edgefleet.rollback.actor"] == "carol"
        assert tags["edgefleet.rollback.reason"] == "health check failures"
        assert tags["edgefleet.rollback.from_version"] == "3"
        assert tags["edgefleet.rollback.to_version"] == "2"

    second = cli("rollback", MODEL)
    assert second.exit_code == 0, second.output
    assert store.aliases()["production"] == "1"
    assert "previous" not in store.aliases()

    assert_clean_failure(cli("rollback", MODEL), "previous")
    assert store.aliases()["production"] == "1"


def test_rollback_withdraws_the_candidate_alias_from_the_demoted_version(cli: Cli, store: Store) -> None:
    promote_ok(cli, "1")
    store.client.set_registered_model_alias(MODEL, "candidate", "2")
    promote_ok(cli, "candidate")
    assert store.aliases() == {"candidate": "2", "production": "2", "previous": "1"}
    result = cli("rollback", MODEL, "--reason", "failed on devices")
    assert result.exit_code == 0, result.output
    assert "candidate alias pointed at version 2; removed" in result.output
    assert store.aliases() == {"production": "1"}
    # A candidate on another version is left alone.
    promote_ok(cli, "2")
    store.client.set_registered_model_alias(MODEL, "candidate", "5")
    assert cli("rollback", MODEL).exit_code == 0
    assert store.aliases() == {"candidate": "5", "production": "1"}


def test_rollback_without_production_is_a_clear_error(cli: Cli) -> None:
    assert_clean_failure(cli("rollback", MODEL), "production")


# --- errors and wiring ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("list", "no-such-model"), "no-such-model"),
        (("show", "no-such-model", "1"), "no-such-model"),
        (("show", MODEL, "99"), "'99'"),
        (("show", MODEL, "no-such-alias"), "no-such-alias"),
        (("compare", MODEL, "1", "99"), "'99'"),
        (("promote", "no-such-model", "1"), "no-such-model"),
        (("promote", MODEL, "99"), "'99'"),
        (("promote", MODEL, "1", "--to", "previous"), "reserved"),
        (("promote", MODEL, "1", "--margin-accuracy", "-0.1"), "margin"),
        (("rollback", "no-such-model"), "no-such-model"),
    ],
)
def test_bad_input_is_a_clear_error_without_traceback(cli: Cli, args: tuple[str, ...], fragment: str) -> None:
    assert_clean_failure(cli(*args), fragment)


def test_missing_sqlite_store_is_reported_not_created(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "mlflow.db"
    assert_clean_failure(cli("list", uri=f"sqlite:///{missing}"), "no MLflow store")
    assert not missing.exists()


def test_tracking_uri_comes_from_the_environment_then_edgefleet_home(
    cli: Cli, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    from_env = cli("list", MODEL, uri=None)
    assert from_env.exit_code == 0 and "cpu-int8-small" in from_env.stdout
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    home = store.uri.removeprefix("sqlite:///").removesuffix("/mlflow.db")
    monkeypatch.setenv("EDGEFLEET_HOME", home)
    from_home = cli("list", MODEL, uri=None)
    assert from_home.exit_code == 0 and "cpu-int8-small" in from_home.stdout


def test_root_cli_mounts_the_models_group(store: Store) -> None:
    result = CliRunner().invoke(root_app, ["models", "list", MODEL, "--tracking-uri", store.uri])
    assert result.exit_code == 0, result.output
    assert "cpu-int8-small" in result.stdout

"""Promotion re-checks the stored artifact and the version's OTA history; its audit trail is append-only.

Issue 15, item 7: a version whose actual file was 4.2 MB passed a 64 KB size gate on its recorded size,
nothing warned that its rollout had auto-aborted, and a rollback overwrote the earlier rollback's record.
Real MLflow store (conftest); the OTA server's answer is faked at the reader (and, for the HTTP function,
with httpx's MockTransport).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import Result

from registry.errors import PromotionRefusedError, RegistryError
from registry.ota_history import ROLLOUT_ID_TAG, SERVER_TAG, RolloutRecord
from registry.policy import ARTIFACT_SHA_CHECK, ARTIFACT_SIZE_CHECK, OTA_HISTORY_CHECK, history_events
from registry.promotion import promote, review_promotion, rollback
from registry.store import register_variant, use_tracking_uri

from .conftest import GATES, LINEAGE, MODEL, Store, metrics_for

Cli = Callable[..., Result]


def onnx_of_size(path: Path, floats: int, scale: float) -> Path:
    """A one-node ONNX model with ``floats`` weights (4 bytes each)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, floats])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, floats])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, floats], [scale] * floats)
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "big", [x], [y], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def register_file(store: Store, path: Path) -> str:
    """Register ``path`` with the recorded metrics of a small model (size_kb 42.5, within the 100 KB gate)."""
    use_tracking_uri(store.uri)
    experiment = store.client.get_experiment_by_name("edgefleet-training")
    assert experiment is not None
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        registered = register_variant(
            model_name=MODEL,
            profile="cpu-int8-small",
            variant="student-int8-static",
            onnx_path=path,
            parent_path=path,
            metrics=metrics_for(0.975, 0.4),
            params={},
            lineage=LINEAGE,
            gates=GATES,
        )
    return registered.version


def by_name(store: Store, version: str) -> dict[str, bool]:
    return {row.gate: row.passed for row in review_promotion(store.client, MODEL, version).checks}


def test_a_file_over_the_size_gate_is_refused_whatever_its_recorded_size(
    store: Store, tmp_path: Path
) -> None:
    big = register_file(store, onnx_of_size(tmp_path / "big.onnx", 40_000, 3.0))  # ~160 KB > 100 KB
    checks = by_name(store, big)
    assert checks[ARTIFACT_SIZE_CHECK] is False and checks["max_size_kb"] is True  # tags alone would pass
    with pytest.raises(PromotionRefusedError, match=ARTIFACT_SIZE_CHECK):
        promote(store.client, MODEL, big)
    assert "production" not in store.aliases()


def test_a_file_changed_since_registration_is_refused(store: Store, tmp_path: Path) -> None:
    version = register_file(store, onnx_of_size(tmp_path / "v.onnx", 16, 5.0))
    assert by_name(store, version)[ARTIFACT_SHA_CHECK] is True
    stored = store.client.get_model_version_download_uri(MODEL, version).removeprefix("file://")
    onnx_of_size(Path(stored) / "model.onnx", 16, 6.0)  # swapped behind the registry's back
    with pytest.raises(PromotionRefusedError, match=ARTIFACT_SHA_CHECK):
        promote(store.client, MODEL, version)


def _rolled_out(store: Store, version: str, rollout_id: str = "ro-1") -> None:
    store.client.set_model_version_tag(MODEL, version, ROLLOUT_ID_TAG, rollout_id)
    store.client.set_model_version_tag(MODEL, version, SERVER_TAG, "http://ota.invalid:18000")


def test_a_version_whose_rollout_auto_aborted_needs_force_with_a_reason(store: Store) -> None:
    _rolled_out(store, "2")
    asked: list[tuple[str, str]] = []

    def aborted(server: str, rollout_id: str) -> RolloutRecord:
        asked.append((server, rollout_id))
        return RolloutRecord(rollout_id, "aborted", "failure rate 0.40 > 0.10 after 5 reports")

    with pytest.raises(PromotionRefusedError, match=OTA_HISTORY_CHECK) as refused:
        promote(store.client, MODEL, "2", rollouts=aborted)
    assert "failure rate 0.40" in str(refused.value)
    assert asked == [("http://ota.invalid:18000", "ro-1")]
    with pytest.raises(PromotionRefusedError, match="--reason"):
        promote(store.client, MODEL, "2", rollouts=aborted, force=True)
    forced = promote(
        store.client, MODEL, "2", rollouts=aborted, force=True, reason="fixed on devices", actor="a"
    )
    assert forced.forced
    tags = store.tags("2")
    assert tags["edgefleet.promotion.forced"] == "true"
    assert tags["edgefleet.promotion.failed_checks"] == OTA_HISTORY_CHECK


def test_a_completed_rollout_passes_and_an_unreadable_one_fails(store: Store) -> None:
    _rolled_out(store, "2")
    completed = review_promotion(
        store.client, MODEL, "2", rollouts=lambda s, r: RolloutRecord(r, "completed", None)
    )
    assert completed.passed

    def down(server: str, rollout_id: str) -> RolloutRecord:
        raise RegistryError(f"cannot read rollout {rollout_id} from {server}: ConnectError")

    assert OTA_HISTORY_CHECK in review_promotion(store.client, MODEL, "2", rollouts=down).failures
    unchecked = review_promotion(store.client, MODEL, "2", rollouts=None)
    assert unchecked.passed and "EDGEFLEET_OPERATOR_TOKEN" in unchecked.notes[0]


def test_force_is_recorded_only_when_it_overrode_a_check(store: Store) -> None:
    result = promote(store.client, MODEL, "1", force=True, reason="habit", actor="a")
    assert not result.forced
    assert store.tags("1")["edgefleet.promotion.forced"] == "false"


def test_rollback_keeps_the_earlier_rollback_record(store: Store, cli: Cli) -> None:
    promote(store.client, MODEL, "1", actor="a")
    promote(store.client, MODEL, "2", actor="a")
    rollback(store.client, MODEL, reason="first incident INC-1", actor="b")
    promote(store.client, MODEL, "2", actor="a")
    rollback(store.client, MODEL, reason="second incident INC-2", actor="c")
    version = store.client.get_model_version(MODEL, "2")
    rollbacks = [e for e in history_events(version) if e["event"] == "rollback"]
    assert [e["reason"] for e in rollbacks] == ["first incident INC-1", "second incident INC-2"]
    assert [e["event"] for e in history_events(version)] == ["promotion", "rollback", "promotion", "rollback"]
    shown = cli("show", MODEL, "2")
    assert shown.exit_code == 0, shown.output
    assert "history (append-only)" in shown.output
    assert "first incident INC-1" in shown.output and "second incident INC-2" in shown.output

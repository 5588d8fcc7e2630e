"""``registry.promotion`` called directly with an ``MlflowClient`` on a real SQLite store (no CLI).

The policy's arithmetic (margins, gates, --force rules) is unit-tested without MLflow in
``tests/unit/registry``; these store-backed tests cover the MLflow adapter: non-production targets,
versions registered without gate tags, and the review being read-only.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from ml.gates import GateResult
from registry.errors import PromotionRefusedError
from registry.policy import NO_GATES_CHECK, gate_results
from registry.promotion import promote, review_promotion, rollback
from registry.store import register_variant, use_tracking_uri

from .conftest import LINEAGE, MODEL, Store, metrics_for, tiny_onnx


def by_name(rows: tuple[GateResult, ...]) -> dict[str, GateResult]:
    return {row.gate: row for row in rows}


def test_review_changes_nothing_and_has_no_margins_without_production(store: Store) -> None:
    before = {v: store.tags(v) for v in ("1", "3")}
    aliases = store.aliases()
    review = review_promotion(store.client, MODEL, "3")
    assert review.current_version is None and review.margins == ()
    assert "min_accuracy" in review.failures and not review.passed
    assert review_promotion(store.client, MODEL, "1").passed
    assert store.aliases() == aliases
    assert {v: store.tags(v) for v in ("1", "3")} == before


def test_other_targets_keep_their_own_previous_alias(store: Store) -> None:
    promote(store.client, MODEL, "1", to="staging", actor="ci")
    result = promote(store.client, MODEL, "2", to="staging", actor="ci")
    assert result.replaced_version == "1" and result.changed
    assert store.aliases()["staging"] == "2" and store.aliases()["staging-previous"] == "1"
    assert "production" not in store.aliases() and "previous" not in store.aliases()
    back = rollback(store.client, MODEL, alias="staging", actor="ci")
    assert back.restored_version == "1" and back.previous_version is None
    assert store.aliases()["staging"] == "1" and "staging-previous" not in store.aliases()


def test_version_without_gate_tags_is_refused_unless_forced(store: Store, tmp_path: Path) -> None:
    use_tracking_uri(store.uri)
    experiment = store.client.get_experiment_by_name("edgefleet-training")
    assert experiment is not None
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        ungated = register_variant(
            model_name=MODEL,
            profile="cpu-int8-small",
            variant="student-int8-static",
            onnx_path=tiny_onnx(tmp_path / "ungated.onnx", 9.0),
            parent_path=tmp_path / "ungated.onnx",
            metrics=metrics_for(0.99, 0.1),
            params={},
            lineage=LINEAGE,
        )
    version = store.client.get_model_version(MODEL, ungated.version)
    assert [row.gate for row in gate_results(version)] == [NO_GATES_CHECK]
    with pytest.raises(PromotionRefusedError, match=NO_GATES_CHECK):
        promote(store.client, MODEL, ungated.version)
    forced = promote(store.client, MODEL, ungated.version, force=True, reason="legacy model", actor="dana")
    assert forced.forced and store.aliases()["production"] == ungated.version
    assert store.tags(ungated.version)["edgefleet.promotion.failed_checks"] == NO_GATES_CHECK

"""``registry.promotion`` called directly with an ``MlflowClient`` on a real SQLite store (no CLI).

The margin arithmetic is listed as data rows; the store-backed tests cover what the CLI tests do not:
non-production targets, versions registered without gate tags, and the review being read-only.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest

from ml.gates import GateResult
from registry.errors import PromotionRefusedError, RegistryError
from registry.promotion import (
    MARGIN_ACCURACY_CHECK,
    MARGIN_P99_CHECK,
    NO_GATES_CHECK,
    Margins,
    gate_results,
    margin_results,
    promote,
    review_promotion,
    rollback,
)
from registry.store import register_variant, use_tracking_uri

from .conftest import LINEAGE, MODEL, Store, metrics_for, tiny_onnx


def by_name(rows: tuple[GateResult, ...]) -> dict[str, GateResult]:
    return {row.gate: row for row in rows}


NOISE_FREE = Margins(p99_floor_ms=0.0)
# id, candidate accuracy, candidate p99, production p99, margins, accuracy check passes, p99 check passes.
# Production accuracy is 0.97; None leaves the metric out of the candidate.
MARGIN_CASES = [
    ("equal", 0.97, 1.0, 1.0, Margins(), True, True),
    ("within-accuracy", 0.966, 1.0, 1.0, Margins(), True, True),
    ("beyond-accuracy", 0.964, 1.0, 1.0, Margins(), False, True),
    ("within-p99", 0.97, 1.19, 1.0, Margins(), True, True),
    ("beyond-p99", 0.97, 1.21, 1.0, Margins(), True, False),
    # 0.05 → 0.09 ms is +80 %, but only 40 µs: under the floor, so timer noise does not refuse it.
    ("floor-absorbs-noise", 0.97, 0.09, 0.05, Margins(), True, True),
    ("no-floor", 0.97, 0.09, 0.05, NOISE_FREE, True, False),
    ("missing-accuracy-fails", None, 1.0, 1.0, Margins(), False, True),
    ("missing-p99-fails", 0.97, None, 1.0, Margins(), True, False),
    ("nan-fails", math.nan, 1.0, 1.0, Margins(), False, True),
]


@pytest.mark.parametrize(
    ("accuracy", "p99", "production_p99", "margins", "accuracy_ok", "p99_ok"),
    [pytest.param(*case[1:], id=case[0]) for case in MARGIN_CASES],
)
def test_margin_results(
    accuracy: float | None,
    p99: float | None,
    production_p99: float,
    margins: Margins,
    accuracy_ok: bool,
    p99_ok: bool,
) -> None:
    candidate = {k: v for k, v in (("accuracy", accuracy), ("p99_ms", p99)) if v is not None}
    rows = by_name(margin_results(candidate, {"accuracy": 0.97, "p99_ms": production_p99}, margins))
    assert rows[MARGIN_ACCURACY_CHECK].passed is accuracy_ok
    assert rows[MARGIN_P99_CHECK].passed is p99_ok


@pytest.mark.parametrize("bad", [{"accuracy": -0.1}, {"p99": math.nan}, {"p99_floor_ms": math.inf}])
def test_margins_refuse_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(RegistryError, match="margin"):
        Margins(**bad)


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

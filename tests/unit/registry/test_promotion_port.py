"""Promotion and rollback (``registry.promotion``) on the in-memory registry port: the alias moves, the
audit trail and the refusals, without MLflow (the MLflow adapter is covered in tests/integration/registry)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from registry.errors import ModelNotFoundError, PromotionRefusedError, RegistryError
from registry.memory import InMemoryRegistry
from registry.policy import ARTIFACT_SHA_CHECK, history_events
from registry.port import RegistryPort
from registry.promotion import promote, review_promotion, rollback

MODEL = "edgefleet-unit-cpu-int8-small"
GATES = {"min_accuracy": 0.95, "max_accuracy_drop_vs_teacher": 0.03, "max_p99_ms": 1.0, "max_size_kb": 100.0}


def add(
    registry: InMemoryRegistry, accuracy: float, *, model: bytes | None = None, sha: str | None = None
) -> str:
    data = model if model is not None else f"onnx-{accuracy}-{len(registry.tags.get(MODEL, {}))}".encode()
    metrics = {"accuracy": accuracy, "teacher_accuracy": 0.975, "accuracy_drop_vs_teacher": 0.975 - accuracy,
               "p99_ms": 0.5, "size_kb": 1.0}  # fmt: skip
    tags = {
        "edgefleet.profile": "cpu-int8-small",
        "edgefleet.sha256": sha or hashlib.sha256(data).hexdigest(),
        **{f"edgefleet.metric.{k}": str(v) for k, v in metrics.items()},
        **{f"edgefleet.gate.{k}": str(v) for k, v in GATES.items()},
    }
    return registry.add_version(MODEL, tags, data)


@pytest.fixture
def registry() -> InMemoryRegistry:
    fake = InMemoryRegistry()
    add(fake, 0.970)  # 1
    add(fake, 0.972)  # 2
    add(fake, 0.930)  # 3: fails min_accuracy
    return fake


def test_the_fake_is_a_registry_port_and_promotion_on_it_never_loads_mlflow(
    registry: InMemoryRegistry,
) -> None:
    assert isinstance(registry, RegistryPort)
    probe = (
        "import sys; import registry.promotion, registry.memory, registry.policy; "
        "assert 'mlflow' not in sys.modules, 'the policy and the port must not import MLflow'"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_promote_moves_the_alias_keeps_previous_and_audits(registry: InMemoryRegistry) -> None:
    first = promote(registry, MODEL, "1", actor="ci")
    assert first.changed and first.replaced_version is None and not first.forced
    second = promote(registry, MODEL, "2", actor="ci", reason="better")
    assert second.replaced_version == "1"
    assert registry.aliases(MODEL) == {"production": "2", "previous": "1"}
    promoted = registry.version(MODEL, "2")
    assert promoted.tags["edgefleet.promotion.from_version"] == "1"
    assert promoted.tags["edgefleet.promotion.reason"] == "better"
    assert promoted.tags["edgefleet.promotion.forced"] == "false"
    assert registry.version(MODEL, "1").tags["edgefleet.promotion.superseded_by"] == "2"
    assert [e["event"] for e in history_events(registry.version(MODEL, "1"))] == ["promotion", "superseded"]
    again = promote(registry, MODEL, "2", actor="ci")
    assert not again.changed and registry.aliases(MODEL)["production"] == "2"


def test_a_refusal_carries_the_review_and_changes_nothing(registry: InMemoryRegistry) -> None:
    promote(registry, MODEL, "1", actor="ci")
    before = {n: dict(t) for n, t in registry.tags[MODEL].items()}
    with pytest.raises(PromotionRefusedError) as refused:
        promote(registry, MODEL, "3", actor="ci")
    review = refused.value.review
    assert review is not None and review.version == "3" and review.current_version == "1"
    assert "min_accuracy" in review.failures and "accuracy_drop_vs_production" in review.failures
    assert registry.aliases(MODEL) == {"production": "1"}
    assert registry.tags[MODEL] == before
    forced = promote(registry, MODEL, "3", force=True, reason="known regression", actor="dana")
    assert forced.forced
    assert registry.version(MODEL, "3").tags["edgefleet.promotion.failed_checks"].startswith("min_accuracy")


def test_a_stored_file_that_changed_is_refused() -> None:
    fake = InMemoryRegistry()
    version = add(fake, 0.97, model=b"bytes as stored", sha="0" * 64)
    assert ARTIFACT_SHA_CHECK in review_promotion(fake, MODEL, version).failures
    missing = InMemoryRegistry()
    number = missing.add_version(MODEL, {"edgefleet.sha256": "0" * 64})
    unreadable = review_promotion(missing, MODEL, number)
    assert ARTIFACT_SHA_CHECK in unreadable.failures and "stores no model.onnx" in unreadable.notes[0]


def test_rollback_restores_previous_and_steps_it_back(registry: InMemoryRegistry) -> None:
    registry.add_version(MODEL, registry.version(MODEL, "2").tags, b"copy")  # 4, same metrics as 2
    registry.tags[MODEL]["4"]["edgefleet.sha256"] = hashlib.sha256(b"copy").hexdigest()
    for version in ("1", "2", "4"):
        promote(registry, MODEL, version, actor="ci")
    registry.set_alias(MODEL, "candidate", "4")
    back = rollback(registry, MODEL, reason="INC-7", actor="ops")
    assert (back.demoted_version, back.restored_version, back.previous_version) == ("4", "2", "1")
    assert back.candidate_withdrawn
    assert registry.aliases(MODEL) == {"production": "2", "previous": "1"}
    assert registry.version(MODEL, "4").tags["edgefleet.rollback.reason"] == "INC-7"
    rollback(registry, MODEL, actor="ops")
    assert registry.aliases(MODEL) == {"production": "1"}
    with pytest.raises(ModelNotFoundError, match="no 'previous' version"):
        rollback(registry, MODEL, actor="ops")


def test_a_registry_that_refuses_writes_gives_a_registry_error(registry: InMemoryRegistry) -> None:
    registry.refuse_writes = True
    with pytest.raises(RegistryError, match=f"cannot move {MODEL}@production to version 1: .*read-only"):
        promote(registry, MODEL, "1", actor="ci")
    with pytest.raises(ModelNotFoundError):
        promote(registry, "no-such-model", "1", actor="ci")

"""The promotion policy (``registry.policy``) without MLflow: margins, gate re-checks, the stored file's
checks, the OTA history row, the ``--force`` rules, and the review a refusal carries."""

from __future__ import annotations

import math

import pytest

from ml.gates import GateResult
from registry.errors import PromotionRefusedError, RegistryError
from registry.ota_history import ROLLOUT_ID_TAG, SERVER_TAG, RolloutRecord
from registry.policy import (
    ARTIFACT_SHA_CHECK,
    ARTIFACT_SIZE_CHECK,
    MARGIN_ACCURACY_CHECK,
    MARGIN_P99_CHECK,
    NO_GATES_CHECK,
    OTA_HISTORY_CHECK,
    Margins,
    StoredFile,
    check_request,
    decide,
    gate_results,
    history_events,
    margin_results,
    next_event_prefix,
    render_review,
    review,
)
from registry.port import VersionRecord

GATES = {"min_accuracy": 0.95, "max_accuracy_drop_vs_teacher": 0.03, "max_p99_ms": 1.0, "max_size_kb": 100.0}
SHA = "ab" * 32


def tags(accuracy: float = 0.97, p99_ms: float = 0.5, *, gates: bool = True) -> dict[str, str]:
    """The tags the register step writes: profile, sha256, metrics and (optionally) the gate limits."""
    metrics = {"accuracy": accuracy, "teacher_accuracy": 0.975, "accuracy_drop_vs_teacher": 0.975 - accuracy}
    metrics |= {"p99_ms": p99_ms, "size_kb": 42.5}
    written = {"edgefleet.profile": "cpu-int8-small", "edgefleet.sha256": SHA}
    written |= {f"edgefleet.metric.{k}": str(v) for k, v in metrics.items()}
    if gates:
        written |= {f"edgefleet.gate.{k}": str(v) for k, v in GATES.items()}
    return written


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


def test_gates_are_rechecked_from_the_tags() -> None:
    assert all(row.passed for row in gate_results(VersionRecord("m", "1", tags(0.97))))
    failed = by_name(gate_results(VersionRecord("m", "2", tags(0.93))))
    assert failed["min_accuracy"].passed is False and failed["max_p99_ms"].passed is True


def test_a_version_without_gate_tags_gets_one_failing_row() -> None:
    rows = gate_results(VersionRecord("m", "1", tags(gates=False)))
    assert [(row.gate, row.passed) for row in rows] == [(NO_GATES_CHECK, False)]


@pytest.mark.parametrize(
    ("stored", "size_ok", "sha_ok"),
    [
        (StoredFile(size=50 * 1024, sha256=SHA), True, True),
        (StoredFile(size=160 * 1024, sha256=SHA), False, True),  # the tags alone would pass
        (StoredFile(size=10, sha256="cd" * 32), True, False),  # swapped behind the registry's back
    ],
)
def test_the_stored_file_is_checked_not_only_its_tags(
    stored: StoredFile, size_ok: bool, sha_ok: bool
) -> None:
    result = review("m", VersionRecord("m", "1", tags()), to="production", current=None, stored=stored,
                    margins=Margins(), rollouts=None)  # fmt: skip
    rows = by_name(result.checks)
    assert rows[ARTIFACT_SIZE_CHECK].passed is size_ok and rows[ARTIFACT_SHA_CHECK].passed is sha_ok


def test_an_unreadable_file_fails_with_a_note() -> None:
    result = review("m", VersionRecord("m", "4", tags()), to="production", current=None,
                    stored=StoredFile(error="disk gone"), margins=Margins(), rollouts=None)  # fmt: skip
    assert result.failures == (ARTIFACT_SHA_CHECK,)
    assert result.notes == ("cannot read model.onnx of m version 4: disk gone",)


def _rolled_out() -> tuple[VersionRecord, list[tuple[str, str]]]:
    asked: list[tuple[str, str]] = []
    return VersionRecord("m", "2", {**tags(), ROLLOUT_ID_TAG: "ro-1", SERVER_TAG: "http://ota:1"}), asked


@pytest.mark.parametrize(
    ("state", "passes"), [("completed", True), ("aborted", False), ("rolled-back", False)]
)
def test_the_ota_history_row_follows_the_rollout_state(state: str, passes: bool) -> None:
    version, asked = _rolled_out()

    def reader(server: str, rollout_id: str) -> RolloutRecord:
        asked.append((server, rollout_id))
        return RolloutRecord(rollout_id, state, "failure rate 0.40 > 0.10" if not passes else None)

    result = review("m", version, to="production", current=None, stored=StoredFile(size=1, sha256=SHA),
                    margins=Margins(), rollouts=reader)  # fmt: skip
    assert by_name(result.checks)[OTA_HISTORY_CHECK].passed is passes
    assert asked == [("http://ota:1", "ro-1")]


def test_the_history_is_a_note_without_a_reader_and_a_failure_when_unreadable() -> None:
    version, _ = _rolled_out()
    unchecked = review("m", version, to="production", current=None, stored=StoredFile(size=1, sha256=SHA),
                       margins=Margins(), rollouts=None)  # fmt: skip
    assert unchecked.passed and "EDGEFLEET_OPERATOR_TOKEN" in unchecked.notes[0]

    def down(server: str, rollout_id: str) -> RolloutRecord:
        raise RegistryError(f"cannot read rollout {rollout_id} from {server}: ConnectError")

    failed = review("m", version, to="production", current=None, stored=StoredFile(size=1, sha256=SHA),
                    margins=Margins(), rollouts=down)  # fmt: skip
    assert failed.failures == (OTA_HISTORY_CHECK,) and "ConnectError" in failed.notes[0]


def test_margins_compare_with_the_holder_but_not_with_itself() -> None:
    candidate = VersionRecord("m", "4", tags(0.96))
    against = review("m", candidate, to="production", current=VersionRecord("m", "2", tags(0.972)),
                     stored=StoredFile(size=1, sha256=SHA), margins=Margins(), rollouts=None)  # fmt: skip
    assert against.current_version == "2" and against.failures == (MARGIN_ACCURACY_CHECK,)
    assert "against production version 2" in render_review(against)
    itself = review("m", candidate, to="production", current=candidate,
                    stored=StoredFile(size=1, sha256=SHA), margins=Margins(), rollouts=None)  # fmt: skip
    assert itself.margins == () and itself.passed


@pytest.mark.parametrize(
    ("to", "force", "reason", "message"),
    [
        ("production", True, None, "--force needs --reason"),
        ("production", True, "   ", "--force needs --reason"),
        ("previous", False, None, "reserved alias"),
        ("candidate", False, None, "reserved alias"),
        ("latest", False, None, "reserved alias"),
        ("staging-previous", False, None, "reserved alias"),
    ],
)
def test_requests_refused_before_any_check(to: str, force: bool, reason: str | None, message: str) -> None:
    with pytest.raises(PromotionRefusedError, match=message) as refused:
        check_request(to, force=force, reason=reason)
    assert refused.value.review is None


def test_check_request_lets_normal_requests_through() -> None:
    check_request("production", force=False, reason=None)
    check_request("staging", force=True, reason="hotfix")


def test_a_refusal_carries_the_review_and_force_overrides_it() -> None:
    failing = review("m", VersionRecord("m", "3", tags(0.93)), to="production", current=None,
                     stored=StoredFile(size=1, sha256=SHA), margins=Margins(), rollouts=None)  # fmt: skip
    with pytest.raises(
        PromotionRefusedError, match="min_accuracy, max_accuracy_drop_vs_teacher failed"
    ) as refused:
        decide(failing, force=False)
    assert refused.value.review is failing
    assert refused.value.review.failures == ("min_accuracy", "max_accuracy_drop_vs_teacher")
    assert render_review(failing) in str(refused.value)
    assert decide(failing, force=True) is True
    passing = review("m", VersionRecord("m", "1", tags()), to="production", current=None,
                     stored=StoredFile(size=1, sha256=SHA), margins=Margins(), rollouts=None)  # fmt: skip
    assert decide(passing, force=False) is False and decide(passing, force=True) is False


def test_history_events_are_numbered_and_appended() -> None:
    version = VersionRecord("m", "1", {
        "edgefleet.history.2.event": "rollback", "edgefleet.history.1.event": "promotion",
        "edgefleet.history.1.actor": "a", "edgefleet.history.x.event": "ignored", "other": "tag",
    })  # fmt: skip
    assert history_events(version) == [
        {"n": "1", "event": "promotion", "actor": "a"},
        {"n": "2", "event": "rollback"},
    ]
    assert next_event_prefix(version) == "edgefleet.history.3."
    assert next_event_prefix(VersionRecord("m", "2", {})) == "edgefleet.history.1."

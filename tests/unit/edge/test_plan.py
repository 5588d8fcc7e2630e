"""The pure planning function (ota.edge.plan): documents in, an UpdatePlan or a typed error out; no I/O."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from tuf.api.metadata import TargetFile

from ota.core.manifest import Assignment, DeltaRef, TargetRef
from ota.core.targets import DeltaTargetCustom, ModelTargetCustom, SelfTestTargetCustom, tuf_fields
from ota.edge.errors import TargetMetadataError, VerificationError
from ota.edge.plan import Limits, Repository, plan_update, selftest_name, targets_to_look_up

OLD, NEW, PATCH, VECTORS = "0" * 64, "1" * 64, "2" * 64, "3" * 64
MODEL = ModelTargetCustom(model="m", version="2", profile="p", release_id="r2", selftest="m-2-p.selftest.npz")
LIMITS = Limits(max_download_bytes=10_000, max_selftest_bytes=1_000)
REPO = Repository("https://repo.example/tuf/targets/", consistent_snapshot=True)


def _info(length: int, sha: str, custom: Any) -> TargetFile:
    fields = tuf_fields(custom) if hasattr(custom, "to_dict") else {"custom": custom}
    return TargetFile(length, {"sha256": sha}, "ignored", fields)


def _assignment(**changes: Any) -> Assignment:
    base = Assignment(
        device_id="dev-1",
        hardware_profile="p",
        counter=7,
        expires="2099-01-01T00:00:00Z",
        poll_interval=60,
        poll_jitter=0,
        target=TargetRef(name="m-2-p.onnx", length=900, sha256=NEW),
        delta=DeltaRef(name="m-1-to-2.patch", length=50, sha256=PATCH, base_sha256=OLD, result_sha256=NEW),
        release_id="r2",
    )
    return replace(base, **changes)


def _targets(**changes: Any) -> dict[str, Any]:
    targets: dict[str, Any] = {
        "m-2-p.onnx": _info(900, NEW, MODEL),
        "m-1-to-2.patch": _info(
            50,
            PATCH,
            DeltaTargetCustom(
                model="m",
                profile="p",
                base_sha256=OLD,
                result_sha256=NEW,
                base_release_id="r1",
                release_id="r2",
            ),
        ),
        "m-2-p.selftest.npz": _info(
            100, VECTORS, SelfTestTargetCustom(model="m", version="2", profile="p", release_id="r2")
        ),
    }
    targets.update(changes)
    return targets


def _plan(assignment: Assignment | None = None, current: str | None = OLD, **targets: Any):  # type: ignore[no-untyped-def]
    return plan_update(
        assignment or _assignment(),
        current_sha256=current,
        targets=_targets(**targets),
        repository=REPO,
        limits=LIMITS,
    )


def test_a_delta_update_with_self_test_vectors() -> None:
    assert targets_to_look_up(_assignment(), OLD) == ["m-2-p.onnx", "m-1-to-2.patch"]
    assert selftest_name(_targets()["m-2-p.onnx"], "m-2-p.onnx") == "m-2-p.selftest.npz"
    plan = _plan()
    assert plan.version == "2" and plan.assignment_counter == 7 and plan.release_id == "r2"
    assert plan.target.url == f"https://repo.example/tuf/targets/{NEW}.m-2-p.onnx"
    assert plan.delta is not None and plan.delta.sha256 == PATCH and plan.delta_base_sha256 == OLD
    assert plan.selftest is not None and plan.selftest.url.endswith(f"/{VECTORS}.m-2-p.selftest.npz")


def test_the_delta_is_skipped_when_it_does_not_apply_to_the_installed_model() -> None:
    assert targets_to_look_up(_assignment(), "f" * 64) == ["m-2-p.onnx"]
    plan = _plan(current="f" * 64)
    assert plan.delta is None and plan.delta_base_sha256 is None


def test_without_consistent_snapshots_the_url_is_the_name() -> None:
    plan = plan_update(
        _assignment(delta=None),
        current_sha256=None,
        targets=_targets(),
        repository=Repository("http://r/t", consistent_snapshot=False),
        limits=LIMITS,
    )
    assert plan.target.url == "http://r/t/m-2-p.onnx"


REFUSALS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("length-disagrees", {"m-2-p.onnx": _info(901, NEW, MODEL)}, VerificationError, "disagree"),
    ("hash-disagrees", {"m-2-p.onnx": _info(900, OLD, MODEL)}, VerificationError, "disagree"),
    ("no-custom", {"m-2-p.onnx": _info(900, NEW, None)}, TargetMetadataError, "JSON object"),
    (
        "phantom-field",
        {"m-2-p.onnx": _info(900, NEW, {**MODEL.to_dict(), "latency_budget_ms": 5})},
        TargetMetadataError,
        "unknown field",
    ),
    (
        "nested-custom",
        {"m-2-p.onnx": _info(900, NEW, {"custom": MODEL.to_dict()})},
        TargetMetadataError,
        "unknown field",
    ),
    (
        "delta-base-differs",
        {
            "m-1-to-2.patch": _info(
                50,
                PATCH,
                DeltaTargetCustom(
                    model="m",
                    profile="p",
                    base_sha256="e" * 64,
                    result_sha256=NEW,
                    base_release_id="r1",
                    release_id="r2",
                ),
            )
        },
        TargetMetadataError,
        "differ",
    ),
    ("delta-is-a-model", {"m-1-to-2.patch": _info(50, PATCH, MODEL)}, TargetMetadataError, "unknown field"),
    (
        "vectors-too-large",
        {"m-2-p.selftest.npz": _info(1_001, VECTORS, SelfTestTargetCustom("m", "2", "p", "r2"))},
        VerificationError,
        "too large",
    ),
    (
        "vectors-kind",
        {"m-2-p.selftest.npz": _info(100, VECTORS, MODEL)},
        TargetMetadataError,
        "unknown field",
    ),
    (
        "vectors-traversal",
        {"m-2-p.onnx": _info(900, NEW, replace(MODEL, selftest="../../etc/passwd"))},
        VerificationError,
        "traversal",
    ),
]


@pytest.mark.parametrize(("row", "targets", "error", "fragment"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_are_typed(row: str, targets: dict[str, Any], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment) as caught:
        _plan(**targets)
    assert isinstance(caught.value, VerificationError) and caught.value.attack


def test_a_missing_target_and_an_oversized_model_are_refused() -> None:
    with pytest.raises(VerificationError, match="no target"):
        plan_update(_assignment(), current_sha256=OLD, targets={}, repository=REPO, limits=LIMITS)
    big = _assignment(target=TargetRef(name="m-2-p.onnx", length=20_000, sha256=NEW), delta=None)
    with pytest.raises(VerificationError, match="max_download_bytes"):
        _plan(big, **{"m-2-p.onnx": _info(20_000, NEW, MODEL)})


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs", "a//b", "a\\b", "a/./b", "new\nline", ""])
def test_path_traversal_names_are_refused(name: str) -> None:
    assignment = _assignment(target=TargetRef(name=name or "x", length=900, sha256=NEW), delta=None)
    if not name:
        assignment = replace(assignment, target=replace(assignment.target, name=""))  # type: ignore[arg-type]
    with pytest.raises(VerificationError, match="traversal"):
        targets_to_look_up(assignment, OLD)


def test_an_assignment_without_target_cannot_be_planned() -> None:
    with pytest.raises(VerificationError, match="no target"):
        targets_to_look_up(_assignment(target=None, delta=None), OLD)

"""The TUF target custom documents (ota.core.targets): round trips and strict refusals."""

from __future__ import annotations

from typing import Any

import pytest

from ota.core.errors import DocumentFormatError
from ota.core.targets import DeltaTargetCustom, ModelTargetCustom, SelfTestTargetCustom, tuf_fields

SHA_A, SHA_B = "a" * 64, "b" * 64

DOCUMENTS: list[Any] = [
    ModelTargetCustom(model="digits", version="3", profile="cpu", release_id="rel-1"),
    ModelTargetCustom(
        model="digits",
        version="3",
        profile="cpu",
        release_id="rel-1",
        source_uri="models:/digits/3",
        mlflow_run_id="run-abc",
        data_fingerprint="fp-1",
        selftest="digits-3-cpu.selftest.npz",
    ),
    SelfTestTargetCustom(model="digits", version="3", profile="cpu", release_id="rel-1"),
    DeltaTargetCustom(
        model="digits",
        profile="cpu",
        base_sha256=SHA_A,
        result_sha256=SHA_B,
        base_release_id="r0",
        release_id="r1",
    ),
]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: type(d).__name__)
def test_round_trip(document: Any) -> None:
    assert type(document).from_dict(document.to_dict()) == document
    assert tuf_fields(document) == {"custom": document.to_dict()}


def test_model_optional_fields_are_written_as_null_or_left_out_and_read_back_either_way() -> None:
    written = DOCUMENTS[0].to_dict()
    assert "selftest" not in written and written["source_uri"] is None
    assert ModelTargetCustom.from_dict({**written, "selftest": None}) == DOCUMENTS[0]
    trimmed = {k: v for k, v in written.items() if v is not None}
    assert ModelTargetCustom.from_dict(trimmed) == DOCUMENTS[0]


def _model() -> dict[str, Any]:
    return dict(DOCUMENTS[1].to_dict())


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.update(latency_budget_ms=50), "unknown field"),
        (lambda d: d.update(custom={"selftest": "x"}), "unknown field"),  # the old one-level-down nesting
        (lambda d: d.pop("version"), "missing field"),
        (lambda d: d.update(version=3), "version"),
        (lambda d: d.update(kind="delta"), "kind"),
        (lambda d: d.update(selftest=["x"]), "selftest"),
        (lambda d: d.update(model="../etc"), "model"),
        (lambda d: d.update(source_uri=""), "source_uri"),
    ],
    ids=["unknown", "nested", "missing", "mistyped", "wrong-kind", "selftest-list", "bad-name", "empty-uri"],
)
def test_model_refusals(change: Any, fragment: str) -> None:
    document = _model()
    change(document)
    with pytest.raises(DocumentFormatError, match=fragment):
        ModelTargetCustom.from_dict(document)


@pytest.mark.parametrize("raw", [None, [], "model", 3])
def test_non_objects_are_refused(raw: Any) -> None:
    for kind in (ModelTargetCustom, SelfTestTargetCustom, DeltaTargetCustom):
        with pytest.raises(DocumentFormatError, match="JSON object"):
            kind.from_dict(raw)


def test_delta_refusals() -> None:
    good = DOCUMENTS[3].to_dict()
    for key, value, fragment in [
        ("base_sha256", "A" * 64, "base_sha256"),
        ("result_sha256", None, "result_sha256"),
        ("kind", "model", "kind"),
    ]:
        with pytest.raises(DocumentFormatError, match=fragment):
            DeltaTargetCustom.from_dict({**good, key: value})
    with pytest.raises(DocumentFormatError, match="missing"):
        DeltaTargetCustom.from_dict({k: v for k, v in good.items() if k != "base_release_id"})


def test_selftest_refuses_a_model_document() -> None:
    with pytest.raises(DocumentFormatError, match="unknown field"):
        SelfTestTargetCustom.from_dict(DOCUMENTS[1].to_dict())

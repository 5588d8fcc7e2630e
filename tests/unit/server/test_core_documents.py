"""ota.core.manifest and ota.core.signing: round trips, strict parsing, signature and replay checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ota.core.errors import (
    DocumentFormatError,
    ExpiredDocumentError,
    IdentityMismatchError,
    ReplayError,
    SignatureError,
)
from ota.core.manifest import (
    Assignment,
    DeltaRef,
    EnrolmentRequest,
    ReportStatus,
    StatusReport,
    TargetRef,
    check_report_counter,
    format_time,
    sign_assignment,
    sign_status_report,
    verify_assignment,
    verify_signed_request,
)
from ota.core.signing import (
    canonical_json,
    generate_ed25519_signer,
    key_from_dict,
    key_to_dict,
    load_private_key_file,
    save_private_key,
    sign_document,
    verify_document,
)

DIRECTOR = generate_ed25519_signer()
OTHER = generate_ed25519_signer()
FUTURE = format_time(datetime.now(UTC) + timedelta(hours=1))


def assignment(**changes: Any) -> Assignment:
    values: dict[str, Any] = {
        "device_id": "dev-1",
        "hardware_profile": "cpu-generic",
        "counter": 5,
        "expires": FUTURE,
        "poll_interval": 60,
        "poll_jitter": 5,
        "target": TargetRef("m-1.onnx", 10, "a" * 64),
        "delta": DeltaRef("p.patch", 3, "b" * 64, "c" * 64, "a" * 64),
        "release_id": "rel-1",
        "rollout_id": "ro-1",
    }
    values.update(changes)
    return Assignment(**values)


def test_assignment_round_trip_and_verification() -> None:
    envelope = sign_assignment(assignment(), DIRECTOR)
    parsed = verify_assignment(
        envelope, DIRECTOR.public_key, device_id="dev-1", hardware_profile="cpu-generic"
    )
    assert parsed == assignment()
    assert verify_assignment(canonical_json(envelope), DIRECTOR.public_key, device_id="dev-1") == assignment()


# (what is wrong, how the envelope or the check is altered, expected error)
ASSIGNMENT_ATTACKS: list[tuple[str, dict[str, Any], dict[str, Any], type[Exception]]] = [
    ("other device", {"device_id": "dev-2"}, {}, IdentityMismatchError),
    ("other profile", {"hardware_profile": "arm64"}, {}, IdentityMismatchError),
    ("counter went back", {"counter": 4}, {"last_counter": 5}, ReplayError),
    ("older release without rollback flag", {"release_seq": 7}, {"installed_release_seq": 8}, ReplayError),
    ("expired", {"expires": "2001-01-01T00:00:00Z"}, {}, ExpiredDocumentError),
    (
        "delta for another result",
        {"delta": DeltaRef("p", 3, "b" * 64, "c" * 64, "d" * 64)},
        {},
        DocumentFormatError,
    ),
]


@pytest.mark.parametrize(
    ("name", "changes", "check", "error"), ASSIGNMENT_ATTACKS, ids=[a[0] for a in ASSIGNMENT_ATTACKS]
)
def test_assignment_refusals(name: str, changes: dict, check: dict, error: type[Exception]) -> None:
    envelope = sign_assignment(assignment(**changes), DIRECTOR)
    with pytest.raises(error):
        verify_assignment(
            envelope, DIRECTOR.public_key, device_id="dev-1", hardware_profile="cpu-generic", **check
        )


def test_assignment_signed_by_another_key_or_tampered_is_refused() -> None:
    with pytest.raises(SignatureError):
        verify_assignment(sign_assignment(assignment(), OTHER), DIRECTOR.public_key, device_id="dev-1")
    envelope = sign_assignment(assignment(), DIRECTOR)
    envelope["signed"]["target"]["sha256"] = "f" * 64
    with pytest.raises(SignatureError):
        verify_assignment(envelope, DIRECTOR.public_key, device_id="dev-1")


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"signed": 1, "signatures": []}', b'{"signed": {}, "signatures": [{"keyid": 1}]}'],
)
def test_malformed_envelopes(raw: bytes) -> None:
    with pytest.raises(DocumentFormatError):
        verify_document(raw, [DIRECTOR.public_key])


def test_threshold_counts_each_key_once() -> None:
    body = {"x": 1}
    twice = sign_document(body, [DIRECTOR, DIRECTOR])
    with pytest.raises(SignatureError):
        verify_document(twice, [DIRECTOR.public_key, OTHER.public_key], threshold=2)
    both = sign_document(body, [DIRECTOR, OTHER])
    assert verify_document(both, [DIRECTOR.public_key, OTHER.public_key], threshold=2) == body


def test_status_report_round_trip_and_counter() -> None:
    device = generate_ed25519_signer()
    report = StatusReport("dev-1", 3, ReportStatus.COMMITTED, FUTURE, details={"latency_ms": 1.5, "ok": True})
    parsed = verify_signed_request(sign_status_report(report, device), device.public_key, StatusReport)
    assert parsed == report
    check_report_counter(parsed, 2)
    for last in (3, 4):
        with pytest.raises(ReplayError):
            check_report_counter(parsed, last)


@pytest.mark.parametrize(
    "changes",
    [
        {"counter": 0},
        {"counter": True},
        {"status": "exploded"},
        {"timestamp": "yesterday"},
        {"details": {"k": [1, 2]}},
        {"device_id": "../etc"},
        {"extra": 1},
        {"_type": "assignment"},
    ],
)
def test_status_report_rejects_bad_fields(changes: dict[str, Any]) -> None:
    raw = StatusReport("dev-1", 1, ReportStatus.DOWNLOADING, FUTURE).to_dict() | changes
    with pytest.raises(DocumentFormatError):
        StatusReport.from_dict(raw)


def test_enrolment_request_validates_key() -> None:
    device = generate_ed25519_signer()
    request = EnrolmentRequest(
        "dev-1", "efp_x", key_to_dict(device.public_key), "cpu-generic", tags=("b", "a")
    )
    assert EnrolmentRequest.from_dict(request.to_dict()).tags == ("a", "b")
    bad = request.to_dict()
    bad["public_key"]["keyval"]["public"] = "zz"
    with pytest.raises(DocumentFormatError):
        EnrolmentRequest.from_dict(bad)


def test_key_from_dict_recomputes_keyid() -> None:
    raw = key_to_dict(DIRECTOR.public_key) | {"keyid": "0" * 64}
    assert key_from_dict(raw).keyid != "0" * 64


def test_private_key_file_round_trip(tmp_path: Any) -> None:
    signer = generate_ed25519_signer()
    path = tmp_path / "k.pem"
    uri = save_private_key(signer, path)
    assert uri.startswith("file2:")
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_private_key_file(path)
    envelope = sign_document({"a": 1}, [loaded])
    assert verify_document(envelope, [key_from_dict(key_to_dict(signer.public_key))]) == {"a": 1}


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_canonical_json_is_stable_under_reordering(value: Any) -> None:
    import json

    encoded = canonical_json(value)
    assert canonical_json(json.loads(encoded)) == encoded


@pytest.mark.parametrize(
    ("release_seq", "rollback", "installed"),
    [(7, True, 8), (8, False, 8), (9, False, 8), (None, False, 8), (7, False, None)],
)
def test_release_order_accepts_rollbacks_newer_and_unknown(
    release_seq: int | None, rollback: bool, installed: int | None
) -> None:
    expected = assignment(release_seq=release_seq, rollback=rollback)
    envelope = sign_assignment(expected, DIRECTOR)
    parsed = verify_assignment(
        envelope, DIRECTOR.public_key, device_id="dev-1", installed_release_seq=installed
    )
    assert parsed == expected


def test_rollback_fields_are_signed_and_typed() -> None:
    plain = assignment().to_dict()
    assert "release_seq" not in plain and "rollback" not in plain  # old answers keep their bytes
    envelope = sign_assignment(assignment(release_seq=7, rollback=True), DIRECTOR)
    envelope["signed"]["rollback"] = False
    with pytest.raises(SignatureError):
        verify_assignment(envelope, DIRECTOR.public_key, device_id="dev-1")
    for bad in ({"rollback": "yes"}, {"release_seq": -1}, {"release_seq": True}):
        with pytest.raises(DocumentFormatError):
            Assignment.from_dict({**assignment(release_seq=7).to_dict(), **bad})

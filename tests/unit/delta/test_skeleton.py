"""Unit tests of how ``ota.core.delta.make`` plans changed protobuf skeleton between tensors.

A metadata-only release (new doc string, new metadata_props) changes a few bytes of the skeleton: the plan
must copy the unchanged prefix and suffix of each changed gap from the base and send only the new bytes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ota.core.delta import apply_delta, make_delta
from ota.core.delta.make import _common_prefix, _Copy, _Literal, _plan_model
from ota.core.delta.onnx_layout import parse_onnx_layout


def _plan(old: bytes, new: bytes) -> list[object]:
    return list(_plan_model(new, old, parse_onnx_layout(new).tensors, parse_onnx_layout(old).tensors))


def _literal_bytes(ops: list[object]) -> bytes:
    return b"".join(op.data for op in ops if isinstance(op, _Literal))


def test_metadata_insertions_become_literals_of_only_the_new_bytes(
    onnx_model: Callable[..., bytes], tensors: Callable[..., dict[str, np.ndarray]]
) -> None:
    old = onnx_model(tensors(0))
    new = onnx_model(tensors(0), doc="release notes for 2.0", props={"release": "2.0", "owner": "team"})
    ops = _plan(old, new)
    # The literals carry the added bytes plus the one replaced byte (the empty doc string's length, 0,
    # becomes 21); everything else is copied from the base.
    assert len(_literal_bytes(ops)) == len(new) - len(old) + 1
    assert b"release notes for 2.0" in _literal_bytes(ops)
    assert sum(op.length for op in ops if isinstance(op, _Copy)) == len(old) - 1


def test_same_length_doc_edit_sends_only_the_changed_span(
    onnx_model: Callable[..., bytes], tensors: Callable[..., dict[str, np.ndarray]]
) -> None:
    old = onnx_model(tensors(0), doc="model build 0001 of the nightly line")
    new = onnx_model(tensors(0), doc="model build 0002 of the nightly line")
    ops = _plan(old, new)
    assert _literal_bytes(ops) == b"2"


def test_metadata_patch_costs_header_plus_new_bytes(
    tmp_path: Path, onnx_model: Callable[..., bytes], tensors: Callable[..., dict[str, np.ndarray]]
) -> None:
    old_path, new_path, patch, out = (tmp_path / name for name in ("old", "new", "patch", "out"))
    old_path.write_bytes(onnx_model(tensors(0)))
    added = "EdgeFleet nightly: same weights, new release notes."
    new_path.write_bytes(onnx_model(tensors(0), doc=added))
    header = make_delta(old_path, new_path, patch)
    apply_delta(old_path, patch, out)
    assert out.read_bytes() == new_path.read_bytes()
    # Header, a handful of control bytes and at most the added bytes (plus their protobuf tag and length).
    assert header.patch_length <= header.header_length + 16 + len(added) + 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(left=st.binary(max_size=9000), right=st.binary(max_size=9000))
def test_common_prefix_matches_the_naive_definition(left: bytes, right: bytes) -> None:
    limit = min(len(left), len(right))
    expected = next((i for i in range(limit) if left[i] != right[i]), limit)
    assert _common_prefix(left, right, limit) == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc_old=st.text(max_size=300), doc_new=st.text(max_size=300), seed=st.integers(0, 3))
def test_any_doc_edit_roundtrips(
    onnx_model: Callable[..., bytes],
    tensors: Callable[..., dict[str, np.ndarray]],
    doc_old: str,
    doc_new: str,
    seed: int,
) -> None:
    old = onnx_model(tensors(seed), doc=doc_old)
    new = onnx_model(tensors(seed), doc=doc_new, props={"k": doc_new[:20]})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "old").write_bytes(old)
        (folder / "new").write_bytes(new)
        make_delta(folder / "old", folder / "new", folder / "patch")
        apply_delta(folder / "old", folder / "patch", folder / "out")
        assert (folder / "out").read_bytes() == new

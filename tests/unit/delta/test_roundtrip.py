"""Round-trips: apply_delta(old, make_delta(old, new)) == new, for arbitrary bytes and edited ONNX models."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ota.core.delta import apply_delta, compress_full, make_delta, read_header

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _roundtrip(base: bytes | None, new: bytes) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base_path = None
        if base is not None:
            base_path = folder / "base"
            base_path.write_bytes(base)
        new_path, patch, out = folder / "new", folder / "patch", folder / "out"
        new_path.write_bytes(new)
        header = make_delta(base_path, new_path, patch)
        assert read_header(patch) == header
        apply_delta(base_path, patch, out)
        assert out.read_bytes() == new
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["patch", "out", "new"] + (["base"] if base_path else [])
        )
        return patch.stat().st_size, header.codec


@FAST
@given(base=st.binary(max_size=4096), new=st.binary(max_size=4096))
def test_arbitrary_bytes_roundtrip(base: bytes, new: bytes) -> None:
    _roundtrip(base, new)


@FAST
@given(new=st.binary(max_size=4096))
def test_arbitrary_bytes_full_roundtrip(new: bytes) -> None:
    _roundtrip(None, new)


@FAST
@given(base=st.binary(min_size=1, max_size=4096), data=st.data())
def test_edited_bytes_roundtrip(base: bytes, data: st.DataObject) -> None:
    # Edits of a base: the case generic diffs exist for, including inserts that shift everything after them.
    new = bytearray(base)
    for _ in range(data.draw(st.integers(0, 5))):
        position = data.draw(st.integers(0, len(new)))
        kind = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = data.draw(st.binary(min_size=1, max_size=64))
        if kind == "insert":
            new[position:position] = chunk
        elif kind == "delete":
            del new[position : position + len(chunk)]
        else:
            new[position : position + len(chunk)] = chunk
    size, _ = _roundtrip(base, bytes(new))
    if new == base:
        assert size < 200


EDITS = st.lists(
    st.tuples(
        st.sampled_from(
            ["conv.weight", "fc.weight", "fc.bias", "q.weight", "q.bias", "half", "shape", "new"]
        ),
        st.sampled_from(["noise", "scale", "nonfinite", "replace", "reshape", "drop", "retype"]),
        st.floats(1e-7, 1.0),
    ),
    max_size=4,
)


@settings(max_examples=15, deadline=None)
@given(edits=EDITS, seed=st.integers(0, 2**16), doc=st.text(max_size=40))
def test_onnx_models_with_random_tensor_edits_roundtrip(
    onnx_model: Callable[..., bytes],
    tensors: Callable[..., dict[str, np.ndarray]],
    edits: list[tuple[str, str, float]],
    seed: int,
    doc: str,
) -> None:
    rng = np.random.default_rng(seed)
    base = tensors(0)
    new = dict(base)
    for name, kind, scale in edits:
        array = new.get(name, np.zeros(64, np.float32))
        if kind == "noise" and array.dtype.kind == "f":
            array = (array + rng.standard_normal(array.shape) * scale).astype(array.dtype)
        elif kind == "noise":
            array = (array + rng.integers(-2, 3, array.shape)).astype(array.dtype)
        elif kind == "scale" and array.dtype.kind == "f" and array.ndim >= 2:
            # What a BatchNorm-folded fine-tune does: whole output channels move by a common factor.
            factors = (1 + rng.standard_normal((array.shape[0],) + (1,) * (array.ndim - 1)) * scale).astype(
                array.dtype
            )
            array = (array * factors).astype(array.dtype)
        elif kind == "nonfinite" and array.dtype.kind == "f":
            array = array.copy()
            flat = array.reshape(-1)
            flat[rng.integers(0, flat.size, 3)] = [np.nan, np.inf, -np.inf]
        elif kind == "replace":
            array = rng.standard_normal(array.shape).astype(array.dtype)
        elif kind == "reshape":
            array = array.reshape(-1)[: max(1, array.size // 2)].copy()
        elif kind == "retype":
            array = array.astype(np.float64 if array.dtype != np.float64 else np.float32)
        if kind == "drop":
            new.pop(name, None)
        else:
            new[name] = array
    old_bytes = onnx_model(base)
    new_bytes = onnx_model(new, doc=doc)
    _roundtrip(old_bytes, new_bytes)
    full_size, _ = _roundtrip(None, new_bytes)
    assert full_size <= len(zstandard.ZstdCompressor(level=19).compress(new_bytes)) + 200


def test_finetuned_model_beats_plain_zstd_and_is_model_aware(model_pair: tuple[Path, Path]) -> None:
    old, new = model_pair
    size, codec = _roundtrip(old.read_bytes(), new.read_bytes())
    assert codec == "model-aware"
    patch_from = zstandard.ZstdCompressor(
        level=19,
        dict_data=zstandard.ZstdCompressionDict(old.read_bytes(), dict_type=zstandard.DICT_TYPE_RAWCONTENT),
    ).compress(new.read_bytes())
    # Every float moved by ~1e-4: generic diffs stay near the file size, the byte planes do not.
    assert size < 0.8 * len(patch_from)


def test_metadata_only_change_is_tiny(
    onnx_model: Callable[..., bytes], tensors: Callable[..., dict[str, np.ndarray]]
) -> None:
    old = onnx_model(tensors(0))
    new = onnx_model(
        tensors(0), doc="EdgeFleet release 2026.11.28: same weights, new notes.", props={"release": "2"}
    )
    size, _ = _roundtrip(old, new)
    # Two digests (64 B), a packed header, four operations and the new text, coded by the literal model.
    assert size < 150
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "old").write_bytes(old)
        (folder / "new").write_bytes(new)
        header = make_delta(folder / "old", folder / "new", folder / "patch")
    assert header.literal_method == "model"


def test_unchanged_file_costs_only_the_header(model_pair: tuple[Path, Path]) -> None:
    old, _ = model_pair
    size, _ = _roundtrip(old.read_bytes(), old.read_bytes())
    assert size < 100


def test_compress_full_beats_zstd_on_models(tmp_path: Path, model_pair: tuple[Path, Path]) -> None:
    _, new = model_pair
    header = compress_full(new, tmp_path / "full")
    assert header.base_sha256 is None and header.codec == "model-aware"
    apply_delta(None, tmp_path / "full", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new.read_bytes()
    assert header.patch_length < len(zstandard.ZstdCompressor(level=19).compress(new.read_bytes()))


def test_apply_replaces_existing_output_atomically(tmp_path: Path, model_pair: tuple[Path, Path]) -> None:
    old, new = model_pair
    make_delta(old, new, tmp_path / "p")
    out = tmp_path / "out"
    out.write_bytes(b"previous content")
    apply_delta(old, tmp_path / "p", out)
    assert out.read_bytes() == new.read_bytes()
    assert not list(tmp_path.glob(".out.*"))


def test_channel_scaled_tensors_with_nonfinite_values_roundtrip(
    onnx_model: Callable[..., bytes], tensors: Callable[..., dict[str, np.ndarray]]
) -> None:
    rng = np.random.default_rng(7)
    base = tensors(0)
    weight = (rng.standard_normal((64, 32, 3, 3)) * 0.05).astype(np.float32)
    weight.reshape(-1)[[0, 100, 2000, 3000, 4000]] = [np.nan, np.inf, -np.inf, 1e-45, -0.0]
    base["bn_folded.weight"] = weight
    new = dict(base)
    factors = (1 + rng.standard_normal((64, 1, 1, 1)) * 0.05).astype(np.float32)
    new["bn_folded.weight"] = (weight * factors + rng.standard_normal(weight.shape) * 1e-6).astype(np.float32)
    old_bytes, new_bytes = onnx_model(base), onnx_model(new)
    size, codec = _roundtrip(old_bytes, new_bytes)
    assert codec == "model-aware"
    xor_only = len(
        zstandard.ZstdCompressor(level=19).compress(
            (base["bn_folded.weight"].view(np.uint32) ^ new["bn_folded.weight"].view(np.uint32)).tobytes()
        )
    )
    # Predicting the per-channel factor leaves far less than the XOR against the base does.
    assert size < 0.8 * xor_only


def test_rows_retrained_in_a_frozen_tensor_cost_about_their_new_values(
    onnx_model: Callable[..., bytes], tensors: Callable[..., dict[str, np.ndarray]]
) -> None:
    # A head-only retrain: a few rows of the classifier get new values, every other weight is bit-identical.
    rng = np.random.default_rng(11)
    base = tensors(0)
    head = (rng.standard_normal((400, 256)) * 0.05).astype(np.float32)
    base["head.weight"] = head
    new = dict(base)
    retrained = head.copy()
    retrained[rng.choice(400, 20, replace=False)] = rng.standard_normal((20, 256)).astype(np.float32)
    new["head.weight"] = retrained
    old_bytes, new_bytes = onnx_model(base), onnx_model(new)
    size, codec = _roundtrip(old_bytes, new_bytes)
    assert codec == "model-aware"
    patch_from = zstandard.ZstdCompressor(
        level=19, dict_data=zstandard.ZstdCompressionDict(old_bytes, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    ).compress(new_bytes)
    assert size < len(patch_from)
    assert size < 20 * 256 * 4  # less than the raw bytes of the changed rows

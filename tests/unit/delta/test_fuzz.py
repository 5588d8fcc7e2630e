"""A time-bounded fuzz pass over apply_delta: mutated and random patches never crash, hang or half-write.

Every outcome must be either a typed ``DeltaError`` with no output file, or success with an output whose
sha256 is the one the (possibly mutated) header promises.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from pathlib import Path

from ota.core.delta import DeltaError, apply_delta, make_delta, read_header

FUZZ_SECONDS = 4.0


def _check_one(base: Path, patch: Path, out: Path) -> str:
    try:
        header = apply_delta(base, patch, out, max_output_bytes=1 << 24)
    except DeltaError:
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}.*"))
        return "refused"
    assert hashlib.sha256(out.read_bytes()).hexdigest().startswith(header.result_sha256)
    out.unlink()
    return "applied"


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        position = rng.randrange(len(buffer)) if buffer else 0
        if kind == 0 and buffer:
            buffer[position] ^= 1 << rng.randrange(8)
        elif kind == 1 and buffer:
            buffer[position] = rng.randrange(256)
        elif kind == 2:
            del buffer[position : position + rng.randint(1, 16)]
        elif kind == 3:
            buffer[position:position] = rng.randbytes(rng.randint(1, 16))
        else:
            buffer = buffer[: rng.randrange(len(buffer) + 1)]
    return bytes(buffer)


def test_fuzz_apply_with_mutated_and_random_patches(
    small_patch: tuple[Path, Path, Path], tmp_path: Path, onnx_model: Callable[..., bytes]
) -> None:
    old, _, patch = small_patch
    # A generic-codec patch too, so both decoders get fuzzed.
    blob_old, blob_new = tmp_path / "blob-old", tmp_path / "blob-new"
    blob_old.write_bytes(random.Random(1).randbytes(3000))
    blob_new.write_bytes(blob_old.read_bytes()[:1000] + b"inserted" + blob_old.read_bytes()[1000:])
    generic = tmp_path / "generic.efd"
    make_delta(blob_old, blob_new, generic)
    # And a metadata-only change, whose literal section is model-coded.
    meta_old, meta_new, meta = tmp_path / "meta-old", tmp_path / "meta-new", tmp_path / "meta.efd"
    meta_old.write_bytes(onnx_model({}))
    meta_new.write_bytes(onnx_model({}, doc="release 7: new notes", props={"owner": "perception"}))
    assert make_delta(meta_old, meta_new, meta).literal_method == "model"
    seeds = [(old, patch.read_bytes()), (blob_old, generic.read_bytes()), (meta_old, meta.read_bytes())]
    header_length = read_header(patch).header_length

    rng = random.Random(20261128)
    outcomes: dict[str, int] = {"refused": 0, "applied": 0}
    candidate, out = tmp_path / "fuzz.efd", tmp_path / "out"
    deadline = time.monotonic() + FUZZ_SECONDS
    rounds = 0
    while time.monotonic() < deadline:
        base, valid = rng.choice(seeds)
        if rng.random() < 0.8:
            data = _mutate(rng, valid)
        else:
            # A valid header followed by random bytes: exercises the body parsers directly.
            data = valid[:header_length] + rng.randbytes(rng.randint(0, 200))
        candidate.write_bytes(data)
        outcomes[_check_one(base, candidate, out)] += 1
        rounds += 1
    assert rounds > 50
    assert outcomes["refused"] > 0

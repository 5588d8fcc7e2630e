"""A served model: one ONNX Runtime session, its tensor signature in protocol terms, and its warm-up.

:func:`load_model` reads the file once, checks its sha256 when the source names one (the agent's next update
may rewrite the other slot at any time), builds the session from those bytes, and warms up *that* session:
the release's self-test vectors when present (each output compared with the expected logits within the
release's tolerance), then zeros at every batch size the batcher may form. Only a model that passed
is returned; anything else raises :class:`~ota.serve.errors.ModelLoadError` with the stage that failed.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ota.core.selftest import SelfTestFormatError, load_vectors
from ota.serve.errors import ModelLoadError

# ONNX Runtime's type strings → (protocol datatype, numpy dtype).
ORT_TO_V2: dict[str, tuple[str, np.dtype[Any]]] = {
    "tensor(float)": ("FP32", np.dtype(np.float32)),
    "tensor(float16)": ("FP16", np.dtype(np.float16)),
    "tensor(double)": ("FP64", np.dtype(np.float64)),
    "tensor(int8)": ("INT8", np.dtype(np.int8)),
    "tensor(uint8)": ("UINT8", np.dtype(np.uint8)),
    "tensor(int16)": ("INT16", np.dtype(np.int16)),
    "tensor(uint16)": ("UINT16", np.dtype(np.uint16)),
    "tensor(int32)": ("INT32", np.dtype(np.int32)),
    "tensor(uint32)": ("UINT32", np.dtype(np.uint32)),
    "tensor(int64)": ("INT64", np.dtype(np.int64)),
    "tensor(uint64)": ("UINT64", np.dtype(np.uint64)),
    "tensor(bool)": ("BOOL", np.dtype(np.bool_)),
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, protocol datatype, numpy dtype and shape (-1 for a free dimension)."""

    name: str
    datatype: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """The protocol's tensor metadata."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelCandidate:
    """A model file a source offers, with what is known about it.

    Attributes:
        key: Identifies this offer; the manager loads a candidate whose key it has not seen.
        path: The ONNX file.
        version: The version clients see (the release version for an agent-committed model).
        sha256: The sha256 the bytes must have, when the source knows it.
        vectors: The release's self-test vectors, when present.
        parameters: Extra facts shown in the model metadata (target name, MLflow version, ...).
    """

    key: str
    path: Path
    version: str
    sha256: str | None = None
    vectors: Path | None = None
    parameters: dict[str, str] = field(default_factory=dict)


class ServedModel:
    """A warmed-up session with its signature; counts the executions running on it.

    Args:
        name: The served name.
        candidate: Where it came from.
        session: The warmed-up session.
        sha256: The sha256 of the bytes it was built from.
        load_s: Seconds spent reading, loading and warming up.
    """

    def __init__(
        self, name: str, candidate: ModelCandidate, session: ort.InferenceSession, sha256: str, load_s: float
    ) -> None:
        self.name = name
        self.version = candidate.version
        self.candidate = candidate
        self.session = session
        self.sha256 = sha256
        self.load_s = load_s
        self.inputs = tuple(_spec(arg) for arg in session.get_inputs())
        self.outputs = tuple(_spec(arg) for arg in session.get_outputs())
        self.output_names = [spec.name for spec in self.outputs]
        # Batchable when every input and output has a free first dimension (Triton's max_batch_size > 0).
        self.batchable = all(spec.shape and spec.shape[0] == -1 for spec in (*self.inputs, *self.outputs))
        self._inflight = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    @property
    def signature(self) -> tuple[TensorSpec, ...]:
        """Inputs then outputs: two models with the same signature accept the same requests."""
        return (*self.inputs, *self.outputs)

    def metadata(self) -> dict[str, Any]:
        """The protocol's model metadata response (plus the facts the service knows about the model)."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
            "parameters": {"sha256": self.sha256, **self.candidate.parameters},
        }

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one execution (called on a worker thread; ONNX Runtime releases the GIL)."""
        return [np.asarray(out) for out in self.session.run(self.output_names, feeds)]

    def enter(self) -> None:
        """Count an execution that starts on this model."""
        with self._lock:
            self._inflight += 1
            self._idle.clear()

    def leave(self) -> None:
        """Count an execution that ended."""
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no execution runs on this model (or the timeout); True when idle."""
        return self._idle.wait(timeout_s)


def _spec(arg: Any) -> TensorSpec:
    try:
        datatype, dtype = ORT_TO_V2[arg.type]
    except KeyError:
        raise ModelLoadError(
            "load", f"tensor {arg.name!r} has type {arg.type}, which is not served"
        ) from None
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (arg.shape or []))
    return TensorSpec(name=arg.name, datatype=datatype, dtype=dtype, shape=shape)


def make_session(
    model: bytes, *, intra_op_threads: int = 0, providers: tuple[str, ...] = ()
) -> ort.InferenceSession:
    """Build a session from model bytes with the given thread count (one inter-op thread).

    Raises:
        Exception: Whatever ONNX Runtime raises for an unloadable model (its error types are not public).
    """
    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model, sess_options=options, providers=list(providers) or ort.get_available_providers()
    )


def load_model(
    candidate: ModelCandidate,
    *,
    name: str,
    batch_sizes: tuple[int, ...] = (1,),
    intra_op_threads: int = 0,
    providers: tuple[str, ...] = (),
    selftest_max_bytes: int = 64 * 1024 * 1024,
) -> ServedModel:
    """Read, verify, load and warm up a model.

    Args:
        candidate: The model to load.
        name: The name it is served under.
        batch_sizes: Batch sizes to warm up with zeros (those the batcher may form).
        intra_op_threads: ONNX Runtime intra-op threads (0: ORT's default).
        providers: Execution providers.
        selftest_max_bytes: Largest self-test vectors file read.

    Returns:
        The warmed-up model.

    Raises:
        ModelLoadError: If the file cannot be read or has the wrong sha256, ONNX Runtime refuses it, the
            vectors are malformed, warm-up fails, or the self-test disagrees with the expected outputs.
    """
    started = time.perf_counter()
    try:
        data = candidate.path.read_bytes()
    except OSError as exc:
        raise ModelLoadError("read", f"cannot read {candidate.path}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if candidate.sha256 is not None and digest != candidate.sha256:
        raise ModelLoadError(
            "read", f"{candidate.path} has sha256 {digest[:12]}…, expected {candidate.sha256[:12]}…"
        )
    try:
        session = make_session(data, intra_op_threads=intra_op_threads, providers=providers)
    except Exception as exc:  # ORT's error types are not public
        raise ModelLoadError("load", f"ONNX Runtime cannot load {candidate.path}: {exc}") from exc
    model = ServedModel(name, candidate, session, digest, 0.0)
    if candidate.vectors is not None:
        _self_test(model, candidate.vectors, selftest_max_bytes)
    sizes = batch_sizes if model.batchable else (1,)
    for size in sizes:
        feeds = {spec.name: np.zeros(_concrete(spec.shape, size), dtype=spec.dtype) for spec in model.inputs}
        try:
            model.run(feeds)
        except Exception as exc:  # ORT's error types are not public
            raise ModelLoadError("warmup", f"a batch of {size} zeros failed: {exc}") from exc
    model.load_s = time.perf_counter() - started
    return model


def _concrete(shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
    """A shape to warm up with: the batch size first, 1 for any other free dimension."""
    if not shape:
        return ()
    return (batch if shape[0] == -1 else shape[0], *(1 if dim == -1 else dim for dim in shape[1:]))


def _self_test(model: ServedModel, path: Path, max_bytes: int) -> None:
    """Run the release's vectors one by one on the session that will serve and compare the outputs."""
    try:
        vectors = load_vectors(path, max_bytes=max_bytes)
    except SelfTestFormatError as exc:
        raise ModelLoadError("vectors", str(exc)) from exc
    first = model.inputs[0]
    if len(model.inputs) != 1:
        raise ModelLoadError("vectors", "self-test vectors feed one input; the model has several")
    agree = 0
    worst = 0.0
    for row, expected, top1 in zip(
        vectors.inputs, vectors.expected_logits, vectors.expected_top1, strict=True
    ):
        sample = np.asarray(row, dtype=first.dtype)[None, ...]
        try:
            produced = np.asarray(model.run({first.name: sample})[0], dtype=np.float64).reshape(-1)
        except Exception as exc:  # ORT's error types are not public
            raise ModelLoadError("warmup", f"a self-test vector failed to run: {exc}") from exc
        wanted = np.asarray(expected, dtype=np.float64).reshape(-1)
        if produced.shape != wanted.shape:
            raise ModelLoadError("selftest", f"output has {produced.size} values, expected {wanted.size}")
        error = float(np.max(np.abs(produced - wanted))) if produced.size else 0.0
        worst = error if not np.isfinite(error) else max(worst, error)
        agree += int(produced.size > 0 and int(np.argmax(produced)) == int(top1))
    agreement = agree / len(vectors.inputs)
    if not worst <= vectors.tolerance:
        raise ModelLoadError(
            "selftest", f"max |logit error| {worst:.3g} exceeds tolerance {vectors.tolerance:.3g}"
        )
    if agreement < vectors.min_top1_agreement:
        raise ModelLoadError(
            "selftest", f"top-1 agreement {agreement:.2f} is below {vectors.min_top1_agreement:.2f}"
        )

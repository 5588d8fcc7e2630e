"""Export a trained ``ConvNet`` (or any eval-mode ``nn.Module``) to ONNX and check it against torch.

Pipeline step 4 (see ARCHITECTURE.md): ``prune`` hands physically smaller torch models here, and
``quantize`` / ``evaluate`` / ``benchmark`` consume the ONNX files written here.

Exporter choice: we pass ``dynamo=False`` and use the TorchScript exporter on purpose. Measured on
torch 2.13 with these nets, the dynamo exporter (a) takes ~4 s per export against ~0.2 s,
(b) cannot honour ``opset_version=17`` (it emits opset 18 and logs a traceback from the failed
down-conversion in onnxscript's version converter) and (c) cannot export eager-mode QAT models at
all: ``torch.export`` stops on ``FakeQuantize.forward``'s data-dependent ``if observer_enabled``
(GuardOnDataDependentSymNode; https://github.com/pytorch/pytorch/issues/167063, open).
The TorchScript exporter gives a clean opset-17 graph (Conv with BN folded, Relu, MaxPool,
GlobalAveragePool, Flatten, Gemm) that ``quant_pre_process`` and ``quantize_static`` accept, and it
exports fake-quant as true QDQ pairs. It warns that it is deprecated; the warning is silenced
locally. onnxscript stays a dependency so a later move to the dynamo exporter is a one-line change.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ml.errors import DataError, ExportError
from ml.files import atomic_path, write_atomic

#: Argmax agreement below which an export is rejected (the issue asks for ≥ 99.9 %).
MIN_ARGMAX_AGREEMENT = 0.999
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ParityReport:
    """How closely the ONNX model reproduces torch on one held-out batch."""

    argmax_agreement: float
    max_abs_diff: float
    samples: int


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    """Serialise ``model`` to ``path`` atomically (temp file + fsync + replace).

    Raises:
        ExportError: The model cannot be serialised or written.
    """
    try:
        write_atomic(path, model.SerializeToString())
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot write ONNX model to {path}: {exc}") from exc
    return path


def export_onnx(
    model: nn.Module, path: str | Path, input_shape: tuple[int, int, int], *, opset: int = 17
) -> Path:
    """Export ``model`` to ONNX with a dynamic batch axis, check it and write it atomically.

    The model is exported in eval mode; its training flag is restored afterwards.

    Args:
        model: The network; a ``ConvNet`` or a QAT-prepared wrapper of one.
        path: Destination ``.onnx`` file.
        input_shape: One sample's shape ``(C, H, W)``.
        opset: ONNX opset; 13 or more (per-channel QDQ needs 13).

    Returns:
        The path written.

    Raises:
        ExportError: Bad shape or opset, the exporter failed, or ``onnx.checker`` rejected the graph.
    """
    path = Path(path)
    if len(input_shape) != 3 or any(int(d) <= 0 for d in input_shape):
        raise ExportError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")
    if opset < 13:
        raise ExportError(f"opset {opset} is too old: per-channel QuantizeLinear needs opset ≥ 13")
    was_training = model.training
    model.eval()
    # Batch 2, not 1, so the tracer cannot specialise any reshape to a batch of one.
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # QAT fake-quant modules branch on their (frozen) enable flags; tracing them as constants
            # is exactly what we want, so the tracer's warning about it is noise.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
            onnx.checker.check_model(str(tmp), full_check=True)
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many unrelated types; map them at the boundary
        raise ExportError(f"ONNX export to {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    return path


def torch_logits(model: nn.Module, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model`` in eval mode on ``x`` (N×C×H×W float32), batched, without autograd."""
    was_training = model.training
    model.eval()
    outputs: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                batch = torch.from_numpy(
                    np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32)
                )
                outputs.append(model(batch).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    x: np.ndarray,
    *,
    min_agreement: float = MIN_ARGMAX_AGREEMENT,
) -> ParityReport:
    """Compare ``model`` in torch with its ONNX export on a held-out batch ``x``.

    Args:
        model: The torch model that was exported.
        onnx_path: The exported file.
        x: Inputs, N×C×H×W float32, N ≥ 1 (use held-out data, not training data).
        min_agreement: Minimum fraction of samples whose argmax must agree.

    Returns:
        Agreement and the largest absolute logit difference.

    Raises:
        ExportError: ``x`` is empty or malformed, the file cannot be run, or agreement is below
            ``min_agreement``.
    """
    # Imported here so that importing ml.export does not pull onnxruntime into torch-only callers.
    from ml.evaluate import onnx_predict

    if x.ndim != 4 or len(x) == 0:
        raise ExportError(f"parity batch must be non-empty N×C×H×W, got shape {x.shape}")
    try:
        onnx_out = onnx_predict(onnx_path, x)
    except DataError as exc:
        raise ExportError(f"cannot run {onnx_path} for the parity check: {exc}") from exc
    torch_out = torch_logits(model, x)
    if onnx_out.shape != torch_out.shape:
        raise ExportError(f"ONNX output shape {onnx_out.shape} differs from torch {torch_out.shape}")
    agreement = float(np.mean(onnx_out.argmax(axis=1) == torch_out.argmax(axis=1)))
    report = ParityReport(
        argmax_agreement=agreement,
        max_abs_diff=float(np.max(np.abs(onnx_out - torch_out))),
        samples=len(x),
    )
    if agreement < min_agreement:
        raise ExportError(
            f"ONNX/torch argmax agreement {agreement:.4%} on {len(x)} samples is below "
            f"{min_agreement:.1%} (max abs diff {report.max_abs_diff:.3g})"
        )
    return report

"""INT8 variants of an exported model: static QDQ, dynamic, and quantization-aware training (QAT).

Pipeline step 5 (see ARCHITECTURE.md). Inputs are the FP32 ONNX files ``ml.export`` writes (and, for
QAT, the torch model); outputs are ONNX files that ``ml.evaluate`` scores and ``ml.benchmark`` times.

* **Static QDQ** (:func:`quantize_static_int8`): ``quant_pre_process`` (symbolic shape inference
  and ORT graph optimisation, as ORT's quantization docs ask for), then ORT ``quantize_static``
  in QDQ format with per-channel symmetric INT8 weights. Activation ranges come from a
  :class:`TrainingCalibrationReader`, which only ever sees training data.
* **Dynamic** (:func:`quantize_dynamic_int8`): weights INT8, activations quantized at run time.
* **QAT** (:func:`prepare_qat` → fine-tune → :func:`export_qat`): torch eager-mode QAT
  (``torch.ao.quantization``). BN is folded into the conv first, so fine-tuning sees the exact
  weights that will be quantized. The TorchScript exporter lowers the fake-quant modules to true
  ``QuantizeLinear``/``DequantizeLinear`` pairs with the scales learnt in training. (On torch 2.13
  the dynamo exporter fails on these modules: https://github.com/pytorch/pytorch/issues/167063.)
  The exported weights are still FP32 behind a ``QuantizeLinear``; :func:`export_qat` lets ORT's
  basic-level constant folding turn each ``Q(weight)`` into an INT8 initializer (and biases into
  INT32) and saves that graph, so the file is INT8-sized and ORT fuses it into ``QLinearConv``.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn
from torch.ao import quantization as tq

from ml.errors import DataError, ExportError, QuantizationError
from ml.export import export_onnx, save_onnx
from ml.files import atomic_path
from ml.nets import ConvBlock, ConvNet

#: Progress callback: ``progress(done, total)``.
ProgressFn = Callable[[int, int], None]


class Calibration(StrEnum):
    """Calibration methods offered by config; values are the YAML spellings."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"

    @classmethod
    def _missing_(cls, value: object) -> Calibration | None:
        # Config spells them as ORT does (MinMax, Entropy, Percentile); accept any case.
        if isinstance(value, str):
            for member in cls:
                if member.value == value.lower():
                    return member
        return None


_ORT_METHOD = {
    Calibration.MINMAX: CalibrationMethod.MinMax,
    Calibration.ENTROPY: CalibrationMethod.Entropy,
    Calibration.PERCENTILE: CalibrationMethod.Percentile,
}


class TrainingCalibrationReader(CalibrationDataReader):
    """Feeds ORT's calibrator a seeded random subset of the TRAINING inputs, in batches.

    Taking ``x_train`` (never a test split) is the whole point: activation ranges estimated on test
    data would leak it into the model and flatter the reported accuracy.
    """

    def __init__(
        self,
        x_train: np.ndarray,
        *,
        input_name: str,
        size: int,
        batch_size: int = 32,
        seed: int = 0,
        progress: ProgressFn | None = None,
    ) -> None:
        """Pick ``min(size, len(x_train))`` samples with a seeded generator.

        Raises:
            QuantizationError: ``x_train`` is not a non-empty finite N×C×H×W array or ``size`` < 1.
        """
        if not isinstance(x_train, np.ndarray) or x_train.ndim != 4 or len(x_train) == 0:
            raise QuantizationError(
                f"calibration data must be non-empty N×C×H×W, got {getattr(x_train, 'shape', None)}"
            )
        if size < 1 or batch_size < 1:
            raise QuantizationError(f"calibration size and batch size must be ≥ 1, got {size}, {batch_size}")
        if not np.isfinite(x_train).all():
            raise QuantizationError("calibration data contains NaN or infinite values")
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(len(x_train), size=min(size, len(x_train)), replace=False))
        self.samples = np.ascontiguousarray(x_train[picked], dtype=np.float32)
        self.input_name = input_name
        self.batch_size = batch_size
        self.progress = progress
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch as ``{input_name: array}``, or ``None`` when the subset is exhausted."""
        if self._next >= len(self.samples):
            return None
        batch = self.samples[self._next : self._next + self.batch_size]
        self._next += len(batch)
        if self.progress is not None:
            self.progress(self._next, len(self.samples))
        return {self.input_name: batch}

    def rewind(self) -> None:
        """Start again from the first batch (ORT may iterate more than once)."""
        self._next = 0


def _input_name(path: Path) -> str:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError
        raise QuantizationError(f"cannot read ONNX model {path}: {exc}") from exc
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise QuantizationError(f"{path} must have exactly one input, has {inputs}")
    return inputs[0]


def quantize_static_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    x_train: np.ndarray,
    *,
    method: Calibration | str = Calibration.MINMAX,
    calibration_size: int = 256,
    per_channel: bool = True,
    activation_type: QuantType = QuantType.QUInt8,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Path:
    """Static INT8 quantization in QDQ format, after ``quant_pre_process``.

    Activations default to UINT8 and weights to per-channel symmetric INT8: the U8S8 combination
    is the one ORT's x86 kernels (AVX2/AVX-512/VNNI) run fastest.

    Args:
        fp32_path: The FP32 ONNX model (from :func:`ml.export.export_onnx`).
        out_path: Destination of the INT8 model.
        x_train: TRAINING inputs (N×C×H×W float32) to calibrate on; never pass test data.
        method: ``minmax``, ``entropy`` or ``percentile``.
        calibration_size: How many training samples to calibrate on.
        per_channel: One weight scale per output channel (the default) or one per tensor.
        activation_type: ``QuantType.QUInt8`` or ``QuantType.QInt8``.
        seed: Seeds the choice of calibration samples.
        progress: Called as ``progress(done, total)`` while calibration batches are consumed.

    Returns:
        ``out_path``.

    Raises:
        QuantizationError: Unknown method, bad calibration data, or ORT failed to quantize.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    try:
        calibrate_method = _ORT_METHOD[Calibration(method)]
    except ValueError as exc:
        raise QuantizationError(
            f"unknown calibration method {method!r}; use one of {[m.value for m in Calibration]}"
        ) from exc
    reader = TrainingCalibrationReader(
        x_train, input_name=_input_name(fp32_path), size=calibration_size, seed=seed, progress=progress
    )
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as scratch:
        pre = Path(scratch) / "preprocessed.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre))
            with atomic_path(out_path) as tmp:
                quantize_static(
                    str(pre),
                    str(tmp),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=activation_type,
                    weight_type=QuantType.QInt8,
                    calibrate_method=calibrate_method,
                )
        except QuantizationError:
            raise
        except Exception as exc:  # ORT's quantizer raises bare Exception/ValueError/RuntimeError
            raise QuantizationError(f"static quantization of {fp32_path} failed: {exc}") from exc
    return out_path


def quantize_dynamic_int8(fp32_path: str | Path, out_path: str | Path, *, per_channel: bool = True) -> Path:
    """Dynamic INT8: weights quantized ahead of time, activations quantized on the fly per batch.

    Note: this is slow for conv nets. ORT lowers each Conv to ``DynamicQuantizeLinear`` +
    ``ConvInteger`` + a float rescale, so every layer pays a min/max pass over its input and the
    ``ConvInteger`` kernel is far less tuned than ``QLinearConv``; on small CNNs it is often slower
    than FP32. It exists as an option and is measured by ``ml.benchmark`` so the table shows it.

    Raises:
        QuantizationError: ORT failed to quantize the model.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise QuantizationError(f"ONNX model {fp32_path} does not exist")
    try:
        with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as scratch:
            pre = Path(scratch) / "preprocessed.onnx"
            quant_pre_process(str(fp32_path), str(pre))
            with atomic_path(out_path) as tmp:
                quantize_dynamic(str(pre), str(tmp), per_channel=per_channel, weight_type=QuantType.QInt8)
    except Exception as exc:  # ORT's quantizer raises bare Exception/ValueError/RuntimeError
        raise QuantizationError(f"dynamic quantization of {fp32_path} failed: {exc}") from exc
    return out_path


def qat_qconfig() -> tq.QConfig:
    """Fake-quant settings matching what ORT's static QDQ produces, so the two are comparable.

    Weights: per-channel symmetric INT8 over the full -128..127 range (the exporter accepts only
    (-128, 127), (0, 255) and (0, 127)). Activations: per-tensor affine UINT8 over 0..255, without
    the ``reduce_range`` that fbgemm's default uses, because ORT does not need it.
    """
    activation = tq.FakeQuantize.with_args(
        observer=tq.MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        reduce_range=False,
    )
    weight = tq.FakeQuantize.with_args(
        observer=tq.MovingAveragePerChannelMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    return tq.QConfig(activation=activation, weight=weight)


def prepare_qat(model: ConvNet) -> nn.Module:
    """A QAT copy of ``model``: BN folded into conv, conv+ReLU fused, fake-quant on weights and outputs.

    The original model is left untouched. The result is in training mode, ready for
    ``ml.train.fit``; its input goes through a ``QuantStub`` so the ONNX graph starts with a
    ``QuantizeLinear``. Its activation-range observers update only in training mode: torch's
    observers also run in eval mode, so ``fit``'s validation passes would otherwise fit the scales
    to validation data. Activation scales therefore come from training batches alone, like static
    calibration.

    Raises:
        QuantizationError: ``model`` is not a ``ConvNet`` made of ``ConvBlock``s.
    """
    if not isinstance(model, ConvNet):
        raise QuantizationError(f"QAT expects a ConvNet, got {type(model).__name__}")
    fused = copy.deepcopy(model).eval()
    for block in fused.features:
        if not isinstance(block, ConvBlock):
            raise QuantizationError(f"QAT expects ConvBlocks, found {type(block).__name__}")
        # Eval-mode fusion folds BN's running statistics into the conv weights and bias: the
        # fine-tune then trains the very weights that get quantized (BN is frozen, as QAT advises).
        tq.fuse_modules(block, [["conv", "bn", "act"]], inplace=True)
    wrapper = tq.QuantWrapper(fused)
    # torch types Module.__setattr__ as Tensor | Module; qconfig is a plain attribute by design.
    wrapper.qconfig = qat_qconfig()  # type: ignore[assignment]
    wrapper.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tq.prepare_qat(wrapper, inplace=True)
    wrapper.register_forward_pre_hook(_observe_only_while_training)
    return wrapper


_FROZEN = "_edgefleet_qat_frozen"


def _observe_only_while_training(module: nn.Module, _inputs: object) -> None:
    # Once frozen the hook must not touch the flags: during ONNX tracing the in-place write would
    # be recorded as an aten::copy the exporter cannot lower.
    if getattr(module, _FROZEN, False):
        return
    for name, child in module.named_modules():
        # Weight observers may always run (weights are not data, and per-channel weight scales must
        # exist before the first forward); only the activation observers are kept off outside training.
        if isinstance(child, tq.FakeQuantizeBase) and not name.endswith("weight_fake_quant"):
            if module.training:
                child.enable_observer()
            else:
                child.disable_observer()


def freeze_qat(qat_model: nn.Module) -> nn.Module:
    """Stop the observers for good so scales stop moving (after fine-tuning, before evaluation or export)."""
    object.__setattr__(qat_model, _FROZEN, True)
    qat_model.apply(tq.disable_observer)
    qat_model.eval()
    return qat_model


def fold_qdq_weights(in_path: str | Path, out_path: str | Path) -> Path:
    """Constant-fold ``QuantizeLinear(float weight)`` into INT8 initializers using ORT's basic optimiser.

    ORT's basic level is constant folding and redundant-node removal only (no layout or
    provider-specific ops), so the saved graph is still plain ONNX that any runtime can load.

    Raises:
        QuantizationError: ORT cannot load or optimise the model.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    with tempfile.TemporaryDirectory(prefix="edgefleet-fold-") as scratch:
        folded = Path(scratch) / "folded.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        try:
            ort.InferenceSession(str(in_path), options, providers=["CPUExecutionProvider"])
            model = onnx.load(str(folded))
            onnx.checker.check_model(model)
        except Exception as exc:  # ORT C++ errors and onnx checker errors
            raise QuantizationError(f"cannot fold the QDQ weights of {in_path}: {exc}") from exc
    try:
        return save_onnx(model, out_path)
    except ExportError as exc:
        raise QuantizationError(str(exc)) from exc


def export_qat(qat_model: nn.Module, out_path: str | Path, input_shape: tuple[int, int, int]) -> Path:
    """Export a fine-tuned QAT model to a QDQ ONNX file with INT8 weights.

    Raises:
        QuantizationError: Export or weight folding failed.
    """
    freeze_qat(qat_model)
    with tempfile.TemporaryDirectory(prefix="edgefleet-qat-") as scratch:
        raw = Path(scratch) / "qat_fakequant.onnx"
        try:
            export_onnx(qat_model, raw, input_shape)
        except ExportError as exc:
            raise QuantizationError(f"QAT export failed: {exc}") from exc
        return fold_qdq_weights(raw, out_path)


def runtime_op_types(path: str | Path) -> list[str]:
    """Op types of the graph ORT actually executes after full optimisation (e.g. ``QLinearConv``).

    Proves a QDQ file runs as INT8 kernels rather than as float ops between Q/DQ pairs.

    Raises:
        QuantizationError: ORT cannot load the model.
    """
    with tempfile.TemporaryDirectory(prefix="edgefleet-ops-") as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized)
        # Saving an ENABLE_ALL graph makes ORT warn that it is hardware-specific; we only inspect it.
        options.log_severity_level = 3
        try:
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            model = onnx.load(str(optimized))
        except Exception as exc:  # ORT C++ errors
            raise QuantizationError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    return [node.op_type for node in model.graph.node]


def check_calibration_source(x_calib: np.ndarray, x_test: np.ndarray) -> None:
    """Refuse calibration data that shares samples with the test split (a guard for callers).

    Raises:
        DataError: Any calibration sample is byte-identical to a test sample.
    """
    test_rows = {row.tobytes() for row in np.ascontiguousarray(x_test, dtype=np.float32)}
    for row in np.ascontiguousarray(x_calib, dtype=np.float32):
        if row.tobytes() in test_rows:
            raise DataError("calibration data overlaps the test split; calibrate on training data only")

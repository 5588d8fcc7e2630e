"""Unit tests of ml.quantize: static QDQ structure, dynamic INT8, QAT export, calibration hygiene."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch.ao import quantization as tq

from ml.errors import DataError, QuantizationError
from ml.evaluate import agreement, onnx_predict
from ml.export import torch_logits
from ml.nets import ConvNet
from ml.quantize import (
    TrainingCalibrationReader,
    check_calibration_source,
    export_qat,
    freeze_qat,
    prepare_qat,
    quantize_dynamic_int8,
    quantize_static_int8,
    runtime_op_types,
)

INPUT_SHAPE = (1, 8, 8)


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _conv_weight_dequantizers(path: Path) -> list[tuple[onnx.TensorProto, np.ndarray]]:
    """(int weight, scale) of every DequantizeLinear feeding a Conv's weight input."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    pairs = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        pairs.append((weight, numpy_helper.to_array(scale)))
    return pairs


@pytest.fixture(scope="module")
def static_int8(student_onnx: Path, digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("static") / "student_int8.onnx"
    return quantize_static_int8(student_onnx, out, digits.x_train, calibration_size=128)


def test_static_qdq_structure(static_int8: Path, trained_student: ConvNet) -> None:
    ops = _ops(static_int8)
    assert "QuantizeLinear" in ops
    assert "DequantizeLinear" in ops
    pairs = _conv_weight_dequantizers(static_int8)
    assert len(pairs) == 4
    widths = [16, 32, 32, 64]
    for (weight, scale), width in zip(pairs, widths, strict=True):
        assert weight.data_type == TensorProto.INT8
        assert scale.shape == (width,)  # one scale per output channel
        assert len(np.unique(scale)) > 1


def test_static_runs_as_int8_kernels_in_ort(static_int8: Path) -> None:
    assert "QLinearConv" in runtime_op_types(static_int8)


def test_static_agrees_with_parent(static_int8: Path, student_onnx: Path, digits: Any) -> None:
    parent = onnx_predict(student_onnx, digits.x_test)
    child = onnx_predict(static_int8, digits.x_test)
    assert agreement(child, parent) >= 0.98
    parent_acc = float(np.mean(parent.argmax(1) == digits.y_test))
    child_acc = float(np.mean(child.argmax(1) == digits.y_test))
    assert child_acc >= parent_acc - 0.02


def test_static_file_is_smaller(static_int8: Path, student_onnx: Path) -> None:
    assert static_int8.stat().st_size < 0.45 * student_onnx.stat().st_size


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(method: str, student_onnx: Path, digits: Any, tmp_path: Path) -> None:
    out = quantize_static_int8(
        student_onnx, tmp_path / "q.onnx", digits.x_train, method=method, calibration_size=64
    )
    parent = onnx_predict(student_onnx, digits.x_test)
    assert agreement(onnx_predict(out, digits.x_test), parent) >= 0.95


def test_per_tensor_option_has_scalar_scales(student_onnx: Path, digits: Any, tmp_path: Path) -> None:
    out = quantize_static_int8(
        student_onnx, tmp_path / "q.onnx", digits.x_train, per_channel=False, calibration_size=32
    )
    assert all(scale.size == 1 for _, scale in _conv_weight_dequantizers(out))


def test_unknown_method_and_bad_calibration_data(student_onnx: Path, digits: Any, tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="calibration method"):
        quantize_static_int8(student_onnx, tmp_path / "q.onnx", digits.x_train, method="magic")
    with pytest.raises(QuantizationError):
        quantize_static_int8(student_onnx, tmp_path / "q.onnx", digits.x_train[:0])
    with pytest.raises(QuantizationError):
        quantize_static_int8(student_onnx, tmp_path / "q.onnx", np.full((4, 1, 8, 8), np.nan, np.float32))
    assert not (tmp_path / "q.onnx").exists()


def test_calibration_reader_is_seeded_subset_of_training(digits: Any) -> None:
    seen: list[tuple[int, int]] = []
    reader = TrainingCalibrationReader(
        digits.x_train,
        input_name="input",
        size=100,
        batch_size=32,
        seed=3,
        progress=lambda d, t: seen.append((d, t)),
    )
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch["input"])
    stacked = np.concatenate(batches)
    assert stacked.shape == (100, 1, 8, 8)
    assert seen[-1] == (100, 100)
    train_rows = {row.tobytes() for row in digits.x_train}
    assert all(row.tobytes() in train_rows for row in stacked)
    reader.rewind()
    again = TrainingCalibrationReader(digits.x_train, input_name="input", size=100, batch_size=32, seed=3)
    first, replay = again.get_next(), reader.get_next()
    assert first is not None and replay is not None
    np.testing.assert_array_equal(first["input"], replay["input"])


def test_calibration_source_guard(digits: Any) -> None:
    check_calibration_source(digits.x_train[:50], digits.x_test)
    with pytest.raises(DataError, match="overlaps"):
        check_calibration_source(np.concatenate([digits.x_train[:5], digits.x_test[:1]]), digits.x_test)


def test_dynamic_int8_runs_and_agrees(student_onnx: Path, digits: Any, tmp_path: Path) -> None:
    out = quantize_dynamic_int8(student_onnx, tmp_path / "dyn.onnx")
    ops = _ops(out)
    assert "ConvInteger" in ops or "DynamicQuantizeLinear" in ops
    parent = onnx_predict(student_onnx, digits.x_test)
    assert agreement(onnx_predict(out, digits.x_test), parent) >= 0.95


def test_dynamic_missing_input_is_quantization_error(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError):
        quantize_dynamic_int8(tmp_path / "absent.onnx", tmp_path / "out.onnx")


def test_qat_exports_true_int8_qdq(
    trained_student: ConvNet, student_onnx: Path, digits: Any, tmp_path: Path
) -> None:
    from ml.train import fit

    qat = prepare_qat(trained_student)
    assert trained_student.features[0].bn is not None  # original untouched
    fit(qat, (digits.x_train, digits.y_train), (digits.x_val, digits.y_val), epochs=1, lr=5e-4)
    freeze_qat(qat)
    fake_quant_logits = torch_logits(qat, digits.x_test)
    out = export_qat(copy.deepcopy(qat), tmp_path / "qat.onnx", INPUT_SHAPE)
    ops = _ops(out)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    pairs = _conv_weight_dequantizers(out)
    assert [w.data_type for w, _ in pairs] == [TensorProto.INT8] * 4
    assert [s.shape for _, s in pairs] == [(16,), (32,), (32,), (64,)]
    assert "QLinearConv" in runtime_op_types(out)
    logits = onnx_predict(out, digits.x_test)
    # ORT's INT8 kernels reproduce torch's fake-quant simulation almost exactly.
    assert agreement(logits, fake_quant_logits) >= 0.98
    assert float(np.mean(logits.argmax(1) == digits.y_test)) > 0.9
    assert out.stat().st_size < 0.45 * student_onnx.stat().st_size  # INT8 weights, not FP32 behind a Q


def test_qat_rejects_other_models() -> None:
    import torch

    with pytest.raises(QuantizationError):
        prepare_qat(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def _activation_scales(model: torch.nn.Module) -> list[float]:
    return [
        float(m.scale.reshape(-1)[0])
        for name, m in model.named_modules()
        if isinstance(m, tq.FakeQuantize) and name.endswith("activation_post_process")
    ]


def test_qat_observers_learn_from_training_passes_only(trained_student: ConvNet, digits: Any) -> None:
    qat = prepare_qat(trained_student)
    qat.train()
    qat(torch.from_numpy(digits.x_train[:64]))
    trained_scales = _activation_scales(qat)
    qat.eval()
    qat(torch.from_numpy(digits.x_val[:64] * 100.0))  # an eval pass with wild ranges...
    assert _activation_scales(qat) == trained_scales  # ...leaves the scales alone
    qat.train()
    qat(torch.from_numpy(digits.x_train[:64] * 100.0))
    assert _activation_scales(qat) != trained_scales  # training passes do move them
    freeze_qat(qat)
    frozen = _activation_scales(qat)
    qat.train()
    qat(torch.from_numpy(digits.x_train[:64] * 100.0))
    assert _activation_scales(qat) == frozen  # frozen for good

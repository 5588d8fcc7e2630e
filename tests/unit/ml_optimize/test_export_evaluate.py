"""Unit tests of ml.export (dynamic batch, checker, parity) and ml.evaluate (metrics on ORT)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from ml.errors import DataError, ExportError
from ml.evaluate import accuracy, agreement, confusion_matrix, onnx_predict, score_variant
from ml.export import check_parity, export_onnx
from ml.nets import ConvNet

INPUT_SHAPE = (1, 8, 8)


def test_export_has_dynamic_batch_and_passes_checker(student_onnx: Path) -> None:
    model = onnx.load(str(student_onnx))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8]
    assert model.opset_import[0].version == 17
    for batch in (1, 7):
        out = onnx_predict(student_onnx, np.zeros((batch, *INPUT_SHAPE), dtype=np.float32))
        assert out.shape == (batch, 10)


def test_parity_with_torch(trained_student: ConvNet, student_onnx: Path, digits: Any) -> None:
    report = check_parity(trained_student, student_onnx, digits.x_test)
    assert report.argmax_agreement == 1.0
    assert report.max_abs_diff < 1e-3
    assert report.samples == len(digits.x_test)


def test_parity_failure_raises(trained_student: ConvNet, student_onnx: Path, digits: Any) -> None:
    other = copy.deepcopy(trained_student)
    with torch.no_grad():
        other.classifier.weight.mul_(-1.0)
    with pytest.raises(ExportError, match="agreement"):
        check_parity(other, student_onnx, digits.x_test)


def test_export_restores_training_mode(trained_student: ConvNet, tmp_path: Path) -> None:
    model = copy.deepcopy(trained_student).train()
    export_onnx(model, tmp_path / "m.onnx", INPUT_SHAPE)
    assert model.training


@pytest.mark.parametrize("shape", [(1, 8), (0, 8, 8), (1, -1, 8)])
def test_bad_input_shape_is_an_export_error(
    trained_student: ConvNet, tmp_path: Path, shape: tuple[int, ...]
) -> None:
    with pytest.raises(ExportError):
        export_onnx(trained_student, tmp_path / "m.onnx", shape)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_wrong_channel_count_fails_cleanly_and_leaves_no_file(
    trained_student: ConvNet, tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="export"):
        export_onnx(trained_student, tmp_path / "m.onnx", (3, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_accuracy_agreement_confusion_by_hand() -> None:
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    labels = np.array([0, 1, 1, 2])
    assert accuracy(logits, labels) == pytest.approx(0.5)
    parent = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert agreement(logits, parent) == pytest.approx(0.75)
    matrix = confusion_matrix(labels, logits.argmax(axis=1), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]


def test_evaluate_bad_inputs_are_data_errors(student_onnx: Path) -> None:
    with pytest.raises(DataError):
        accuracy(np.zeros((3, 2)), np.zeros(4, dtype=np.int64))
    with pytest.raises(DataError):
        confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3)
    with pytest.raises(DataError):
        onnx_predict(student_onnx, np.zeros((2, 1, 8), dtype=np.float32))
    with pytest.raises(DataError):
        onnx_predict(student_onnx, np.full((2, 1, 8, 8), np.nan, dtype=np.float32))
    with pytest.raises(DataError):
        onnx_predict(student_onnx, np.zeros((2, 3, 8, 8), dtype=np.float32))


def test_missing_or_corrupt_model_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError):
        onnx_predict(tmp_path / "absent.onnx", np.zeros((1, 1, 8, 8), dtype=np.float32))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(ExportError):
        onnx_predict(corrupt, np.zeros((1, 1, 8, 8), dtype=np.float32))


def test_score_variant_matches_torch_accuracy(
    trained_student: ConvNet, student_onnx: Path, digits: Any
) -> None:
    from ml.train import accuracy as torch_accuracy

    score, logits = score_variant(student_onnx, digits.x_test, digits.y_test)
    assert score.accuracy == pytest.approx(torch_accuracy(trained_student, digits.x_test, digits.y_test))
    assert score.accuracy > 0.9
    child, _ = score_variant(student_onnx, digits.x_test, digits.y_test, parent_logits=logits)
    assert child.agreement_with_parent == 1.0

"""``ml.variants.build_variants`` for a fine-tune (``prune=None``): the student is exported as it is, under
its parent's FP32 name, quantized only the way the parent shipped, and every FP32 variant keeps its torch
weights for the next fine-tune."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ml.config import PruneConfig, QuantizeConfig
from ml.data import load_digits, split
from ml.errors import DataError
from ml.nets import STUDENT_SPEC, TEACHER_SPEC, ConvNet, build_net
from ml.prune import block_widths, prune_structured
from ml.variants import build_variants, load_manifest
from ml.warmstart import load_net

QUANTIZE = QuantizeConfig(calibration_size=32, dynamic=True, qat=True)


def _nets() -> tuple[ConvNet, ConvNet]:
    teacher = build_net(TEACHER_SPEC, in_channels=1, num_classes=10).eval()
    student = build_net(STUDENT_SPEC, in_channels=1, num_classes=10)
    return teacher, prune_structured(student, 0.25, multiple_of=8).eval()


def _conv_out_channels(path: Path) -> list[int]:
    model = onnx.load(str(path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    return [int(weights[n.input[1]].shape[0]) for n in convs]


def test_fine_tune_build_keeps_the_architecture_and_the_parents_kind(tmp_path: Path) -> None:
    x, y, names = load_digits()
    splits = split(x, y, names, name="digits", seed=0)
    teacher, student = _nets()
    widths = list(block_widths(student))
    before = copy.deepcopy(student.state_dict())
    manifest = build_variants(
        teacher=teacher,
        student=student,
        splits=splits,
        folder=tmp_path,
        prune=None,
        quantize=QUANTIZE,
        student_name="student-structured-fp32",
        student_int8=("int8-static",),
    )
    names_built = {v.name for v in manifest.variants}
    # No pruning, no second full-size student, and QAT/dynamic of the student not made although the
    # config switches them on: the parent shipped static INT8. The teacher variants are as configured.
    assert names_built == {
        "teacher-fp32",
        "student-structured-fp32",
        "teacher-int8-static",
        "student-structured-int8-static",
        "teacher-int8-dynamic",
    }
    assert manifest.pruning == ()
    by_name = manifest.by_name()
    assert by_name["student-structured-int8-static"].parent == "student-structured-fp32"
    assert _conv_out_channels(tmp_path / by_name["student-structured-fp32"].file) == widths
    for key, value in before.items():  # the student was exported, not changed
        assert np.array_equal(value.numpy(), student.state_dict()[key].numpy()), key
    # FP32 variants carry their torch weights, and they load back as the same architecture.
    assert by_name["student-structured-fp32"].torch_weights == "student-structured-fp32"
    assert by_name["student-structured-int8-static"].torch_weights is None
    loaded = load_net(tmp_path, "student-structured-fp32")
    assert list(block_widths(loaded.model)) == widths
    assert load_manifest(tmp_path).by_name().keys() == by_name.keys()


def test_a_fresh_run_still_prunes_and_stores_every_fp32_student(tmp_path: Path) -> None:
    x, y, names = load_digits()
    splits = split(x, y, names, name="digits", seed=0)
    teacher = build_net(TEACHER_SPEC, in_channels=1, num_classes=10).eval()
    student = build_net(STUDENT_SPEC, in_channels=1, num_classes=10).eval()
    manifest = build_variants(
        teacher=teacher,
        student=student,
        splits=splits,
        folder=tmp_path,
        prune=PruneConfig(unstructured_sparsity=0.5, structured_ratio=0.25, fine_tune={"epochs": 1}),
        quantize=QuantizeConfig(calibration_size=32, dynamic=False, qat=False),
    )
    by_name = manifest.by_name()
    assert {"student-fp32", "student-structured-fp32", "student-sparse-fp32"} <= by_name.keys()
    assert {"student-int8-static", "student-structured-int8-static"} <= by_name.keys()
    for name in ("teacher-fp32", "student-fp32", "student-structured-fp32", "student-sparse-fp32"):
        assert (tmp_path / f"{name}.pt").is_file() and load_net(tmp_path, name).card.variant == name
    assert load_net(tmp_path, "student-sparse-fp32").card.weight_sparsity > 0.45


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"student_name": "student-int8-static"}, "must end in -fp32"),
        ({"student_int8": ("int4",)}, "unknown INT8"),
    ],
)
def test_bad_student_names_and_kinds_are_refused(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    x, y, names = load_digits()
    teacher, student = _nets()
    with pytest.raises(DataError, match=message):
        build_variants(
            teacher=teacher,
            student=student,
            splits=split(x, y, names, name="digits", seed=0),
            folder=tmp_path,
            prune=None,
            quantize=QUANTIZE,
            **change,
        )


def test_static_false_builds_fp32_variants_only(tmp_path: Path) -> None:
    """quantize.static: false (with dynamic and QAT off) leaves only FP32 variants to ship."""
    x, y, names = load_digits()
    teacher, student = _nets()
    manifest = build_variants(
        teacher=teacher,
        student=student,
        splits=split(x, y, names, name="digits", seed=0),
        folder=tmp_path,
        prune=None,
        quantize=QuantizeConfig(static=False, dynamic=False, qat=False),
    )
    assert {v.name for v in manifest.variants} == {"teacher-fp32", "student-fp32"}
    assert {v.kind for v in manifest.variants} == {"fp32"}

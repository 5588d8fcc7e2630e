"""Architecture contracts the issue sets: teacher cost, student size, and layout per input size."""

from __future__ import annotations

import pytest
import torch

from ml.nets import build_net, count_macs, count_parameters, specs_for_input


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_student_has_at_least_8x_fewer_parameters(shape: tuple[int, int, int]) -> None:
    teacher_spec, student_spec = specs_for_input(shape)
    teacher = build_net(teacher_spec, in_channels=shape[0], num_classes=10)
    student = build_net(student_spec, in_channels=shape[0], num_classes=10)
    assert count_parameters(teacher) >= 8 * count_parameters(student)


def test_digits_teacher_costs_at_least_10m_multiply_adds() -> None:
    teacher_spec, _ = specs_for_input((1, 8, 8))
    assert count_macs(build_net(teacher_spec, in_channels=1, num_classes=10), (1, 8, 8)) >= 10_000_000


def test_large_inputs_pool_in_the_first_block_and_stay_runnable() -> None:
    small_teacher, _ = specs_for_input((1, 8, 8))
    teacher_spec, student_spec = specs_for_input((1, 28, 28))
    assert small_teacher.pools[0] is False
    assert teacher_spec.pools[0] is True and student_spec.pools[0] is True
    teacher = build_net(teacher_spec, in_channels=1, num_classes=10)
    macs = count_macs(teacher, (1, 28, 28))
    full = count_macs(build_net(small_teacher, in_channels=1, num_classes=10), (1, 28, 28))
    assert 10_000_000 <= macs < full / 3
    logits, feature = teacher.eval().forward_features(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    assert feature.shape[1] == teacher.feature_channels

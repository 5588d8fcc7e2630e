"""Warm start (``ml.warmstart``): weights + card round trip, a warm-started student's starting point, kept
zeros, the re-quantization plan, and clear errors for files that cannot be used."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.data import DataSplits
from ml.distill import DistillConfig, build_student, distill
from ml.errors import WarmStartError
from ml.nets import ConvNet, NetSpec, build_net
from ml.prune import prune_structured, prune_unstructured
from ml.train import predict
from ml.warmstart import (
    MODEL_STEM,
    TEACHER_STEM,
    copy_net,
    load_net,
    load_warm_start,
    read_card,
    save_net,
    student_plan,
    weight_sparsity,
    write_origin,
    zeros_kept,
)

# The conftest's tiny layouts (test modules cannot import conftest under --import-mode=importlib).
TINY_TEACHER = NetSpec(widths=(8, 16), pools=(False, True), feature_block=0)
TINY_STUDENT = NetSpec(widths=(4, 8), pools=(True, False), feature_block=1)


def _nets(splits: DataSplits) -> tuple[ConvNet, ConvNet]:
    teacher = build_net(TINY_TEACHER, in_channels=1, num_classes=10).eval()
    student = build_student(splits, seed=0, spec=TINY_STUDENT)
    # Structured pruning changes the widths: the card must carry them for the module to be rebuilt.
    pruned = prune_structured(student, 0.5, multiple_of=2).eval()
    assert pruned.spec.widths != TINY_STUDENT.widths
    return teacher, pruned


def _parent(tmp_path: Path, splits: DataSplits) -> tuple[Path, ConvNet]:
    """A folder laid out like a fetched ``init_from``: ``model.*``, ``teacher.*`` and ``origin.json``."""
    teacher, student = _nets(splits)
    variants = tmp_path / "variants"
    save_net(teacher, variants, "teacher-fp32", variant="teacher-fp32", splits=splits)
    save_net(student, variants, "student-structured-fp32", variant="student-structured-fp32", splits=splits)
    fetched = tmp_path / "fetched"
    copy_net(variants, "teacher-fp32", fetched, TEACHER_STEM)
    copy_net(
        variants,
        "student-structured-fp32",
        fetched,
        MODEL_STEM,
        deployed_variant="student-structured-int8-static",
    )
    write_origin(fetched, requested="models:/m@production", source="models:/m/3")
    return fetched, student


def test_round_trip_rebuilds_the_pruned_architecture_with_identical_outputs(
    tmp_path: Path, small_splits: DataSplits
) -> None:
    _, pruned = _nets(small_splits)
    save_net(pruned, tmp_path, "s", variant="student-structured-fp32", splits=small_splits)
    loaded = load_net(tmp_path, "s")
    assert loaded.model.spec == pruned.spec
    assert loaded.card.class_names == small_splits.class_names
    assert loaded.card.channel_mean == small_splits.channel_mean
    for key, value in pruned.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    np.testing.assert_array_equal(
        predict(loaded.model, small_splits.x_test), predict(pruned, small_splits.x_test)
    )


def test_warm_started_student_starts_from_the_stored_weights(
    tmp_path: Path, small_splits: DataSplits
) -> None:
    folder, parent_student = _parent(tmp_path, small_splits)
    warm = load_warm_start(folder)
    assert (warm.requested, warm.source) == ("models:/m@production", "models:/m/3")
    student = warm.fresh_student()
    # Before any fine-tuning the warm student IS the parent: same architecture, same logits bit for bit.
    assert student.spec == parent_student.spec
    np.testing.assert_array_equal(
        predict(student, small_splits.x_test), predict(parent_student, small_splits.x_test)
    )
    # ...and not what a fresh student of that architecture would compute.
    fresh = build_net(parent_student.spec, in_channels=1, num_classes=10)
    assert not np.allclose(predict(fresh, small_splits.x_test), predict(student, small_splits.x_test))
    # Fine-tuning works on a copy: the loaded parent stays as it was.
    settings = DistillConfig(epochs=1, lr=1e-3, patience=1, beta=0.0)
    distill(student, warm.fresh_teacher(), small_splits, settings)
    np.testing.assert_array_equal(
        predict(warm.student.model, small_splits.x_test), predict(parent_student, small_splits.x_test)
    )
    assert warm.normalization == (small_splits.channel_mean, small_splits.channel_std)


def test_zeros_stay_zero_through_a_fine_tune(tmp_path: Path, small_splits: DataSplits) -> None:
    teacher = build_net(TINY_TEACHER, in_channels=1, num_classes=10).eval()
    sparse = prune_unstructured(build_student(small_splits, seed=0, spec=TINY_STUDENT), 0.5)
    zeros_before = [
        m.weight == 0 for m in sparse.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    before = weight_sparsity(sparse)
    assert before == pytest.approx(0.5, abs=0.01)
    with zeros_kept(sparse) as held:
        assert held == pytest.approx(before)
        distill(sparse, teacher, small_splits, DistillConfig(epochs=2, lr=3e-3, patience=2, beta=0.0))
    after = [m.weight for m in sparse.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    for mask, weight in zip(zeros_before, after, strict=True):
        assert torch.all(weight[mask] == 0)
    assert weight_sparsity(sparse) >= before
    assert not any(k.endswith(("_orig", "_mask")) for k in sparse.state_dict())  # masks removed on exit


def test_dense_models_are_left_alone() -> None:
    net = build_net(TINY_STUDENT, in_channels=1, num_classes=10)
    with zeros_kept(net) as held:
        assert held == 0.0
        assert not any(k.endswith("_mask") for k in net.state_dict())


@pytest.mark.parametrize(
    ("variant", "deployed", "plan"),
    [
        (
            "student-structured-fp32",
            "student-structured-int8-static",
            ("student-structured-fp32", ("int8-static",)),
        ),
        ("student-fp32", "student-int8-qat", ("student-fp32", ("int8-qat",))),
        ("student-fp32", "student-int8-dynamic", ("student-fp32", ("int8-dynamic",))),
        ("student-sparse-fp32", "student-sparse-fp32", ("student-sparse-fp32", ())),
    ],
)
def test_student_plan_rebuilds_the_parents_kind(
    tmp_path: Path, small_splits: DataSplits, variant: str, deployed: str, plan: tuple[str, tuple[str, ...]]
) -> None:
    save_net(
        build_student(small_splits, seed=0, spec=TINY_STUDENT),
        tmp_path,
        "s",
        variant=variant,
        splits=small_splits,
    )
    copy_net(tmp_path, "s", tmp_path, "m", deployed_variant=deployed)
    assert student_plan(read_card(tmp_path, "m")) == plan


def test_student_plan_refuses_a_teacher_or_a_foreign_variant(
    tmp_path: Path, small_splits: DataSplits
) -> None:
    net = build_student(small_splits, seed=0, spec=TINY_STUDENT)
    save_net(net, tmp_path, "t", variant="teacher-fp32", splits=small_splits)
    with pytest.raises(WarmStartError, match="expected a student"):
        student_plan(read_card(tmp_path, "t"))
    save_net(net, tmp_path, "s", variant="student-fp32", splits=small_splits)
    copy_net(tmp_path, "s", tmp_path, "m", deployed_variant="student-structured-int8-static")
    with pytest.raises(WarmStartError, match="not one of its INT8 variants"):
        student_plan(read_card(tmp_path, "m"))


def test_corrupt_or_mismatched_weights_are_refused_by_name(tmp_path: Path, small_splits: DataSplits) -> None:
    folder, _ = _parent(tmp_path, small_splits)
    weights = folder / f"{MODEL_STEM}.pt"
    good = weights.read_bytes()
    weights.write_bytes(good[:-10] + b"0123456789")
    with pytest.raises(WarmStartError, match=r"models:/m/3: .*model\.pt has sha256"):
        load_warm_start(folder)
    weights.write_bytes(good)
    card = json.loads((folder / f"{MODEL_STEM}.json").read_text())
    card["spec"]["widths"] = [w + 8 for w in card["spec"]["widths"]]
    (folder / f"{MODEL_STEM}.json").write_text(json.dumps(card))
    with pytest.raises(WarmStartError, match="does not fit the architecture"):
        load_warm_start(folder)
    (folder / f"{MODEL_STEM}.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(WarmStartError, match="not an EdgeFleet weights card"):
        load_warm_start(folder)
    (folder / f"{TEACHER_STEM}.json").unlink()
    with pytest.raises(WarmStartError, match=r"teacher\.json"):
        load_warm_start(folder)


def test_weights_are_loaded_without_unpickling_code(tmp_path: Path, small_splits: DataSplits) -> None:
    folder, _ = _parent(tmp_path, small_splits)

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    weights = folder / f"{MODEL_STEM}.pt"
    torch.save({"features.0.conv.weight": Evil()}, weights)
    card = json.loads((folder / f"{MODEL_STEM}.json").read_text())
    card["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / f"{MODEL_STEM}.json").write_text(json.dumps(card))
    with pytest.raises(WarmStartError, match="cannot load"):
        load_warm_start(folder)


def test_data_the_parent_was_not_made_for_is_refused(tmp_path: Path, small_splits: DataSplits) -> None:
    folder, _ = _parent(tmp_path, small_splits)
    warm = load_warm_start(folder)
    warm.check_fits(small_splits)
    other = DataSplits(
        **{**small_splits.__dict__, "class_names": tuple(f"c{i}" for i in range(10)), "name": "letters"}
    )
    with pytest.raises(
        WarmStartError, match=r"models:/m/3: its teacher knows classes .* the data \(letters\)"
    ):
        warm.check_fits(other)

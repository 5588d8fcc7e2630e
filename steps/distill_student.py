"""Steps: distil the student from the teacher, and train the label-only student for the KD ablation.

In a fine-tune (``init_weights`` set) both start from the parent version's student instead of fresh
weights: same (pruned) architecture, and its exactly-zero weights stay zero (``ml.warmstart.zeros_kept``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
from torch import nn
from zenml import log_metadata, step

from ml.arch import DEFAULT_ARCH, build_model
from ml.augment import make_augment
from ml.config import AugmentConfig
from ml.config import DistillConfig as DistillSection
from ml.data import DataSplits
from ml.device import resolve_runtime
from ml.distill import DistillConfig, build_student, distill, train_label_only
from ml.nets import count_parameters, specs_for_input
from ml.train import AugmentFn, accuracy, seed_everything
from ml.warmstart import load_warm_start, weight_sparsity, zeros_kept
from steps.progress import epoch_progress


def _distill_config(section: DistillSection, teacher_layer: str | None = None) -> DistillConfig:
    train = section.train
    return DistillConfig(
        temperature=section.temperature,
        alpha=section.alpha,
        beta=section.beta,
        epochs=train.epochs,
        lr=train.lr,
        batch_size=train.batch_size,
        patience=train.patience,
        seed=train.seed,
        weight_decay=train.weight_decay,
        optimizer=train.optimizer,
        student_layer=section.feature_layer,
        teacher_layer=teacher_layer,
    )


def _augment(splits: DataSplits, augment: AugmentConfig | None, seed: int) -> AugmentFn | None:
    if augment is None:
        return None
    return make_augment(
        input_hw=(splits.input_shape[1], splits.input_shape[2]), seed=seed, **augment.model_dump()
    )


def _start(
    splits: DataSplits, settings: DistillConfig, init_weights: Path | None, section: DistillSection
) -> nn.Module:
    """The parent's student for a fine-tune, else a fresh one of the configured architecture, seeded."""
    if init_weights is not None:
        return load_warm_start(init_weights).fresh_student()
    if section.arch == DEFAULT_ARCH:
        return build_student(splits, seed=settings.seed, spec=specs_for_input(splits.input_shape)[1])
    seed_everything(settings.seed)
    return build_model(
        section.arch,
        role="student",
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        kwargs=section.kwargs,
    )


@step
def distill_student(
    splits: DataSplits,
    teacher: nn.Module,
    config: DistillSection,
    threads: int = 2,
    init_weights: Path | None = None,
    teacher_layer: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    augment: AugmentConfig | None = None,
) -> tuple[Annotated[nn.Module, "student"], Annotated[dict[str, float], "student_metrics"]]:
    """Knowledge distillation: KL on softened logits + CE + feature matching on named layers."""
    torch.set_num_threads(threads)
    settings = _distill_config(config, teacher_layer)
    student = _start(splits, settings, init_weights, config)
    label = "student (KD fine-tune)" if init_weights is not None else "student (KD)"
    with zeros_kept(student), epoch_progress(label, settings.epochs) as progress:
        result = distill(
            student,
            teacher,
            splits,
            settings,
            progress=progress,
            runtime=resolve_runtime(device, precision),
            augment=_augment(splits, augment, settings.seed),
        )
    metrics = {
        "test_accuracy": accuracy(student, splits.x_test, splits.y_test),
        "best_val_accuracy": result.best_val_accuracy,
        "epochs_run": float(result.epochs_run),
        "best_epoch": float(result.best_epoch),
        "parameters": float(count_parameters(student)),
        "weight_sparsity": weight_sparsity(student),
        "teacher_to_student_parameter_ratio": count_parameters(teacher) / count_parameters(student),
    }
    log_metadata(dict(metrics.items()))
    return student, metrics


@step
def train_label_only_student(
    splits: DataSplits,
    config: DistillSection,
    threads: int = 2,
    init_weights: Path | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    augment: AugmentConfig | None = None,
) -> Annotated[dict[str, float], "ablation_metrics"]:
    """The ablation: the same student, seed and optimiser, trained on labels alone."""
    torch.set_num_threads(threads)
    settings = _distill_config(config)
    student = _start(splits, settings, init_weights, config)
    with zeros_kept(student), epoch_progress("student (labels only)", settings.epochs) as progress:
        result = train_label_only(
            student,
            splits,
            settings,
            progress=progress,
            runtime=resolve_runtime(device, precision),
            augment=_augment(splits, augment, settings.seed),
        )
    metrics = {
        "test_accuracy": accuracy(student, splits.x_test, splits.y_test),
        "best_val_accuracy": result.best_val_accuracy,
        "epochs_run": float(result.epochs_run),
    }
    log_metadata(dict(metrics.items()))
    return metrics

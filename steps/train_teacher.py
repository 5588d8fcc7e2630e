"""Step: train the teacher CNN with a fixed seed and early stopping on validation accuracy."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn
from zenml import log_metadata, step

from ml.config import TrainConfig
from ml.data import DataSplits
from ml.nets import build_net, count_macs, count_parameters, specs_for_input
from ml.train import accuracy, fit_splits, seed_everything
from steps.progress import epoch_progress


@step
def train_teacher(
    splits: DataSplits, config: TrainConfig, threads: int = 2
) -> tuple[Annotated[nn.Module, "teacher"], Annotated[dict[str, float], "teacher_metrics"]]:
    """Train the teacher; report its test accuracy, parameters and multiply-adds."""
    torch.set_num_threads(threads)
    seed_everything(config.seed)
    teacher_spec, _ = specs_for_input(splits.input_shape)
    teacher = build_net(teacher_spec, in_channels=splits.input_shape[0], num_classes=splits.num_classes)
    with epoch_progress("teacher", config.epochs) as progress:
        result = fit_splits(teacher, splits, config, progress=progress)
    metrics = {
        "test_accuracy": accuracy(teacher, splits.x_test, splits.y_test),
        "best_val_accuracy": result.best_val_accuracy,
        "epochs_run": float(result.epochs_run),
        "parameters": float(count_parameters(teacher)),
        "macs": float(count_macs(teacher, splits.input_shape)),
    }
    log_metadata(dict(metrics.items()))
    return teacher, metrics

"""Step: load and split the data set named in the config, fingerprinted for lineage."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

from zenml import log_metadata, step

from ml.arch import NetChoice, preflight
from ml.config import DataConfig, DistillConfig, TeacherConfig
from ml.data import DataSplits, load_splits, preprocessing_fingerprint
from ml.warmstart import load_warm_start
from steps.materializers import DataSplitsMaterializer


@step(output_materializers=DataSplitsMaterializer)
def load_data(
    config: DataConfig,
    init_weights: Path | None = None,
    teacher: TeacherConfig | None = None,
    student: DistillConfig | None = None,
) -> Annotated[DataSplits, "splits"]:
    """Load ``config.source`` (digits, an image folder, an .npz or synthetic-glyphs) and split it.

    ``config.extra_train`` sources join the training split only. A fine-tune (``init_weights``) keeps the
    input normalisation its parent was trained with, so the parent's weights see inputs on the same scale.
    As the pipeline's first step it also checks the ``teacher`` and ``student`` sections
    (``ml.arch.preflight``: architecture names, feature layers, the teacher's weights file), so a bad config
    fails here, before any training, and registers nothing.
    """
    warm = load_warm_start(init_weights) if init_weights is not None else None
    normalization = warm.normalization if warm is not None else None
    if normalization is None and config.mean is not None:
        if config.std is None or len(config.std) != len(config.mean):
            raise ValueError("data.mean and data.std must be given together, one value per channel")
        normalization = (config.mean, config.std)
    splits = load_splits(
        config.source,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        extra_train=config.extra_train,
        normalization=normalization,
        input_size=config.input_size,
        num_workers=config.num_workers,
    )
    splits = dataclasses.replace(
        splits, fingerprint=preprocessing_fingerprint(splits.fingerprint, config.preprocessing())
    )
    if teacher is not None and student is not None and warm is None:
        facts = preflight(
            teacher=NetChoice(teacher.arch, teacher.kwargs, teacher.feature_layer),
            student=NetChoice(student.arch, student.kwargs, student.feature_layer),
            input_shape=splits.input_shape,
            num_classes=splits.num_classes,
            teacher_weights=teacher.weights,
            feature_matching=student.beta > 0,
        )
        log_metadata({"preflight": facts})
    if warm is not None:
        warm.check_fits(splits)
    log_metadata(
        {
            "data_fingerprint": splits.fingerprint,
            "source": config.source,
            "extra_train": list(config.extra_train),
            "train_samples": len(splits.y_train),
        }
    )
    return splits

"""Step: load and split the data set named in the config, fingerprinted for lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from zenml import log_metadata, step

from ml.config import DataConfig
from ml.data import DataSplits, load_splits
from ml.warmstart import load_warm_start
from steps.materializers import DataSplitsMaterializer


@step(output_materializers=DataSplitsMaterializer)
def load_data(config: DataConfig, init_weights: Path | None = None) -> Annotated[DataSplits, "splits"]:
    """Load ``config.source`` (digits, an image folder, an .npz or synthetic-glyphs) and split it.

    ``config.extra_train`` sources join the training split only. A fine-tune (``init_weights``) keeps the
    input normalisation its parent was trained with, so the parent's weights see inputs on the same scale.
    """
    warm = load_warm_start(init_weights) if init_weights is not None else None
    splits = load_splits(
        config.source,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        extra_train=config.extra_train,
        normalization=warm.normalization if warm is not None else None,
    )
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

"""Step: load and split the data set named in the config, fingerprinted for lineage."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step

from ml.config import DataConfig
from ml.data import DataSplits, load_dataset, split
from steps.materializers import DataSplitsMaterializer


@step(output_materializers=DataSplitsMaterializer)
def load_data(config: DataConfig) -> Annotated[DataSplits, "splits"]:
    """Load ``config.source`` (digits, an image folder, an .npz or synthetic-glyphs) and split it."""
    x, y, class_names = load_dataset(config.source)
    splits = split(
        x,
        y,
        class_names,
        name=config.source,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
    )
    log_metadata({"data_fingerprint": splits.fingerprint, "source": config.source})
    return splits

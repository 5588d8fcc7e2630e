"""ZenML materializers for EdgeFleet's own artifact types.

``DataSplits`` is stored as one compressed ``.npz`` of its arrays plus a JSON header, so the artifact store
holds plain, inspectable files rather than a pickle.
"""

from __future__ import annotations

# Artifact-store URIs may be remote (s3://...), so they are joined as strings, not as local Paths.
# ruff: noqa: PTH118
import json
import os
from typing import Any, ClassVar

import numpy as np
from zenml.enums import ArtifactType
from zenml.materializers.base_materializer import BaseMaterializer
from zenml.metadata.metadata_types import MetadataType

from ml.data import DataSplits

_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


class DataSplitsMaterializer(BaseMaterializer):
    """Stores ``DataSplits`` as ``splits.npz`` + ``splits.json``."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (DataSplits,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def load(self, data_type: type[Any]) -> DataSplits:
        with self.artifact_store.open(os.path.join(self.uri, "splits.json"), "r") as handle:
            header = json.load(handle)
        with self.artifact_store.open(os.path.join(self.uri, "splits.npz"), "rb") as handle:
            arrays = np.load(handle)
            loaded = {name: np.array(arrays[name]) for name in _ARRAYS}
        return DataSplits(
            name=header["name"],
            num_classes=int(header["num_classes"]),
            class_names=tuple(header["class_names"]),
            fingerprint=header["fingerprint"],
            channel_mean=tuple(header["channel_mean"]),
            channel_std=tuple(header["channel_std"]),
            **loaded,
        )

    def save(self, data: DataSplits) -> None:
        header = {
            "name": data.name,
            "num_classes": data.num_classes,
            "class_names": list(data.class_names),
            "fingerprint": data.fingerprint,
            "channel_mean": list(data.channel_mean),
            "channel_std": list(data.channel_std),
        }
        with self.artifact_store.open(os.path.join(self.uri, "splits.json"), "w") as handle:
            json.dump(header, handle)
        with self.artifact_store.open(os.path.join(self.uri, "splits.npz"), "wb") as handle:
            np.savez_compressed(handle, **{name: getattr(data, name) for name in _ARRAYS})

    def extract_metadata(self, data: DataSplits) -> dict[str, MetadataType]:
        return {
            "fingerprint": data.fingerprint,
            "train_samples": len(data.y_train),
            "val_samples": len(data.y_val),
            "test_samples": len(data.y_test),
            "num_classes": data.num_classes,
        }

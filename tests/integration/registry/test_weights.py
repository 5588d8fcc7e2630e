"""Torch weights in the registry, for ``init_from`` fine-tunes, against a real MLflow SQLite store.

A version registered with ``weights_dir`` (and a teacher logged with its own) gives the files back through
``fetch_weights``, and the modules rebuilt from them compute exactly what the originals did. Every way an
``init_from`` can be wrong ends in a typed error whose message names the URI; the versions of the shared
fixture store were registered without weights, like versions from before EdgeFleet kept them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import Result

from ml.data import DataSplits, load_digits, split
from ml.nets import STUDENT_SPEC, TEACHER_SPEC, build_net
from ml.prune import prune_structured
from ml.train import predict
from ml.warmstart import MODEL_STEM, TEACHER_STEM, copy_net, load_warm_start, save_net, write_origin
from registry.errors import ModelNotFoundError, RegistryError, WeightsNotFoundError
from registry.fetch import check_weights, fetch_weights
from registry.lineage import Lineage
from registry.store import RegisteredVersion, log_teacher, register_variant, use_tracking_uri

from .conftest import GATES, LINEAGE, MODEL, VERSIONS, Store, metrics_for, tiny_onnx

NEXT = str(len(VERSIONS) + 1)


@pytest.fixture(scope="module")
def splits() -> DataSplits:
    x, y, names = load_digits()
    return split(x, y, names, name="digits", seed=0)


def _register_with_weights(
    store: Store, tmp_path: Path, splits: DataSplits, *, teacher_weights: bool = True, init_from: str = ""
) -> tuple[RegisteredVersion, dict[str, np.ndarray]]:
    """Register a version the way the training pipeline does: teacher with weights, version with weights."""
    use_tracking_uri(store.uri)
    teacher = build_net(TEACHER_SPEC, in_channels=1, num_classes=10).eval()
    student = prune_structured(build_net(STUDENT_SPEC, in_channels=1, num_classes=10), 0.25).eval()
    variants = tmp_path / "variants"
    save_net(teacher, variants, "teacher-fp32", variant="teacher-fp32", splits=splits)
    save_net(student, variants, "student-structured-fp32", variant="student-structured-fp32", splits=splits)
    copy_net(variants, "teacher-fp32", tmp_path / "teacher", TEACHER_STEM)
    copy_net(
        variants,
        "student-structured-fp32",
        tmp_path / "model",
        MODEL_STEM,
        deployed_variant="student-structured-int8-static",
    )
    experiment = store.client.get_experiment_by_name("edgefleet-training")
    assert experiment is not None
    onnx_file = tiny_onnx(tmp_path / "v.onnx", 42.0)
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        teacher_id = log_teacher(
            onnx_file,
            metrics={"test_accuracy": 0.99},
            experiment_name="edgefleet-training",
            weights_dir=tmp_path / "teacher" if teacher_weights else None,
        )
        lineage = Lineage(
            git_commit=LINEAGE.git_commit,
            git_dirty=False,
            data_fingerprint=splits.fingerprint,
            config_hash="cfg-hash-2",
            pipeline_run_id="zenml-run-43",
            teacher_model_id=teacher_id,
            init_from=init_from,
        )
        registered = register_variant(
            model_name=MODEL,
            profile="cpu-int8-small",
            variant="student-structured-int8-static",
            onnx_path=onnx_file,
            parent_path=onnx_file,
            metrics=metrics_for(0.97, 0.5),
            params={"variant": "student-structured-int8-static"},
            lineage=lineage,
            gates=GATES,
            weights_dir=tmp_path / "model",
        )
    logits = {"teacher": predict(teacher, splits.x_test), "student": predict(student, splits.x_test)}
    return registered, logits


def test_a_version_gives_back_the_weights_it_was_made_from(
    store: Store, tmp_path: Path, splits: DataSplits
) -> None:
    registered, logits = _register_with_weights(store, tmp_path / "reg", splits)
    assert registered.version == NEXT
    assert store.tags(NEXT)["edgefleet.torch_weights"] == "torch"
    fetched = fetch_weights(f"models:/{MODEL}@candidate", tmp_path / "fetched", tracking_uri=store.uri)
    assert fetched.facts.model_uri == f"models:/{MODEL}/{NEXT}"
    assert sorted(p.name for p in fetched.folder.iterdir()) == [
        "model.json",
        "model.pt",
        "teacher.json",
        "teacher.pt",
    ]
    write_origin(fetched.folder, requested=f"models:/{MODEL}@candidate", source=fetched.facts.model_uri)
    warm = load_warm_start(fetched.folder)
    assert warm.student.card.deployed_variant == "student-structured-int8-static"
    np.testing.assert_array_equal(predict(warm.fresh_student(), splits.x_test), logits["student"])
    np.testing.assert_array_equal(predict(warm.fresh_teacher(), splits.x_test), logits["teacher"])


@pytest.mark.parametrize(
    ("uri", "error", "fragments"),
    [
        (f"models:/{MODEL}/1", WeightsNotFoundError, (f"models:/{MODEL}/1", "stores no torch weights")),
        (
            f"models:/{MODEL}@candidate",
            WeightsNotFoundError,
            (f"models:/{MODEL}@candidate (version {len(VERSIONS)})", "stores no torch weights"),
        ),
        (f"models:/{MODEL}/99", ModelNotFoundError, (f"cannot fine-tune from models:/{MODEL}/99", "'99'")),
        ("models:/no-such-model@production", ModelNotFoundError, ("models:/no-such-model@production",)),
        ("runs:/0123/model", RegistryError, ("'runs:/0123/model' is not a registry model URI",)),
    ],
)
def test_a_bad_init_from_is_a_typed_error_naming_it(
    store: Store, tmp_path: Path, uri: str, error: type[Exception], fragments: tuple[str, ...]
) -> None:
    with pytest.raises(error) as caught:
        fetch_weights(uri, tmp_path / "fetched", tracking_uri=store.uri)
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert not (tmp_path / "fetched").exists()  # nothing downloaded for a refused URI


def test_a_teacher_without_weights_is_refused(store: Store, tmp_path: Path, splits: DataSplits) -> None:
    _register_with_weights(store, tmp_path / "reg", splits, teacher_weights=False)
    with pytest.raises(
        WeightsNotFoundError, match=f"models:/{MODEL}/{NEXT}: its teacher m-.* stores no torch"
    ):
        check_weights(f"models:/{MODEL}/{NEXT}", tracking_uri=store.uri)


def test_show_names_the_parent_and_lists_the_weights(
    store: Store, cli: Callable[..., Result], tmp_path: Path, splits: DataSplits
) -> None:
    _register_with_weights(store, tmp_path / "reg", splits, init_from=f"models:/{MODEL}/2")
    result = cli("show", MODEL, NEXT)
    assert result.exit_code == 0, result.output
    assert "init_from" in result.output and f"models:/{MODEL}/2" in result.output
    assert "torch/model.pt" in result.output and "torch/model.json" in result.output

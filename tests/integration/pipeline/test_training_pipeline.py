"""The training pipeline run as users run it (`zenml pipeline run ... -c configs/ci.yaml`), on a fresh
project-local ZenML store and a SQLite MLflow store, then the registry state read back through MLflow.

One module-scoped run feeds every assertion; the impossible-gate run reuses its cached steps.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ml.data import fingerprint, load_digits

from .conftest import Stack

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
MODEL = "edgefleet-digits-ci-cpu-int8-small"
pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def project(stack: Stack) -> dict[str, object]:
    run = stack.run_pipeline("configs/ci.yaml")
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    return {"home": stack.home, "env": stack.env, "uri": stack.uri, "client": stack.client}


def test_stack_init_is_idempotent(project: dict[str, object]) -> None:
    again = _run([str(BIN / "edgefleet"), "stack", "init"], project["env"])  # type: ignore[arg-type]
    assert again.returncode == 0
    assert "already registered" in again.stdout


def test_candidate_alias_points_at_a_version_with_metrics(project: dict[str, object]) -> None:
    client: MlflowClient = project["client"]  # type: ignore[assignment]
    version = client.get_model_version_by_alias(MODEL, "candidate")
    tags = version.tags
    assert tags["edgefleet.profile"] == "cpu-int8-small"
    # the ci profile's size gate (≤ 64 KiB) only INT8 students pass
    assert "int8" in tags["edgefleet.variant"], tags["edgefleet.variant"]
    for metric in ("accuracy", "p50_ms", "p95_ms", "p99_ms", "size_kb", "throughput_sps", "cold_start_ms"):
        assert float(tags[f"edgefleet.metric.{metric}"]) > 0, metric
    assert float(tags["edgefleet.metric.size_kb"]) <= 64
    assert float(tags["edgefleet.metric.accuracy"]) >= 0.80
    assert float(tags["edgefleet.metric.speedup_vs_teacher_p50"]) > 1


def test_lineage_tags_name_the_data_code_config_run_and_teacher(project: dict[str, object]) -> None:
    client: MlflowClient = project["client"]  # type: ignore[assignment]
    tags = client.get_model_version_by_alias(MODEL, "candidate").tags
    x, y, _ = load_digits()
    assert tags["edgefleet.lineage.data_fingerprint"] == fingerprint(x, y)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert tags["edgefleet.lineage.git_commit"] == head
    assert tags["edgefleet.lineage.git_dirty"] in ("true", "false")
    assert len(tags["edgefleet.lineage.config_hash"]) == 64
    assert len(tags["edgefleet.lineage.pipeline_run_id"]) == 36
    teacher = client.get_logged_model(tags["edgefleet.lineage.teacher_model_id"])
    assert teacher.name == "teacher"


def test_artifacts_hold_the_benchmarked_onnx_its_parent_card_and_plots(project: dict[str, object]) -> None:
    client: MlflowClient = project["client"]  # type: ignore[assignment]
    version = client.get_model_version_by_alias(MODEL, "candidate")
    model_id = version.source.removeprefix("models:/")
    folder = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    onnx_file = folder / "model.onnx"
    assert hashlib.sha256(onnx_file.read_bytes()).hexdigest() == version.tags["edgefleet.sha256"]
    extra = {p.name for p in (folder / "extra_files").iterdir()}
    assert {"model_card.md", "confusion_matrix.png", "latency_histogram.png", "pareto.png"} <= extra
    parents = [name for name in extra if name.endswith("-fp32.onnx")]
    assert parents, f"no FP32 parent among {extra}"
    card = (folder / "extra_files" / "model_card.md").read_text()
    assert version.tags["edgefleet.lineage.data_fingerprint"] in card


def test_impossible_gate_fails_the_run_with_the_table_and_registers_nothing(
    project: dict[str, object], tmp_path: Path
) -> None:
    client: MlflowClient = project["client"]  # type: ignore[assignment]
    before = {(v.name, v.version) for v in client.search_model_versions()}
    document = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    document["parameters"]["config"]["profiles"] = {
        "impossible": {"min_accuracy": 0.999999, "max_p99_ms": 0.000001, "max_size_kb": 0.001}
    }
    config = tmp_path / "impossible.yaml"
    config.write_text(yaml.safe_dump(document))
    run = _run(
        [str(BIN / "zenml"), "pipeline", "run", "pipelines.training.training_pipeline", "-c", str(config)],
        project["env"],  # type: ignore[arg-type]
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "GateError" in output
    assert "no variant passes every gate of profile 'impossible'" in output
    assert "max_size_kb" in output and "FAIL" in output
    assert {(v.name, v.version) for v in client.search_model_versions()} == before


def test_summary_prints_variants_and_the_registered_version(project: dict[str, object]) -> None:
    summary = _run([str(BIN / "edgefleet"), "pipeline", "summary"], project["env"])  # type: ignore[arg-type]
    assert summary.returncode == 0, summary.stderr
    assert "teacher-torch-eager" in summary.stdout
    assert "student-int8-static" in summary.stdout
    assert MODEL in summary.stdout and "candidate" in summary.stdout
    assert "mlflow ui --backend-store-uri" in summary.stdout


def test_make_run_command_path_reuses_the_cache_and_registers_no_duplicate(
    project: dict[str, object],
) -> None:
    """`make run` (stack init, `zenml pipeline run`, summary) on the same inputs: no second version."""
    client: MlflowClient = project["client"]  # type: ignore[assignment]
    before = {(v.name, v.version) for v in client.search_model_versions()}
    make = _run(
        ["make", "train", "CONFIG=configs/ci.yaml", f"STATE={project['home']}"],
        project["env"],  # type: ignore[arg-type]
    )
    assert make.returncode == 0, (make.stdout + make.stderr)[-4000:]
    assert "zenml pipeline run pipelines.training.training_pipeline -c configs/ci.yaml" in make.stdout
    assert "Registered in MLflow" in make.stdout
    assert {(v.name, v.version) for v in client.search_model_versions()} == before


def _fine_tune_config(tmp_path: Path, init_from: str, field: Path) -> Path:
    document = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    config = document["parameters"]["config"]
    config["init_from"] = init_from
    config["data"]["extra_train"] = [str(field)]
    config["teacher"].update(epochs=1, lr=0.0003, patience=1)
    config["student"]["train"].update(epochs=2, lr=0.0003, patience=2)
    path = tmp_path / "fine-tune.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _conv_weight_shapes(client: MlflowClient, version: str) -> list[tuple[int, ...]]:
    import onnx
    from onnx import numpy_helper

    model_id = client.get_model_version(MODEL, version).source.removeprefix("models:/")
    folder = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    graph = onnx.load(str(folder / "model.onnx")).graph
    weights = {t.name: numpy_helper.to_array(t).shape for t in graph.initializer}
    inputs = [n.input for n in graph.node if n.op_type == "DequantizeLinear"]
    return sorted(weights[i[0]] for i in inputs if i[0] in weights and len(weights[i[0]]) == 4)


def test_fine_tune_starts_from_the_parent_and_records_it(project: dict[str, object], tmp_path: Path) -> None:
    """init_from + field data: a new version whose lineage names its parent, on new data, same graph."""
    from ml.field import make_field_set, write_npz

    client: MlflowClient = project["client"]  # type: ignore[assignment]
    parent = client.get_model_version_by_alias(MODEL, "candidate")
    assert parent.tags["edgefleet.torch_weights"] == "torch"  # every version now keeps its torch weights
    field = write_npz(tmp_path / "field.npz", make_field_set("digits", count=200, seed=1))
    config = _fine_tune_config(tmp_path, f"models:/{MODEL}@candidate", field)
    run = _run(
        [str(BIN / "zenml"), "pipeline", "run", "pipelines.training.training_pipeline", "-c", str(config)],
        project["env"],  # type: ignore[arg-type]
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    child = client.get_model_version_by_alias(MODEL, "candidate")
    assert int(child.version) == int(parent.version) + 1
    tags = child.tags
    assert tags["edgefleet.lineage.init_from"] == f"models:/{MODEL}/{parent.version}"
    assert tags["edgefleet.lineage.data_fingerprint"] != parent.tags["edgefleet.lineage.data_fingerprint"]
    # not pruned again, re-quantized the way the parent was: the same graph with other weights
    assert tags["edgefleet.variant"] == parent.tags["edgefleet.variant"]
    assert _conv_weight_shapes(client, child.version) == _conv_weight_shapes(client, parent.version)
    assert tags["edgefleet.sha256"] != parent.tags["edgefleet.sha256"]
    assert tags["edgefleet.torch_weights"] == "torch"
    assert "no pruning" in run.stdout + run.stderr
    # the parent's teacher, reused unchanged (init_teacher: reuse), keeps its registry identity
    assert tags["edgefleet.lineage.teacher_model_id"] == parent.tags["edgefleet.lineage.teacher_model_id"]


def test_bad_init_from_fails_the_run_naming_it_and_registers_nothing(
    project: dict[str, object], tmp_path: Path
) -> None:
    client: MlflowClient = project["client"]  # type: ignore[assignment]
    before = {(v.name, v.version) for v in client.search_model_versions()}
    uri = f"models:/{MODEL}/99"
    config = _fine_tune_config(tmp_path, uri, tmp_path / "never-read.npz")
    run = _run(
        [str(BIN / "zenml"), "pipeline", "run", "pipelines.training.training_pipeline", "-c", str(config)],
        project["env"],  # type: ignore[arg-type]
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "fetch_init_weights" in output
    assert f"cannot fine-tune from {uri}: {MODEL} has no version or alias '99'" in output
    assert {(v.name, v.version) for v in client.search_model_versions()} == before

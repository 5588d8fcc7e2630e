"""Step: register the selected variant of every profile in MLflow, with lineage, card, plots and alias.

Runs under the stack's MLflow experiment tracker (``configs/*.yaml`` sets it on this step), so its MLflow
run is linked to the ZenML step, and the ZenML Model Control Plane version gets the MLflow URIs as metadata.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from torch import nn
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from ml.benchmark import BenchmarkResult
from ml.config import TrainingPipelineConfig
from ml.data import DataSplits
from ml.evaluate import confusion_matrix, onnx_predict
from ml.gates import GateResult, Selection
from ml.report import write_report
from ml.variants import load_manifest
from registry.lineage import Lineage, config_hash, git_state
from registry.store import log_teacher, register_variant

logger = get_logger(__name__)


def _selection(raw: dict[str, Any]) -> Selection:
    return Selection(
        profile=raw["profile"],
        variant=raw["variant"],
        p50_ms=raw["p50_ms"],
        gates=tuple(GateResult(**g) for g in raw["gates"]),
        all_results={k: tuple(GateResult(**g) for g in v) for k, v in raw["all_results"].items()},
    )


def registered_name(model_name: str, profile: str) -> str:
    """One registered model per profile: ``<model_name>-<profile>``."""
    return f"{model_name}-{profile}"


@step
def register_models(
    splits: DataSplits,
    teacher: nn.Module,
    teacher_metrics: dict[str, float],
    student_metrics: dict[str, float],
    ablation_metrics: dict[str, float] | None,
    variants: Path,
    benchmark: list[dict[str, Any]],
    selections: dict[str, dict[str, Any]],
    config: TrainingPipelineConfig,
) -> Annotated[dict[str, dict[str, str]], "registered_versions"]:
    """Log the teacher, write the model card and plots, register one version per profile as ``candidate``."""
    manifest = load_manifest(variants).by_name()
    results = [BenchmarkResult(**row) for row in benchmark]
    by_result = {r.name: r for r in results}
    chosen = [_selection(raw) for raw in selections.values()]
    run_id = str(get_step_context().pipeline_run.id)
    commit, dirty = git_state()
    # Card and plots only need to live until MLflow has copied them; the finalizer removes the folder
    # even if registration fails.
    scratch_dir = tempfile.TemporaryDirectory(prefix="edgefleet-register-")
    scratch = Path(scratch_dir.name)
    teacher_onnx = variants / manifest["teacher-fp32"].file
    teacher_id = log_teacher(teacher_onnx, metrics=teacher_metrics, experiment_name="edgefleet-training")
    lineage = Lineage(
        git_commit=commit,
        git_dirty=dirty,
        data_fingerprint=splits.fingerprint,
        config_hash=config_hash(config.model_dump(mode="json")),
        pipeline_run_id=run_id,
        teacher_model_id=teacher_id,
    )
    kd_notes: list[str] = []
    kd_metrics: dict[str, float] = {"student_kd_accuracy": student_metrics["test_accuracy"]}
    if ablation_metrics is not None:
        gain = student_metrics["test_accuracy"] - ablation_metrics["test_accuracy"]
        kd_metrics |= {"student_label_only_accuracy": ablation_metrics["test_accuracy"], "kd_gain": gain}
        kd_notes.append(f"Knowledge distillation gain over the label-only student: {gain * 100:+.2f} pp.")
    registered: dict[str, dict[str, str]] = {}
    for selection in chosen:
        info = manifest[selection.variant]
        onnx_path = variants / info.file
        parent_path = variants / manifest[info.parent].file if info.parent else onnx_path
        logits = onnx_predict(onnx_path, splits.x_test)
        report = write_report(
            scratch / selection.profile,
            title=f"{registered_name(config.model_name, selection.profile)} ({selection.variant})",
            results=results,
            selections=[selection],
            confusion=confusion_matrix(splits.y_test, np.argmax(logits, axis=1), splits.num_classes),
            class_names=splits.class_names,
            teacher_accuracy=teacher_metrics["test_accuracy"],
            lineage={k.removeprefix("edgefleet.lineage."): v for k, v in lineage.as_tags().items()},
            data_description=f"{splits.name}: {len(splits.y_train)} train / {len(splits.y_val)} val / "
            f"{len(splits.y_test)} test samples, {splits.num_classes} classes.",
            notes=kd_notes,
        )
        metrics = {
            **by_result[selection.variant].metrics(),
            "accuracy_drop_vs_teacher": teacher_metrics["test_accuracy"] - (info.accuracy or 0.0),
            "teacher_accuracy": teacher_metrics["test_accuracy"],
            "teacher_p50_ms": by_result["teacher-torch-eager"].p50_ms,
            "speedup_vs_teacher_p50": by_result["teacher-torch-eager"].p50_ms
            / by_result[selection.variant].p50_ms,
            **kd_metrics,
        }
        version = register_variant(
            model_name=registered_name(config.model_name, selection.profile),
            profile=selection.profile,
            variant=selection.variant,
            onnx_path=onnx_path,
            parent_path=parent_path,
            metrics=metrics,
            params={
                "variant": selection.variant,
                "data_source": splits.name,
                "input_shape": str(splits.input_shape),
            },
            lineage=lineage,
            gates=config.profiles[selection.profile].model_dump(),
            extra_files=report.all(),
        )
        verb = "registered" if version.created else "unchanged, already registered as"
        logger.info(
            "%s: %s %s version %s (alias candidate)", selection.profile, verb, version.name, version.version
        )
        registered[selection.profile] = {
            "name": version.name,
            "version": version.version,
            "model_uri": version.model_uri,
            "run_id": version.run_id,
            "variant": selection.variant,
            "created": str(version.created).lower(),
        }
    log_metadata(metadata={"mlflow_versions": registered}, infer_model=True)
    scratch_dir.cleanup()
    return registered

"""Step: register the selected variant of every profile in MLflow, with lineage, card, plots and alias.

Runs under the stack's MLflow experiment tracker (``configs/*.yaml`` sets it on this step), so its MLflow
run is linked to the ZenML step, and the ZenML Model Control Plane version gets the MLflow URIs as metadata.

Each version also keeps the torch module its ONNX file was made from (the FP32 parent of the shipped
variant, e.g. the structurally pruned student) and the teacher keeps its own, so that a later run can
fine-tune them (``init_from``). A fine-tune records its parent as ``edgefleet.lineage.init_from``.
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
from ml.variants import VariantInfo, load_manifest
from ml.warmstart import MODEL_STEM, TEACHER_STEM, copy_net, load_warm_start
from registry.lineage import Lineage, config_hash, git_state
from registry.store import log_teacher, register_variant, registered_name

logger = get_logger(__name__)


def _selection(raw: dict[str, Any]) -> Selection:
    return Selection(
        profile=raw["profile"],
        variant=raw["variant"],
        p50_ms=raw["p50_ms"],
        gates=tuple(GateResult(**g) for g in raw["gates"]),
        all_results={k: tuple(GateResult(**g) for g in v) for k, v in raw["all_results"].items()},
        reason=raw.get("reason", ""),
    )


def fp32_parent(manifest: dict[str, VariantInfo], variant: str) -> VariantInfo:
    """The FP32 variant a shipped variant was made from (itself if it is FP32)."""
    info = manifest[variant]
    return info if info.kind == "fp32" or info.parent is None else manifest[info.parent]


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
    init_weights: Path | None = None,
    training_facts: dict[str, str] | None = None,
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
    warm = load_warm_start(init_weights) if init_weights is not None else None
    if warm is not None and config.init_teacher == "reuse" and warm.teacher_model_id:
        teacher_id = warm.teacher_model_id  # the parent's teacher, unchanged: the same registry identity
    else:
        teacher_info = manifest["teacher-fp32"]
        teacher_weights = None
        if teacher_info.torch_weights:
            copy_net(variants, teacher_info.torch_weights, scratch / "teacher-weights", TEACHER_STEM)
            teacher_weights = scratch / "teacher-weights"
        teacher_id = log_teacher(
            variants / teacher_info.file,
            metrics=teacher_metrics,
            experiment_name="edgefleet-training",
            weights_dir=teacher_weights,
        )
    lineage = Lineage(
        git_commit=commit,
        git_dirty=dirty,
        data_fingerprint=splits.fingerprint,
        config_hash=config_hash(config.model_dump(mode="json")),
        pipeline_run_id=run_id,
        teacher_model_id=teacher_id,
        init_from=warm.source if warm is not None else "",
        teacher_arch=config.teacher.arch,
        student_arch=config.student.arch,
        teacher_weights_sha256=(training_facts or {}).get("teacher_weights_sha256", ""),
        device=(training_facts or {}).get("device", ""),
        gpu_name=(training_facts or {}).get("gpu_name", ""),
        precision=(training_facts or {}).get("precision", ""),
    )
    card_notes: list[str] = []
    if warm is not None:
        teacher_note = "reused unchanged" if config.init_teacher == "reuse" else "fine-tuned first"
        card_notes.append(
            f"Fine-tuned from {warm.source} (init_from {warm.requested}): the student started from its "
            f"weights and was not pruned again; the parent's teacher was {teacher_note}."
        )
    kd_metrics: dict[str, float] = {"student_kd_accuracy": student_metrics["test_accuracy"]}
    if ablation_metrics is not None:
        gain = student_metrics["test_accuracy"] - ablation_metrics["test_accuracy"]
        kd_metrics |= {"student_label_only_accuracy": ablation_metrics["test_accuracy"], "kd_gain": gain}
        card_notes.append(f"Knowledge distillation gain over the label-only student: {gain * 100:+.2f} pp.")
    extra_data = f" + {', '.join(config.data.extra_train)} (training only)" if config.data.extra_train else ""
    registered: dict[str, dict[str, str]] = {}
    for selection in chosen:
        if selection.reason:
            logger.info("%s ships %s", selection.profile, selection.reason)
        info = manifest[selection.variant]
        onnx_path = variants / info.file
        parent_path = variants / manifest[info.parent].file if info.parent else onnx_path
        source = fp32_parent(manifest, selection.variant)
        weights_dir = None
        if source.torch_weights:
            weights_dir = scratch / f"{selection.profile}-weights"
            copy_net(
                variants, source.torch_weights, weights_dir, MODEL_STEM, deployed_variant=selection.variant
            )
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
            data_description=f"{splits.name}{extra_data}: {len(splits.y_train)} train / "
            f"{len(splits.y_val)} val / {len(splits.y_test)} test samples, {splits.num_classes} classes.",
            notes=card_notes,
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
                "extra_train": ",".join(config.data.extra_train) or "-",
                "input_shape": str(splits.input_shape),
                "init_from": lineage.init_from or "-",
            },
            lineage=lineage,
            gates=config.profiles[selection.profile].model_dump(),
            extra_files=report.all(),
            weights_dir=weights_dir,
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
            "init_from": lineage.init_from,
        }
    log_metadata(metadata={"mlflow_versions": registered}, infer_model=True)
    scratch_dir.cleanup()
    return registered

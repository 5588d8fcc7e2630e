"""The training pipeline: data → teacher → student (KD) → pruned → ONNX → INT8 → benchmark → gates → MLflow.

Run it as users do::

    zenml pipeline run pipelines.training.training_pipeline -c configs/default.yaml

Wiring only: every parameter comes from the YAML's ``parameters.config`` block (validated by
``ml.config.TrainingPipelineConfig``) and every step is a thin wrapper over ``ml/`` or ``registry/``.
"""

from __future__ import annotations

from pipelines.paths import configure_environment

configure_environment()

from zenml import pipeline  # noqa: E402  (ZENML_CONFIG_PATH must be set before zenml loads)

from ml.config import TrainingPipelineConfig  # noqa: E402
from steps.benchmark_variants import benchmark_variants  # noqa: E402
from steps.build_variants import build_variants  # noqa: E402
from steps.distill_student import distill_student, train_label_only_student  # noqa: E402
from steps.load_data import load_data  # noqa: E402
from steps.register_models import register_models  # noqa: E402
from steps.select_variants import select_variants  # noqa: E402
from steps.train_teacher import train_teacher  # noqa: E402


@pipeline(enable_cache=True)
def training_pipeline(config: TrainingPipelineConfig = TrainingPipelineConfig()) -> None:  # noqa: B008
    """Train, distil, prune, quantize, benchmark, gate and register one model family."""
    splits = load_data(config.data)
    teacher, teacher_metrics = train_teacher(splits, config.teacher)
    student, student_metrics = distill_student(splits, teacher, config.student)
    ablation = train_label_only_student(splits, config.student) if config.student.ablation else None
    variants = build_variants(splits, teacher, student, config.prune, config.quantize)
    benchmark = benchmark_variants(splits, teacher, teacher_metrics, variants, config.benchmark)
    selections = select_variants(benchmark, teacher_metrics, config.profiles)
    register_models(
        splits,
        teacher,
        teacher_metrics,
        student_metrics,
        ablation,
        variants,
        benchmark,
        selections,
        config,
    )

"""The training pipeline: data → teacher → student (KD) → pruned → ONNX → INT8 → benchmark → gates → MLflow.

Run it as users do::

    zenml pipeline run pipelines.training.training_pipeline -c configs/default.yaml

Wiring only: every parameter comes from the YAML's ``parameters.config`` block (validated by
``ml.config.TrainingPipelineConfig``) and every step is a thin wrapper over ``ml/`` or ``registry/``.

With ``init_from: models:/NAME@ALIAS`` (or ``/VERSION``) the run is a fine-tune: ``fetch_init_weights``
fetches that version's teacher and student weights, and the training steps start from them instead of
random weights (see ``ml.warmstart``): the teacher is reused (or fine-tuned, ``init_teacher``), the
student is fine-tuned by distillation and not pruned again.
"""

from __future__ import annotations

from pipelines.paths import require_project_store

# `zenml pipeline run` has loaded ZenML before this module: if no store was chosen it is the home folder's,
# so stop here with one line that says what to run (see README, "What the two commands do").
require_project_store()

from zenml import pipeline  # noqa: E402

from ml.config import TrainingPipelineConfig  # noqa: E402
from steps.benchmark_variants import benchmark_variants  # noqa: E402
from steps.build_variants import build_variants  # noqa: E402
from steps.distill_student import distill_student, train_label_only_student  # noqa: E402
from steps.fetch_init_weights import fetch_init_weights  # noqa: E402
from steps.load_data import load_data  # noqa: E402
from steps.register_models import register_models  # noqa: E402
from steps.select_variants import select_variants  # noqa: E402
from steps.train_teacher import train_teacher  # noqa: E402


@pipeline(enable_cache=True)
def training_pipeline(config: TrainingPipelineConfig = TrainingPipelineConfig()) -> None:  # noqa: B008
    """Train (or fine-tune), distil, prune, quantize, benchmark, gate and register one model family."""
    warm = fetch_init_weights(config.init_from) if config.init_from else None
    splits = load_data(config.data, init_weights=warm, teacher=config.teacher, student=config.student)
    teacher, teacher_metrics, training_facts = train_teacher(
        splits,
        config.teacher,
        init_weights=warm,
        reuse=config.init_teacher == "reuse",
        augment=config.data.augment,
        device=config.device,
        precision=config.precision,
    )
    student, student_metrics = distill_student(
        splits,
        teacher,
        config.student,
        init_weights=warm,
        teacher_layer=config.teacher.feature_layer,
        augment=config.data.augment,
        device=config.device,
        precision=config.precision,
    )
    ablation = (
        train_label_only_student(
            splits,
            config.student,
            init_weights=warm,
            augment=config.data.augment,
            device=config.device,
            precision=config.precision,
        )
        if config.student.ablation
        else None
    )
    variants = build_variants(
        splits,
        teacher,
        student,
        config.prune,
        config.quantize,
        init_weights=warm,
        device=config.device,
        precision=config.precision,
    )
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
        init_weights=warm,
        training_facts=training_facts,
    )

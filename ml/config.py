"""Typed configuration of the model pipeline, validated from the ``parameters`` block of a config YAML.

Each section maps to one stage in ``ml/``; the ZenML steps receive these models, so a typo in a YAML key
fails the run up front with a pydantic message naming the key.

``init_from`` turns a run into a fine-tune of a registered version (see :mod:`ml.warmstart`): the student
starts from that version's stored torch weights, is not pruned again, and is re-quantized the way its parent
was; the parent's teacher is reused (or fine-tuned first, ``init_teacher``). ``data.extra_train`` adds new
samples to the training split only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Which data set to load and how to split it."""

    source: str = "digits"
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 0
    extra_train: tuple[str, ...] = Field(
        (),
        description="More sources (.npz files or image folders with the same classes and sample shape) "
        "whose samples join the training split only; validation and test stay those of `source`.",
    )
    input_size: tuple[int, int, int] | None = Field(
        None, description="(C, H, W) every sample is converted and resized to; None keeps the source's."
    )
    mean: tuple[float, ...] | None = Field(None, description="Per-channel mean in the loader's pixel scale.")
    std: tuple[float, ...] | None = Field(None, description="Per-channel std; None: the training split's.")
    augment: AugmentConfig | None = None
    num_workers: int = Field(
        0, ge=0, description="DataLoader worker processes decoding image folders (0: in the step's process)."
    )

    def preprocessing(self) -> dict[str, object]:
        """The preprocessing settings the data fingerprint covers (empty for the defaults)."""
        settings: dict[str, object] = {"input_size": self.input_size, "mean": self.mean, "std": self.std}
        if self.augment is not None:
            settings["augment"] = self.augment.model_dump()
        return {k: v for k, v in settings.items() if v is not None}


class AugmentConfig(_Section):
    """Training augmentations (``ml.augment``, torchvision.transforms.v2); validation and test never."""

    random_resized_crop: tuple[float, float] | None = None
    horizontal_flip: bool = False
    color_jitter: float = Field(0.0, ge=0)


class TrainConfig(_Section):
    """Optimiser settings of one training run."""

    epochs: int = Field(20, ge=1)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    patience: int = Field(4, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    optimizer: Literal["adam", "sgd"] = Field(
        "adam",
        description="adam, or sgd (Nesterov momentum 0.9): MobileNets train faster with sgd at lr ~0.2",
    )


class TeacherConfig(TrainConfig):
    """The teacher: its architecture (``ml.arch``), optional pretrained weights, and how to train it.

    ``weights`` is a local file (a ``state_dict``, a checkpoint with a ``state_dict`` key, or safetensors),
    loaded strictly; with ``train: false`` (or ``epochs: 0``) it is used as it is.
    """

    epochs: int = Field(20, ge=0)
    arch: str = Field(
        "edgefleet:cnn", description="edgefleet:cnn, torchvision:NAME, timm:NAME or module:callable"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor kwargs (not num_classes).")
    weights: str | None = Field(None, description="Local pretrained weights file to start from.")
    train: bool = Field(True, description="false: use the (pretrained) teacher as it is.")
    feature_layer: str | None = Field(
        None, description="Layer whose output distillation matches, e.g. layer3 (default: the CNN's block 2)."
    )

    @property
    def trains(self) -> bool:
        """Whether the teacher is trained at all (``train`` and at least one epoch)."""
        return self.train and self.epochs > 0


class DistillConfig(_Section):
    """Knowledge distillation: loss = α·T²·KL + (1−α)·CE + β·MSE(adapter(f_s), f_t)."""

    arch: str = Field(
        "edgefleet:cnn", description="edgefleet:cnn, torchvision:NAME, timm:NAME or module:callable"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor kwargs (not num_classes).")
    feature_layer: str | None = Field(
        None,
        description="Student layer matched to the teacher's, e.g. features.9 (default: the CNN's block 2).",
    )

    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)
    beta: float = Field(0.5, ge=0)
    train: TrainConfig = TrainConfig()
    ablation: bool = Field(True, description="Also train the student on labels alone and report the KD gain.")


class PruneConfig(_Section):
    """Unstructured and structured pruning of the student."""

    unstructured_sparsity: float = Field(0.5, ge=0, lt=1)
    structured_ratio: float = Field(0.25, ge=0, lt=1)
    multiple_of: int = Field(8, ge=1)
    fine_tune: TrainConfig = TrainConfig(epochs=3, lr=1e-3, patience=2)


class QuantizeConfig(_Section):
    """INT8 quantization with ONNX Runtime."""

    calibration_method: Literal["MinMax", "Entropy", "Percentile"] = "MinMax"
    calibration_size: int = Field(256, ge=1)
    per_channel: bool = True
    static: bool = Field(
        True, description="Static INT8 variants (teacher and students); false: FP32 only (e.g. GPU targets)."
    )
    dynamic: bool = True
    qat: bool = True
    qat_train: TrainConfig = TrainConfig(epochs=2, lr=5e-4, patience=2)


class BenchmarkConfig(_Section):
    """Latency and throughput measurement."""

    threads: int = Field(1, ge=1)
    runs: int = Field(1000, ge=10)
    warmup: int = Field(50, ge=1)
    throughput_batch: int = Field(64, ge=1)
    throughput_runs: int = Field(30, ge=1)


class ProfileGates(_Section):
    """A deployment target profile: the gates a variant must pass to ship to it."""

    min_accuracy: float = Field(0.0, ge=0, le=1)
    max_accuracy_drop_vs_teacher: float = Field(1.0, ge=0, le=1)
    max_p99_ms: float = Field(1e9, gt=0)
    max_size_kb: float = Field(1e12, gt=0)


# models:/NAME/VERSION or models:/NAME@ALIAS, NAME as in ``model_name`` plus a profile suffix.
INIT_FROM_PATTERN = r"^models:/[A-Za-z0-9][A-Za-z0-9._-]{0,199}(/[0-9]+|@[A-Za-z0-9][A-Za-z0-9_-]{0,99})$"


class TrainingPipelineConfig(_Section):
    """Everything the training pipeline needs; the ``parameters.config`` block of a YAML."""

    model_name: str = Field("edgefleet-digits", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    init_from: str | None = Field(
        None,
        pattern=INIT_FROM_PATTERN,
        description="Fine-tune a registered version (`models:/NAME/VERSION` or `models:/NAME@ALIAS`) "
        "instead of training from random weights: its teacher and student weights are the start, the "
        "student keeps its (pruned) architecture and zeros, and `prune` is not applied.",
    )
    init_teacher: Literal["reuse", "fine-tune"] = Field(
        "reuse",
        description="With init_from: `reuse` keeps the parent's teacher unchanged, for distillation and as "
        "the accuracy-drop gate's reference; `fine-tune` trains it first with the `teacher` settings.",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda|cuda:[0-9]+)$",
        description="Where training runs: auto (CUDA when present), cpu, cuda or cuda:N.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Training precision; bf16/fp16 are mixed precision on CUDA (CPU trains in fp32)."
    )
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: DistillConfig = DistillConfig()
    prune: PruneConfig = PruneConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    profiles: dict[str, ProfileGates] = Field(default_factory=lambda: {"cpu-int8-small": ProfileGates()})

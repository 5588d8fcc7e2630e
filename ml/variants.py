"""Build every deployable variant of a trained teacher and student, score them, and describe them.

Pipeline steps 3–5 in one plain function (see ARCHITECTURE.md), shared by the ZenML step and by
``bench/pipeline_bench.py``: prune the student (structured and unstructured, each fine-tuned), export the
FP32 models to ONNX with a parity check, quantize to INT8 (static QDQ with calibration on training data,
dynamic, and QAT), then score every variant on the held-out test split (accuracy, top-1 agreement with its
FP32 parent). The result is a folder of ``.onnx`` files plus ``variants.json``, which is what the ZenML
artifact store keeps, and the torch weights of every FP32 variant (``ml.warmstart``), which the register
step stores with a version so that a later run can fine-tune it.

A fine-tune (``init_from``) passes ``prune=None``: its student is already the parent's pruned module, so it
is exported under the parent's FP32 name and quantized only the way the parent shipped
(``ml.warmstart.student_plan``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ml.benchmark import Candidate
from ml.config import PruneConfig, QuantizeConfig, TrainConfig
from ml.data import DataSplits
from ml.device import Runtime
from ml.errors import DataError
from ml.evaluate import score_variant
from ml.export import check_parity, export_onnx
from ml.nets import ConvNet
from ml.prune import prune_report, prune_structured, prune_unstructured
from ml.quantize import export_qat, prepare_qat, quantize_dynamic_int8, quantize_static_int8
from ml.report import write_atomic
from ml.train import fit_splits
from ml.warmstart import INT8_KINDS, can_save, save_net

MANIFEST = "variants.json"
Log = Callable[[str], None]


@dataclass(frozen=True)
class VariantInfo:
    """One ONNX variant in a variants folder."""

    name: str
    file: str
    kind: str
    parent: str | None
    accuracy: float
    agreement_with_parent: float | None = None
    parity_max_abs_diff: float | None = None
    torch_weights: str | None = None  # FP32 variants: stem of the ``.pt``/``.json`` pair (ml.warmstart)


@dataclass(frozen=True)
class VariantManifest:
    """The contents of a variants folder: the variants and the pruning report rows."""

    variants: tuple[VariantInfo, ...]
    input_shape: tuple[int, int, int]
    pruning: tuple[tuple[str, str, float, float, float], ...] = field(default=())
    skipped: tuple[tuple[str, str], ...] = field(default=())
    """``(variant, "skipped: reason")``: variants the config asked for that this network cannot have."""

    def by_name(self) -> dict[str, VariantInfo]:
        """Variants keyed by name."""
        return {v.name: v for v in self.variants}


def _fine_tuner(
    splits: DataSplits, config: TrainConfig, runtime: Runtime | None = None
) -> Callable[[nn.Module], object]:
    def fine_tune(model: nn.Module) -> object:
        return fit_splits(model, splits, config, runtime=runtime)

    return fine_tune


def build_variants(
    *,
    teacher: nn.Module,
    student: nn.Module,
    splits: DataSplits,
    folder: Path,
    prune: PruneConfig | None,
    quantize: QuantizeConfig,
    student_name: str = "student-fp32",
    student_int8: Collection[str] | None = None,
    threads: int = 1,
    log: Log = lambda _message: None,
    calibration_progress: Callable[[str], Callable[[int, int], None] | None] = lambda _name: None,
    runtime: Runtime | None = None,
) -> VariantManifest:
    """Prune, export, quantize and score; write the ONNX files and ``variants.json`` into ``folder``.

    Args:
        teacher: The trained teacher (FP32 parent of the teacher variants, and the latency baseline).
        student: The distilled student.
        splits: The data: training inputs calibrate and fine-tune; the test split scores.
        folder: Output folder (created).
        prune: Pruning settings; None for a student that is already final (a fine-tune of a pruned
            parent), which is then exported and quantized as it is.
        quantize: Quantization settings.
        student_name: The student's FP32 variant name (a fine-tune keeps its parent's, e.g.
            ``student-structured-fp32``).
        student_int8: INT8 kinds to make of the student (``ml.warmstart.INT8_KINDS``); None makes the
            configured ones (static always, dynamic and QAT if ``quantize`` says so).
        threads: ONNX Runtime threads for scoring.
        log: Receives one line per stage.
        calibration_progress: Given a variant name, returns the ``progress(done, total)`` callback its
            calibration reports to (or None).
        runtime: Device and precision of the pruning and QAT fine-tunes (``ml.device``); CPU by default.

    Returns:
        The manifest that was written.

    Raises:
        PruningError, ExportError, QuantizationError: A stage failed (see ``ml.errors``).
        DataError: ``student_name`` is not an FP32 name, or ``student_int8`` names an unknown kind.
    """
    if not student_name.endswith("-fp32") or student_name.startswith("teacher"):
        raise DataError(f"the student's variant name must end in -fp32, got {student_name!r}")
    kinds = tuple(student_int8) if student_int8 is not None else _configured_kinds(quantize)
    unknown = sorted(set(kinds) - set(INT8_KINDS))
    if unknown:
        raise DataError(f"unknown INT8 kinds {unknown}; expected some of {list(INT8_KINDS)}")
    folder.mkdir(parents=True, exist_ok=True)
    shape = splits.input_shape
    teacher.eval()
    student.eval()
    fp32_models: dict[str, nn.Module] = {"teacher-fp32": teacher, student_name: student}
    pruning: list[tuple[str, str, float, float, float]] = []
    if prune is not None:
        log(
            f"pruning: structured {prune.structured_ratio:.0%}, "
            f"unstructured {prune.unstructured_sparsity:.0%}"
        )
        fine_tune = _fine_tuner(splits, prune.fine_tune, runtime)
        structured = prune_structured(
            student,
            prune.structured_ratio,
            multiple_of=prune.multiple_of,
            fine_tune=fine_tune,
            input_shape=shape,
        ).eval()
        sparse = prune_unstructured(student, prune.unstructured_sparsity, fine_tune=fine_tune).eval()
        for label, pruned in (("structured", structured), ("unstructured", sparse)):
            report = prune_report(label, student, pruned, shape, threads=threads)
            pruning.extend((label, *row) for row in report.rows())
        fp32_models |= {"student-structured-fp32": structured, "student-sparse-fp32": sparse}
    else:
        log(f"no pruning: {student_name} is the fine-tuned parent, already pruned")

    log("exporting FP32 variants to ONNX (parity-checked against torch)")
    files: dict[str, tuple[str, str | None, str]] = {}  # name -> (file, parent, kind)
    parity: dict[str, float] = {}
    weights: dict[str, str] = {}
    for name, model in fp32_models.items():
        path = export_onnx(model, folder / f"{name}.onnx", shape)
        parity[name] = check_parity(model, path, splits.x_test).max_abs_diff
        files[name] = (path.name, None, "fp32")
        if can_save(model):  # any ml.arch-built net: init_from can fine-tune it
            save_net(model, folder, name, variant=name, splits=splits)
            weights[name] = name

    prefix = student_name.removesuffix("-fp32")
    static_parents = ["teacher-fp32"] if quantize.static else []
    if "int8-static" in kinds:
        static_parents.append(student_name)
    if prune is not None and "int8-static" in kinds:
        static_parents.append("student-structured-fp32")
    if static_parents:
        log(f"static INT8 (QDQ, {quantize.calibration_method}, {quantize.calibration_size} training samples)")
    for parent in static_parents:
        name = parent.removesuffix("-fp32") + "-int8-static"
        path = quantize_static_int8(
            folder / files[parent][0],
            folder / f"{name}.onnx",
            splits.x_train,
            method=quantize.calibration_method,
            calibration_size=quantize.calibration_size,
            per_channel=quantize.per_channel,
            progress=calibration_progress(name),
        )
        files[name] = (path.name, parent, "int8-static")
    dynamic_parents = (["teacher-fp32"] if quantize.dynamic else []) + (
        [student_name] if "int8-dynamic" in kinds else []
    )
    if dynamic_parents:
        log("dynamic INT8 (slow for conv nets: activations are quantized at run time)")
    for parent in dynamic_parents:
        name = parent.removesuffix("-fp32") + "-int8-dynamic"
        path = quantize_dynamic_int8(
            folder / files[parent][0], folder / f"{name}.onnx", per_channel=quantize.per_channel
        )
        files[name] = (path.name, parent, "int8-dynamic")
    skipped: list[tuple[str, str]] = []
    if "int8-qat" in kinds and not isinstance(student, ConvNet):
        reason = (
            "skipped: eager-mode QAT needs an explicit conv-bn-relu fusion plan, which EdgeFleet has only "
            f"for edgefleet:cnn, not for {type(student).__name__}; static INT8 stands in for it"
        )
        log(f"{prefix}-int8-qat {reason}")
        skipped.append((f"{prefix}-int8-qat", reason))
    elif "int8-qat" in kinds and isinstance(student, ConvNet):
        log(f"quantization-aware training ({quantize.qat_train.epochs} epochs), exported as QDQ")
        qat_model = prepare_qat(student)
        _fine_tuner(splits, quantize.qat_train, runtime)(qat_model)
        path = export_qat(qat_model, folder / f"{prefix}-int8-qat.onnx", shape)
        files[f"{prefix}-int8-qat"] = (path.name, student_name, "int8-qat")

    log("scoring every variant on the held-out test split")
    logits: dict[str, np.ndarray] = {}
    infos: list[VariantInfo] = []
    for name, (file, parent_name, kind) in files.items():
        parent_logits = logits[parent_name] if parent_name else None
        score, logits[name] = score_variant(
            folder / file, splits.x_test, splits.y_test, parent_logits=parent_logits, threads=threads
        )
        infos.append(
            VariantInfo(
                name=name,
                file=file,
                kind=kind,
                parent=parent_name,
                accuracy=score.accuracy,
                agreement_with_parent=score.agreement_with_parent,
                parity_max_abs_diff=parity.get(name),
                torch_weights=weights.get(name),
            )
        )
    manifest = VariantManifest(
        variants=tuple(infos), input_shape=shape, pruning=tuple(pruning), skipped=tuple(skipped)
    )
    write_atomic(folder / MANIFEST, json.dumps(asdict(manifest), indent=2).encode())
    return manifest


def _configured_kinds(quantize: QuantizeConfig) -> tuple[str, ...]:
    return (
        *(("int8-static",) if quantize.static else ()),
        *(("int8-dynamic",) if quantize.dynamic else ()),
        *(("int8-qat",) if quantize.qat else ()),
    )


def load_manifest(folder: Path) -> VariantManifest:
    """Read ``variants.json`` from a variants folder.

    Raises:
        DataError: The folder has no readable manifest, or it names a missing file.
    """
    try:
        raw = json.loads((folder / MANIFEST).read_text())
        variants = tuple(VariantInfo(**v) for v in raw["variants"])
        shape = tuple(int(d) for d in raw["input_shape"])
        pruning = tuple(tuple(row) for row in raw.get("pruning", ()))
        skipped = tuple((str(name), str(reason)) for name, reason in raw.get("skipped", ()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{folder / MANIFEST}: not a readable variants manifest ({exc})") from exc
    missing = [v.file for v in variants if not (folder / v.file).is_file()]
    missing += [
        f"{v.torch_weights}{suffix}"
        for v in variants
        if v.torch_weights
        for suffix in (".pt", ".json")
        if not (folder / f"{v.torch_weights}{suffix}").is_file()
    ]
    if missing:
        raise DataError(f"{folder}: manifest names missing files {missing}")
    if len(shape) != 3:
        raise DataError(f"{folder / MANIFEST}: input_shape must have 3 dimensions, got {shape}")
    return VariantManifest(
        variants=variants,
        input_shape=(shape[0], shape[1], shape[2]),
        pruning=pruning,
        skipped=skipped,
    )


def candidates(
    folder: Path, manifest: VariantManifest, *, teacher: nn.Module, teacher_accuracy: float
) -> list[Candidate]:
    """Benchmark candidates: the torch-eager teacher (baseline) first, then every ONNX variant."""
    out = [Candidate(name="teacher-torch-eager", torch_model=teacher, accuracy=teacher_accuracy)]
    for info in manifest.variants:
        out.append(
            Candidate(
                name=info.name,
                onnx_path=folder / info.file,
                accuracy=info.accuracy,
                agreement_with_parent=info.agreement_with_parent,
                parent=info.parent,
            )
        )
    return out

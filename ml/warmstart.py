"""Warm start: store a trained network as weights plus a JSON card, load it back, fine-tune it in place.

Any architecture ``ml.arch.build_model`` made (EdgeFleet's ``ConvNet``, torchvision, timm, a user's factory)
can be stored: the card names it (``arch`` + ``kwargs``; a ``ConvNet`` also its ``NetSpec``), and a
structurally pruned net is rebuilt by building the architecture and resizing its conv/BatchNorm/linear
layers to the stored weights' shapes (:func:`fit_to_state`) before a strict load.

A registered model version keeps the torch module its ONNX file was made from (for the small profile that is
the pruned student) and its teacher keeps its own, so a later run with ``init_from`` (``ml.config``) can
fine-tune the student on new data instead of training from random weights (and reuse or fine-tune the
teacher). ``registry`` stores and fetches these files as opaque
MLflow artifacts; this module alone knows what is in them. Plain torch, no MLflow or ZenML.

Files, for a stem such as ``model`` or ``teacher``:

- ``<stem>.pt``: the ``state_dict`` written by ``torch.save`` and read back with
  ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only, never code;
- ``<stem>.json``: the card: architecture (``arch``/``kwargs``, and for ``edgefleet:cnn`` the
  :class:`~ml.nets.NetSpec`: structured pruning changes the widths), class names, input shape, the input
  normalisation the net was trained with, its weight sparsity and the sha256 of the ``.pt`` file.

How a fine-tune treats the student (see ``steps/`` and :func:`ml.variants.build_variants`): it is not
pruned again (that would remove more channels and change every remaining weight); weights that are
exactly zero stay zero (:func:`zeros_kept`), so a sparse parent stays sparse; and it is quantized the way
its parent version was (:func:`student_plan`), so devices can take a small delta.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from ml.arch import DEFAULT_ARCH, ArchError, arch_of, build_model
from ml.data import DataSplits
from ml.errors import WarmStartError
from ml.files import atomic_writer, copy_atomic, file_sha256, write_atomic
from ml.nets import ConvNet, NetSpec, build_net

CARD_FORMAT = "edgefleet.convnet/1"
MODEL_STEM = "model"
"""Stem of a registered version's own torch module: the FP32 parent of its ONNX file."""
TEACHER_STEM = "teacher"
"""Stem of the teacher's torch module."""
ORIGIN_FILE = "origin.json"
"""Written beside the fetched weights: which registered version they came from."""
INT8_KINDS = ("int8-static", "int8-dynamic", "int8-qat")
"""The quantized variant kinds :func:`ml.variants.build_variants` makes, as variant-name suffixes."""


@dataclass(frozen=True)
class NetCard:
    """What a ``<stem>.json`` says about the weights beside it.

    Attributes:
        variant: The FP32 variant the weights are, e.g. ``student-structured-fp32``.
        spec: The ``ConvNet`` layout to rebuild the module with; None for other architectures.
        in_channels: Input channels.
        num_classes: Outputs.
        class_names: One name per output.
        input_shape: ``(C, H, W)`` the net was trained on.
        channel_mean: Per-channel mean subtracted from raw pixels before the net sees them.
        channel_std: Per-channel std the centred pixels were divided by.
        weight_sparsity: Fraction of exactly-zero conv/linear weights.
        weights_sha256: sha256 of the ``.pt`` file.
        deployed_variant: For a version's own module: the variant the version ships (e.g.
            ``student-structured-int8-static``), which decides how a fine-tune re-quantizes it.
        arch: The ``ml.arch`` name (``edgefleet:cnn``, ``torchvision:resnet18``, ...).
        arch_kwargs: Its constructor kwargs (JSON values).
    """

    variant: str
    spec: NetSpec | None
    in_channels: int
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    channel_mean: tuple[float, ...]
    channel_std: tuple[float, ...]
    weight_sparsity: float
    weights_sha256: str
    deployed_variant: str | None = None
    arch: str = DEFAULT_ARCH
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The card as JSON-able data."""
        return {
            "format": CARD_FORMAT,
            "variant": self.variant,
            "deployed_variant": self.deployed_variant,
            "arch": self.arch,
            "kwargs": dict(self.arch_kwargs),
            "spec": None
            if self.spec is None
            else {
                "widths": list(self.spec.widths),
                "pools": list(self.spec.pools),
                "feature_block": self.spec.feature_block,
                "kernel": self.spec.kernel,
            },
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "normalization": {"mean": list(self.channel_mean), "std": list(self.channel_std)},
            "weight_sparsity": self.weight_sparsity,
            "weights_sha256": self.weights_sha256,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], *, source: str) -> NetCard:
        """Read a card written by :meth:`to_json`.

        Raises:
            WarmStartError: Another format, or a missing or malformed field (naming ``source``).
        """
        if not isinstance(raw, Mapping) or raw.get("format") != CARD_FORMAT:
            found = raw.get("format") if isinstance(raw, Mapping) else type(raw).__name__
            raise WarmStartError(f"{source}: not an EdgeFleet weights card ({CARD_FORMAT}); found {found!r}")
        try:
            spec = raw["spec"]
            arch = str(raw.get("arch", DEFAULT_ARCH))  # cards from before other architectures: the CNN
            kwargs = raw.get("kwargs") or {}
            if not isinstance(kwargs, Mapping):
                raise ValueError(f"kwargs must be a mapping, got {type(kwargs).__name__}")
            if spec is None and arch == DEFAULT_ARCH:
                raise ValueError("an edgefleet:cnn card needs its spec")
            shape = tuple(int(d) for d in raw["input_shape"])
            if len(shape) != 3:
                raise ValueError(f"input_shape must have 3 dimensions, got {shape}")
            return cls(
                variant=str(raw["variant"]),
                deployed_variant=None
                if raw.get("deployed_variant") is None
                else str(raw["deployed_variant"]),
                spec=None
                if spec is None
                else NetSpec(
                    widths=tuple(int(w) for w in spec["widths"]),
                    pools=tuple(bool(p) for p in spec["pools"]),
                    feature_block=int(spec["feature_block"]),
                    kernel=int(spec["kernel"]),
                ),
                arch=arch,
                arch_kwargs=dict(kwargs),
                in_channels=int(raw["in_channels"]),
                num_classes=int(raw["num_classes"]),
                class_names=tuple(str(n) for n in raw["class_names"]),
                input_shape=(shape[0], shape[1], shape[2]),
                channel_mean=tuple(float(v) for v in raw["normalization"]["mean"]),
                channel_std=tuple(float(v) for v in raw["normalization"]["std"]),
                weight_sparsity=float(raw["weight_sparsity"]),
                weights_sha256=str(raw["weights_sha256"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WarmStartError(f"{source}: malformed weights card ({exc!r})") from exc


@dataclass(frozen=True)
class LoadedNet:
    """A module rebuilt from its card and weights."""

    model: nn.Module
    card: NetCard


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1).encode())


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over all conv and linear weights."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def can_save(model: nn.Module) -> bool:
    """Whether :func:`save_net` can write a card that rebuilds ``model`` (an ``ml.arch``-built module)."""
    return isinstance(model, ConvNet) or arch_of(model) is not None


def save_net(model: nn.Module, folder: Path, stem: str, *, variant: str, splits: DataSplits) -> Path:
    """Write ``<stem>.pt`` (state_dict) and ``<stem>.json`` (card) into ``folder``; return the card's path.

    Args:
        model: The trained module (pruning masks must already be removed): a ``ConvNet`` or any module
            ``ml.arch.build_model`` built (pruned or not).
        folder: Destination folder (created).
        stem: File stem, e.g. ``student-structured-fp32``.
        variant: The FP32 variant name the module is.
        splits: The data it was trained on (class names, input shape, normalisation).

    Raises:
        WarmStartError: ``model`` still carries pruning masks, was not built by ``ml.arch``, or its
            kwargs are not JSON values.
        OSError: The folder cannot be written.
    """
    state = model.state_dict()
    if any(key.endswith(("_orig", "_mask")) for key in state):
        raise WarmStartError(f"{variant}: remove pruning masks before saving its weights")
    built = arch_of(model)
    kwargs: dict[str, Any]
    if isinstance(model, ConvNet):
        spec: NetSpec | None = model.spec
        arch, kwargs, in_channels, num_classes = DEFAULT_ARCH, {}, model.in_channels, model.num_classes
    elif built is not None:
        spec, (arch, kwargs) = None, built
        in_channels, num_classes = splits.input_shape[0], splits.num_classes
        try:
            json.dumps(kwargs)
        except (TypeError, ValueError) as exc:
            raise WarmStartError(f"{variant}: {arch} kwargs {kwargs!r} are not JSON values ({exc})") from exc
    else:
        raise WarmStartError(
            f"{variant}: a {type(model).__name__} not built by ml.arch.build_model has no card to rebuild it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{stem}.pt"
    with atomic_writer(weights) as handle:
        torch.save({key: value.detach().cpu().clone() for key, value in state.items()}, handle)
    card = NetCard(
        variant=variant,
        spec=spec,
        arch=arch,
        arch_kwargs=kwargs,
        in_channels=in_channels,
        num_classes=num_classes,
        class_names=splits.class_names,
        input_shape=splits.input_shape,
        channel_mean=splits.channel_mean,
        channel_std=splits.channel_std,
        weight_sparsity=weight_sparsity(model),
        weights_sha256=file_sha256(weights),
    )
    path = folder / f"{stem}.json"
    _write_json(path, card.to_json())
    return path


def read_card(folder: Path, stem: str) -> NetCard:
    """Read ``<stem>.json`` from ``folder``.

    Raises:
        WarmStartError: Missing, unreadable or malformed.
    """
    path = folder / f"{stem}.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WarmStartError(f"cannot read the weights card {path}: {exc}") from exc
    return NetCard.from_json(raw, source=str(path))


def load_net(folder: Path, stem: str) -> LoadedNet:
    """Rebuild the module described by ``<stem>.json`` and load ``<stem>.pt`` into it (eval mode).

    Raises:
        WarmStartError: A file is missing or unreadable, the weights' sha256 differs from the card's, or
            the weights do not fit the card's architecture.
    """
    card = read_card(folder, stem)
    weights = folder / f"{stem}.pt"
    if not weights.is_file():
        raise WarmStartError(f"{weights} is missing (its card {stem}.json is there)")
    digest = file_sha256(weights)
    if digest != card.weights_sha256:
        raise WarmStartError(
            f"{weights} has sha256 {digest[:12]}…, its card records {card.weights_sha256[:12]}…"
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise WarmStartError(f"cannot load {weights} as a state_dict: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WarmStartError(f"{weights} does not hold a state_dict of tensors")
    model = _rebuild(card, stem)
    try:
        if card.spec is None:  # a ConvNet's spec already has the (pruned) widths; other nets are resized
            fit_to_state(model, state)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, WarmStartError) as exc:
        raise WarmStartError(f"{weights} does not fit the architecture in {stem}.json: {exc}") from exc
    _probe(model, card, weights)
    return LoadedNet(model=model.eval(), card=card)


def _rebuild(card: NetCard, stem: str) -> nn.Module:
    if card.spec is not None:
        return build_net(card.spec, in_channels=card.in_channels, num_classes=card.num_classes)
    try:
        return build_model(
            card.arch,
            role="teacher" if stem == TEACHER_STEM else "student",
            input_shape=card.input_shape,
            num_classes=card.num_classes,
            kwargs=card.arch_kwargs,
        )
    except ArchError as exc:
        raise WarmStartError(f"{stem}.json: cannot rebuild {card.arch}: {exc}") from exc


def _probe(model: nn.Module, card: NetCard, weights: Path) -> None:
    """One forward pass: a resized (pruned) net whose layers no longer chain fails here, not in training."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros((2, *card.input_shape)))
    except RuntimeError as exc:
        raise WarmStartError(f"{weights}: the rebuilt {card.arch} does not run: {exc}") from exc
    if tuple(out.shape) != (2, card.num_classes):
        raise WarmStartError(f"{weights}: the rebuilt {card.arch} returns {tuple(out.shape)} logits")


def fit_to_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Resize ``model``'s layers in place to the shapes in ``state`` (a structurally pruned copy's weights).

    Structured pruning (``ml.prune``, torch-pruning) removes output channels of convs, the matching
    BatchNorm features and input channels of the layers after them. A freshly built network has the full
    widths; this gives each Conv2d, BatchNorm and Linear whose stored weight has another shape new, empty
    parameters and buffers of the stored shapes and updates the size attributes its forward reads
    (``in_channels``/``out_channels``/``groups``, ``num_features``, ``in_features``/``out_features``), so
    a strict ``load_state_dict`` fills them. A depthwise conv stays depthwise. Other tensors must already
    have the stored shape.

    Raises:
        WarmStartError: A layer of another kind differs in shape.
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        own = {
            key: state[prefix + key]
            for key, value in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            if prefix + key in state and tuple(state[prefix + key].shape) != tuple(value.shape)
        }
        if not own:
            continue
        if isinstance(module, nn.Conv2d) and "weight" in own:
            out_channels, per_group = int(own["weight"].shape[0]), int(own["weight"].shape[1])
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            groups = out_channels if depthwise else module.groups
            module.in_channels, module.out_channels, module.groups = per_group * groups, out_channels, groups
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = int(next(iter(own.values())).shape[0])
        elif isinstance(module, nn.Linear) and "weight" in own:
            module.out_features, module.in_features = (int(d) for d in own["weight"].shape)
        else:
            raise WarmStartError(
                f"layer {name or '(root)'} ({type(module).__name__}) holds {sorted(own)} of other shapes "
                "than the stored weights, and only Conv2d, BatchNorm and Linear layers can be resized"
            )
        for key, stored in own.items():
            empty = torch.empty(stored.shape, dtype=stored.dtype)
            if key in module._parameters:
                module._parameters[key] = nn.Parameter(empty)
            else:
                module._buffers[key] = empty


def copy_net(source: Path, stem: str, destination: Path, new_stem: str, **card_changes: Any) -> Path:
    """Copy ``<stem>.pt/.json`` to ``destination/<new_stem>.pt/.json``, changing card fields on the way.

    The register step uses it to file a variant's weights as a version's ``model`` with the variant the
    version ships (``deployed_variant=...``).

    Raises:
        WarmStartError: The source card is missing or malformed, or a change names no card field.
        OSError: The files cannot be copied.
    """
    card = read_card(source, stem)
    try:
        card = replace(card, **card_changes)
    except TypeError as exc:
        raise WarmStartError(f"cannot change the weights card: {exc}") from exc
    destination.mkdir(parents=True, exist_ok=True)
    weights = destination / f"{new_stem}.pt"
    copy_atomic(source / f"{stem}.pt", weights)
    path = destination / f"{new_stem}.json"
    _write_json(path, card.to_json())
    return path


@dataclass(frozen=True)
class WarmStart:
    """The registered version a run fine-tunes: its teacher and its own (student) module.

    Attributes:
        requested: ``init_from`` as configured, e.g. ``models:/NAME@production``.
        source: The version it resolved to, ``models:/NAME/VERSION`` (recorded in lineage).
        teacher: The teacher, rebuilt.
        student: The version's own FP32 module (the pruned student for an INT8 profile), rebuilt.
        teacher_model_id: Where the registry keeps that teacher (a reused teacher keeps this identity).
    """

    requested: str
    source: str
    teacher: LoadedNet
    student: LoadedNet
    teacher_model_id: str = ""

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The input normalisation the parent was trained with; a fine-tune keeps it."""
        card = self.student.card
        return card.channel_mean, card.channel_std

    def fresh_teacher(self) -> nn.Module:
        """A copy of the parent's teacher to fine-tune (the loaded one stays as it was)."""
        return copy.deepcopy(self.teacher.model)

    def fresh_student(self) -> nn.Module:
        """A copy of the parent's student to fine-tune (the loaded one stays as it was)."""
        return copy.deepcopy(self.student.model)

    def check_fits(self, splits: DataSplits) -> None:
        """Refuse data the parent was not made for.

        Raises:
            WarmStartError: Other classes or another input shape than the parent's.
        """
        for role, loaded in (("teacher", self.teacher), ("student", self.student)):
            card = loaded.card
            if card.class_names != splits.class_names:
                raise WarmStartError(
                    f"{self.source}: its {role} knows classes {list(card.class_names)}, "
                    f"the data ({splits.name}) has {list(splits.class_names)}"
                )
            if card.input_shape != splits.input_shape:
                raise WarmStartError(
                    f"{self.source}: its {role} takes inputs of shape {card.input_shape}, "
                    f"the data ({splits.name}) has {splits.input_shape}"
                )


def write_origin(folder: Path, *, requested: str, source: str, teacher_model_id: str = "") -> Path:
    """Record beside fetched weights which version (and which registered teacher) they are: ``origin.json``.

    Raises:
        OSError: The folder cannot be written.
    """
    path = folder / ORIGIN_FILE
    _write_json(path, {"requested": requested, "source": source, "teacher_model_id": teacher_model_id})
    return path


def load_warm_start(folder: Path) -> WarmStart:
    """Load what ``registry.fetch.fetch_weights`` and :func:`write_origin` put in ``folder``.

    Raises:
        WarmStartError: A file is missing, corrupt or inconsistent; the message names it.
    """
    try:
        origin = json.loads((folder / ORIGIN_FILE).read_text())
        requested, source = str(origin["requested"]), str(origin["source"])
        teacher_model_id = str(origin.get("teacher_model_id") or "")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WarmStartError(
            f"{folder / ORIGIN_FILE}: cannot read where the weights came from ({exc})"
        ) from exc
    try:
        teacher = load_net(folder, TEACHER_STEM)
        student = load_net(folder, MODEL_STEM)
    except WarmStartError as exc:
        raise WarmStartError(f"{source}: {exc}") from exc
    if student.card.deployed_variant is None:
        raise WarmStartError(f"{source}: its weights card does not say which variant the version ships")
    if teacher.card.class_names != student.card.class_names:
        raise WarmStartError(f"{source}: teacher and student were trained on different classes")
    return WarmStart(
        requested=requested,
        source=source,
        teacher=teacher,
        student=student,
        teacher_model_id=teacher_model_id,
    )


def student_plan(card: NetCard) -> tuple[str, tuple[str, ...]]:
    """How a fine-tune rebuilds the parent's variants: the FP32 name and the INT8 kinds to make.

    The student keeps the parent's FP32 variant name (``student-structured-fp32`` stays that) and is
    quantized only the way the parent version's shipped variant was (``student-structured-int8-static``
    → ``("int8-static",)``; an FP32 version → none), so the new version is the same graph with new
    weights, which is what makes a delta small.

    Raises:
        WarmStartError: The card is not a student's FP32 module or its shipped variant is unknown.
    """
    if not card.variant.endswith("-fp32") or card.variant.startswith("teacher"):
        raise WarmStartError(
            f"cannot fine-tune {card.variant!r} as a student: expected a student's FP32 module"
        )
    deployed = card.deployed_variant or card.variant
    if deployed == card.variant:
        return card.variant, ()
    prefix = card.variant.removesuffix("-fp32")
    for kind in INT8_KINDS:
        if deployed == f"{prefix}-{kind}":
            return card.variant, (kind,)
    raise WarmStartError(f"{card.variant} ships as {deployed!r}, which is not one of its INT8 variants")


@contextmanager
def zeros_kept(model: nn.Module) -> Iterator[float]:
    """Keep every exactly-zero conv/linear weight at zero while the block runs (a fine-tune).

    The zeros become fixed pruning masks (``torch.nn.utils.prune.custom_from_mask``: the forward pass
    uses ``weight_orig * mask``, so masked weights get no gradient effect), removed again on exit so the
    module holds plain tensors. A dense module (no zeros) is left alone.

    Yields:
        The fraction of weights held at zero.
    """
    targets = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    masks = [m.weight.detach() != 0 for m in targets]
    total = sum(mask.numel() for mask in masks)
    zeros = sum(int((~mask).sum()) for mask in masks)
    if zeros == 0:
        yield 0.0
        return
    for module, mask in zip(targets, masks, strict=True):
        prune.custom_from_mask(module, "weight", mask)
    try:
        yield zeros / total if total else math.nan
    finally:
        for module in targets:
            prune.remove(module, "weight")

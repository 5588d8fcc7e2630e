"""Architectures named in the config: EdgeFleet's own nets, torchvision, timm, or a user's factory.

Pipeline step 0 (see ARCHITECTURE.md): ``teacher.arch`` / ``student.arch`` are strings in one of these forms

    edgefleet:cnn              the small conv chains of :mod:`ml.nets` (the default: the digits demo)
    torchvision:NAME           a torchvision classification model, e.g. ``torchvision:resnet18``
    timm:NAME                  a timm model (``pip install 'edgefleet[timm]'``)
    package.module:callable    the user's own factory returning an ``nn.Module``, called with ``kwargs``

and :func:`build_model` is the one place that instantiates them. Nothing here downloads: torchvision models
are built with ``weights=None`` and timm models with ``pretrained=False``; pretrained weights come from a
local file (:func:`load_weights`). ``num_classes`` always comes from the data, never from ``kwargs``.

:func:`preflight` builds both networks, probes them with one input of the data's shape, resolves the
distillation feature layers and loads the teacher's weights, so that every mistake in the config (an unknown
name, a module that does not import, a weights file made for another network, a layer that does not exist)
fails the pipeline's first step with a message that says what to write instead.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ml import files
from ml.errors import MLError
from ml.nets import ConvNet, build_net, specs_for_input

Role = Literal["teacher", "student"]

DEFAULT_ARCH = "edgefleet:cnn"
#: torchvision classifiers the tests cover; any other torchvision classification model name is accepted too.
TORCHVISION_TESTED = ("resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0")
ACCEPTED_FORMS = (
    "edgefleet:cnn (EdgeFleet's small conv nets, the default)",
    f"torchvision:NAME (e.g. {', '.join(TORCHVISION_TESTED)})",
    "timm:NAME (needs the optional extra: pip install 'edgefleet[timm]')",
    "package.module:callable (your own factory returning an nn.Module, called with kwargs)",
)
ARCH_ATTR = "_edgefleet_arch"
"""Attribute :func:`build_model` sets on every module it builds: ``{"arch": ..., "kwargs": ...}``."""
_CALLABLE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class ArchError(MLError):
    """An architecture, weights file or layer named in the config cannot be used."""


def _accepted() -> str:
    return "accepted forms:\n" + "\n".join(f"  - {form}" for form in ACCEPTED_FORMS)


@dataclass(frozen=True)
class ArchRef:
    """A parsed architecture name: ``family`` is edgefleet, torchvision, timm or callable."""

    family: Literal["edgefleet", "torchvision", "timm", "callable"]
    target: str

    @property
    def name(self) -> str:
        """The spelling used in the config."""
        return self.target if self.family == "callable" else f"{self.family}:{self.target}"


def parse_arch(name: str) -> ArchRef:
    """Parse an architecture string (see the module docstring).

    Raises:
        ArchError: The string is in none of the accepted forms (the message lists them).
    """
    if not isinstance(name, str) or ":" not in name:
        raise ArchError(f"unknown architecture {name!r}; {_accepted()}")
    prefix, _, rest = name.partition(":")
    if prefix == "edgefleet":
        if rest != "cnn":
            raise ArchError(f"unknown EdgeFleet architecture {name!r} (only edgefleet:cnn); {_accepted()}")
        return ArchRef("edgefleet", rest)
    if prefix in ("torchvision", "timm"):
        if not re.fullmatch(r"[A-Za-z0-9_.]+", rest):
            raise ArchError(f"architecture {name!r} has no model name after '{prefix}:'; {_accepted()}")
        return ArchRef(prefix, rest)  # type: ignore[arg-type]
    if _CALLABLE.match(name):
        return ArchRef("callable", name)
    raise ArchError(f"unknown architecture {name!r}; {_accepted()}")


def _torchvision_builder(model_name: str) -> Any:
    try:
        import torchvision
    except Exception as exc:  # an ImportError, or torchvision's RuntimeError on a mismatched torch build
        raise ArchError(
            f"torchvision:{model_name} needs torchvision, which cannot be imported: {exc}"
        ) from exc
    names = sorted(torchvision.models.list_models(module=torchvision.models))
    if model_name not in names:
        close = [n for n in names if n.startswith(model_name[:6])][:8]
        raise ArchError(
            f"torchvision has no classification model {model_name!r}"
            + (f" (close: {', '.join(close)})" if close else "")
            + f"; {_accepted()}"
        )
    return torchvision.models.get_model_builder(model_name)


def _timm_create(model_name: str, kwargs: Mapping[str, Any], num_classes: int, in_chans: int) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ArchError(
            f"timm:{model_name} needs timm, which is not installed: pip install 'edgefleet[timm]'"
        ) from exc
    if not timm.is_model(model_name):
        raise ArchError(f"timm has no model {model_name!r}; list them with timm.list_models()")
    model: nn.Module = timm.create_model(
        model_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **dict(kwargs)
    )
    return model


def _resolve_callable(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArchError(
            f"cannot import module {module_name!r} of architecture {target!r}: {exc}; {_accepted()}"
        ) from exc
    factory: Any = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ArchError(
                f"module {module_name!r} has no attribute {attribute!r} (architecture {target!r})"
            )
    if not callable(factory):
        raise ArchError(f"{target!r} is not callable")
    return factory


def _accepts(factory: Any, parameter: str) -> bool:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return False
    return parameter in signature.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )


def build_model(
    arch: str,
    *,
    role: Role,
    input_shape: tuple[int, int, int],
    num_classes: int,
    kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Instantiate ``arch`` for inputs of shape (C, H, W) and ``num_classes`` outputs, with random weights.

    ``edgefleet:cnn`` builds the teacher or the student layout of :mod:`ml.nets` by ``role``. torchvision
    models take 3-channel input (set ``data.input_size: [3, H, W]`` for grayscale data). A user's factory is
    called with ``kwargs`` plus ``num_classes`` and ``in_channels`` when its signature accepts them.

    Raises:
        ArchError: Unknown name, missing package, a ``kwargs`` key the constructor rejects, ``num_classes``
            in ``kwargs``, or a module whose output on one probe input is not 1×``num_classes``.
    """
    ref = parse_arch(arch)
    options = dict(kwargs or {})
    given = dict(options)
    if "num_classes" in options:
        raise ArchError(f"{arch}: do not set num_classes in kwargs; it comes from the data ({num_classes})")
    channels = int(input_shape[0])
    model: nn.Module
    try:
        if ref.family == "edgefleet":
            if options:
                raise ArchError(f"edgefleet:cnn takes no kwargs, got {sorted(options)}")
            teacher_spec, student_spec = specs_for_input(input_shape)
            spec = teacher_spec if role == "teacher" else student_spec
            model = build_net(spec, in_channels=channels, num_classes=num_classes)
        elif ref.family == "torchvision":
            builder = _torchvision_builder(ref.target)
            if channels != 3:
                raise ArchError(
                    f"{arch} takes 3-channel images but the data has {channels}; "
                    "set data.input_size: [3, H, W] to convert grayscale to RGB"
                )
            model = builder(weights=None, num_classes=num_classes, **options)
        elif ref.family == "timm":
            model = _timm_create(ref.target, options, num_classes, channels)
        else:
            factory = _resolve_callable(ref.target)
            for name, value in (("num_classes", num_classes), ("in_channels", channels)):
                if _accepts(factory, name):
                    options.setdefault(name, value)
            model = factory(**options)
            if not isinstance(model, nn.Module):
                raise ArchError(f"{arch} returned {type(model).__name__}, not an nn.Module")
    except ArchError:
        raise
    except (TypeError, ValueError) as exc:  # a constructor rejecting a kwarg or a value
        raise ArchError(f"cannot build {arch} with kwargs {options}: {exc}") from exc
    _check_output(model, arch, input_shape, num_classes)
    # Remembered on the module (deep copies, pruned copies and pickles keep it), so ml.warmstart can write a
    # weights card that rebuilds it for init_from.
    setattr(model, ARCH_ATTR, {"arch": arch, "kwargs": given})
    return model


def arch_of(model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """``(arch, kwargs)`` that :func:`build_model` built ``model`` from; None for a module made elsewhere."""
    built = getattr(model, ARCH_ATTR, None)
    if not isinstance(built, dict) or not isinstance(built.get("arch"), str):
        return None
    return built["arch"], dict(built.get("kwargs") or {})


def _check_output(model: nn.Module, arch: str, input_shape: tuple[int, int, int], num_classes: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *input_shape)))
    except Exception as exc:  # any forward failure of a user's network is a config error here
        raise ArchError(f"{arch} cannot run on inputs of shape {tuple(input_shape)}: {exc}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ArchError(f"{arch} must return N×{num_classes} logits, returned {shape}")


def default_feature_layer(model: nn.Module) -> str | None:
    """The layer distillation matches when the config names none: ``features.<feature_block>`` of a ConvNet.

    Other architectures have no default (the config names one, or only logits are distilled).
    """
    if isinstance(model, ConvNet):
        return f"features.{model.spec.feature_block}"
    return None


def find_layer(model: nn.Module, name: str, *, arch: str = "model") -> nn.Module:
    """The sub-module called ``name`` (as in ``model.named_modules()``).

    Raises:
        ArchError: No such layer; the message lists some layer names that exist.
    """
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    top = [n for n in modules if n and n.count(".") <= 1][:40]
    raise ArchError(f"{arch} has no layer {name!r}; layers include: {', '.join(top)}")


def probe_feature_shape(model: nn.Module, layer: str, input_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The shape (without the batch axis) of ``layer``'s output on one input of ``input_shape``.

    Raises:
        ArchError: The layer does not exist, or its output is not a tensor of 2 or 4 dimensions.
    """
    module = find_layer(model, layer)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(
        lambda _m, _i, out: seen.append(out) if isinstance(out, torch.Tensor) else None
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        handle.remove()
        model.train(was_training)
    if not seen or seen[-1].ndim not in (2, 4):
        raise ArchError(f"layer {layer!r} must output an N×C×H×W or N×C tensor to be matched")
    return tuple(int(d) for d in seen[-1].shape[1:])


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, streamed.

    Raises:
        ArchError: The file cannot be read.
    """
    try:
        return files.file_sha256(Path(path))
    except OSError as exc:
        raise ArchError(f"cannot read weights file {path}: {exc}") from exc


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: a ``state_dict``, a checkpoint with a ``state_dict`` key, or safetensors.

    ``torch.load`` runs with ``weights_only=True``: tensors and plain containers, never code.

    Raises:
        ArchError: Missing file, unreadable format, safetensors without the package, or no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ArchError(f"teacher weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ArchError(f"{path} is safetensors; install the safetensors package to read it") from exc
        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise ArchError(f"cannot read {path} as safetensors: {exc}") from exc
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and "unsupported global" errors alike
        raise ArchError(f"cannot read {path} as a torch state_dict (weights_only): {exc}") from exc
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not any(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ArchError(f"{path} holds no state_dict (a mapping of names to tensors)")
    return {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def load_weights(model: nn.Module, path: str | Path, *, arch: str = "model") -> str:
    """Load a weights file into ``model`` strictly; return the file's sha256.

    Raises:
        ArchError: The file is unreadable, or its keys or shapes differ from the model's; the message lists
            the missing and unexpected keys and every shape difference.
    """
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    if missing or unexpected or shapes:

        def listing(title: str, items: list[str]) -> str:
            more = f" … and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:20]) + more if items else ""

        raise ArchError(
            f"weights file {path} does not fit {arch}:"
            + listing("missing keys", missing)
            + listing("unexpected keys", unexpected)
            + listing("shape differences", shapes)
        )
    model.load_state_dict(state, strict=True)
    return file_sha256(path)


def count_macs_generic(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-adds of conv and linear layers in one batch-1 forward pass, counted with hooks."""
    total = 0

    def on_conv(module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        k = module.kernel_size[0] * module.kernel_size[1]
        total += int(out[0].numel()) * (module.in_channels // module.groups) * k

    def on_linear(module: nn.Module, _inputs: Any, _out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += module.in_features * module.out_features

    handles = [
        m.register_forward_hook(on_conv if isinstance(m, nn.Conv2d) else on_linear)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


@dataclass(frozen=True)
class NetChoice:
    """One network as the config names it: architecture, constructor kwargs, distillation layer."""

    arch: str = DEFAULT_ARCH
    kwargs: Mapping[str, Any] | None = None
    feature_layer: str | None = None


def preflight(
    *,
    teacher: NetChoice,
    student: NetChoice,
    input_shape: tuple[int, int, int],
    num_classes: int,
    teacher_weights: str | None = None,
    feature_matching: bool = True,
) -> dict[str, str]:
    """Check everything the config says about the two networks before any training starts.

    Builds both networks, probes them with one input, checks the feature layers exist and output maps or
    vectors alike, and loads the teacher's weights file strictly. The pipeline's first step calls this so a
    bad config fails in seconds and registers nothing.

    Returns:
        Facts for lineage: ``teacher_arch``, ``student_arch`` and ``teacher_weights_sha256`` (empty without
        a weights file).

    Raises:
        ArchError: Any of the problems :func:`build_model`, :func:`load_weights` and :func:`find_layer`
            report.
    """
    built: dict[str, nn.Module] = {}
    roles: tuple[tuple[Role, NetChoice], ...] = (("teacher", teacher), ("student", student))
    for role, choice in roles:
        try:
            built[role] = build_model(
                choice.arch, role=role, input_shape=input_shape, num_classes=num_classes, kwargs=choice.kwargs
            )
        except ArchError as exc:
            raise ArchError(f"{role}.arch: {exc}") from exc
    sha = ""
    if teacher_weights:
        sha = load_weights(built["teacher"], teacher_weights, arch=f"teacher {teacher.arch}")
    if feature_matching:
        shapes = []
        for role, choice in (("teacher", teacher), ("student", student)):
            layer = choice.feature_layer or default_feature_layer(built[role])
            if layer is None:
                continue
            try:
                shapes.append(len(probe_feature_shape(built[role], layer, input_shape)))
            except ArchError as exc:
                raise ArchError(f"{role}.feature_layer: {role} {choice.arch}: {exc}") from exc
        if len(shapes) == 2 and shapes[0] != shapes[1]:
            raise ArchError(
                "teacher.feature_layer and student.feature_layer must both output maps (N×C×H×W) or both "
                "vectors (N×C)"
            )
    return {"teacher_arch": teacher.arch, "student_arch": student.arch, "teacher_weights_sha256": sha}

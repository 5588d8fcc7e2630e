"""Bring-your-own architecture: every listed torchvision net and a user's factory through build → short
train → ONNX export → parity → static INT8 → benchmark; pruning that really shrinks the ONNX weights; and
the config mistakes (bad name, wrong-keys weights, missing feature layer) as clear ``ArchError``s.

Tiny inputs (3×32×32, 4 classes, a few dozen samples) keep each network to seconds on one CPU core.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from ml.arch import (
    ArchError,
    NetChoice,
    build_model,
    file_sha256,
    load_weights,
    parse_arch,
    preflight,
)
from ml.benchmark import latency_samples_ms
from ml.data import split
from ml.device import resolve_runtime
from ml.distill import DistillConfig, distill
from ml.evaluate import make_session
from ml.export import check_parity, export_onnx
from ml.prune import prune_structured
from ml.quantize import quantize_static_int8
from ml.train import fit, predict, seed_everything

SHAPE = (3, 32, 32)
CLASSES = 4
TORCHVISION = ("resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0")

USER_MODULE = textwrap.dedent(
    """
    from torch import nn

    def tiny_net(num_classes, in_channels=3, width=8):
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
        )
    """
)


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_nets:tiny_net"


def _data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % CLASSES
    x = rng.normal(0, 0.3, size=(n, *SHAPE)).astype(np.float32)
    x[np.arange(n), y % 3, :, :8] += 1.5  # a learnable class signal
    return x, y.astype(np.int64)


@pytest.mark.parametrize("arch", [f"torchvision:{name}" for name in TORCHVISION] + ["user"])
def test_arch_builds_trains_exports_quantizes_and_benchmarks(
    arch: str, user_module: str, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    arch = user_module if arch == "user" else arch
    seed_everything(0)
    kwargs = {"width": 4} if arch == user_module else {}
    model = build_model(arch, role="student", input_shape=SHAPE, num_classes=CLASSES, kwargs=kwargs)
    x, y = _data()
    result = fit(model, (x[:32], y[:32]), (x[32:], y[32:]), epochs=1, lr=1e-3, batch_size=16)
    assert result.epochs_run == 1 and result.history[0]["images_per_s"] > 0
    fp32 = export_onnx(model, tmp_path / "model.onnx", SHAPE)
    graph = onnx.load(str(fp32)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch axis
    parity = check_parity(model, fp32, x[32:])
    # Relative to the logits' scale: BatchNorm statistics recomputed from 32 images (ml.batchnorm) leave an
    # untrained EfficientNet with logits in the hundreds, where float32 rounding alone differs by ~1e-5.
    scale = max(1.0, float(np.abs(predict(model, x[32:])).max()))
    assert parity.max_abs_diff < 1e-4 * scale
    int8 = quantize_static_int8(fp32, tmp_path / "model-int8.onnx", x[:32], calibration_size=16)
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    if arch != user_module:  # the user's 4-channel toy is too small for INT8 to outweigh the QDQ nodes
        assert int8.stat().st_size < fp32.stat().st_size
    session = make_session(int8, threads=1)
    latencies = latency_samples_ms(session, x[:1], runs=5, warmup=1)
    assert len(latencies) == 5 and float(np.median(latencies)) > 0


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_structured_pruning_shrinks_onnx_weights_and_matches_torch(name: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    model = build_model(f"torchvision:{name}", role="student", input_shape=SHAPE, num_classes=CLASSES).eval()
    pruned = prune_structured(model, 0.5, multiple_of=8, input_shape=SHAPE).eval()
    before = export_onnx(model, tmp_path / "before.onnx", SHAPE)
    after = export_onnx(pruned, tmp_path / "after.onnx", SHAPE)

    def conv_weights(path: Path) -> dict[str, tuple[int, ...]]:
        graph = onnx.load(str(path)).graph
        return {t.name: numpy_helper.to_array(t).shape for t in graph.initializer if len(t.dims) == 4}

    def elements(path: Path) -> int:
        return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)

    assert elements(after) < 0.6 * elements(before)
    shrunk = conv_weights(after)
    out_channels = [shape[0] for shape in shrunk.values()]
    assert max(out_channels) < max(s[0] for s in conv_weights(before).values())
    # Every pruned conv keeps a multiple of 8 output channels (the stem's 3 input channels are untouched).
    assert all(c % 8 == 0 for c in out_channels), sorted(set(out_channels))
    assert pruned(torch.zeros(1, *SHAPE)).shape == (1, CLASSES)  # the classifier keeps its outputs
    x, _ = _data(8, seed=3)
    assert check_parity(pruned, after, x).max_abs_diff < 1e-3


def test_distillation_across_families_matches_named_layers() -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    teacher = build_model("torchvision:resnet18", role="teacher", input_shape=SHAPE, num_classes=CLASSES)
    student = build_model(
        "torchvision:mobilenet_v3_small", role="student", input_shape=SHAPE, num_classes=CLASSES
    )
    x, y = _data()
    splits = split(x, y, [str(c) for c in range(CLASSES)], name="tiny", val_fraction=0.25, test_fraction=0.25)
    config = DistillConfig(
        epochs=1, batch_size=16, beta=1.0, teacher_layer="layer3", student_layer="features.9", patience=1
    )
    result = distill(student, teacher, splits, config)
    assert result.epochs_run == 1 and np.isfinite(result.history[0]["train_loss"])
    with pytest.raises(ArchError, match=r"no layer 'features\.99'"):
        distill(student, teacher, splits, DistillConfig(epochs=1, student_layer="features.99"))


def test_unknown_architecture_lists_the_accepted_forms() -> None:
    for bad in ("resnet18", "torchvision:resnet9000", "keras_xyz:foo", "edgefleet:transformer"):
        with pytest.raises(ArchError) as error:
            build_model(bad, role="teacher", input_shape=SHAPE, num_classes=CLASSES)
        message = str(error.value)
        assert bad in message or "resnet9000" in message or "keras_xyz" in message
    with pytest.raises(ArchError, match=r"accepted forms:(.|\n)*torchvision:NAME(.|\n)*module:callable"):
        parse_arch("keras")
    with pytest.raises(ArchError, match=r"cannot import module 'keras_xyz'(.|\n)*accepted forms"):
        build_model("keras_xyz:foo", role="teacher", input_shape=SHAPE, num_classes=CLASSES)


def test_timm_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "timm", None)
    with pytest.raises(ArchError, match=r"pip install 'edgefleet\[timm\]'"):
        build_model("timm:resnet18", role="teacher", input_shape=SHAPE, num_classes=CLASSES)


def test_user_factory_errors_are_clear(user_module: str) -> None:
    with pytest.raises(ArchError, match="has no attribute 'nope'"):
        build_model("my_nets:nope", role="student", input_shape=SHAPE, num_classes=CLASSES)
    with pytest.raises(ArchError, match="cannot import module"):
        build_model("not_a_module_xyz:build", role="student", input_shape=SHAPE, num_classes=CLASSES)
    with pytest.raises(ArchError, match="kwargs"):
        build_model(user_module, role="student", input_shape=SHAPE, num_classes=CLASSES, kwargs={"depth": 3})
    with pytest.raises(ArchError, match="num_classes"):
        build_model(
            user_module, role="student", input_shape=SHAPE, num_classes=CLASSES, kwargs={"num_classes": 3}
        )


def test_torchvision_on_grayscale_says_how_to_convert() -> None:
    with pytest.raises(ArchError, match=r"input_size: \[3, H, W\]"):
        build_model("torchvision:resnet18", role="teacher", input_shape=(1, 32, 32), num_classes=CLASSES)


def test_weights_load_strictly_from_state_dict_checkpoint_and_report_mismatches(tmp_path: Path) -> None:
    seed_everything(0)
    source = build_model("torchvision:resnet18", role="teacher", input_shape=SHAPE, num_classes=CLASSES)
    plain, checkpoint = tmp_path / "plain.pt", tmp_path / "ckpt.pth"
    torch.save(source.state_dict(), plain)
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, checkpoint)
    for path in (plain, checkpoint):
        seed_everything(1)
        target = build_model("torchvision:resnet18", role="teacher", input_shape=SHAPE, num_classes=CLASSES)
        assert load_weights(target, path) == file_sha256(path)
        assert torch.equal(target.fc.weight, source.fc.weight)

    other = build_model(
        "torchvision:mobilenet_v3_small", role="teacher", input_shape=SHAPE, num_classes=CLASSES
    )
    with pytest.raises(ArchError) as error:
        load_weights(other, plain, arch="teacher torchvision:mobilenet_v3_small")
    message = str(error.value)
    assert "missing keys" in message and "unexpected keys" in message and "features.0.0.weight" in message

    wrong_classes = build_model("torchvision:resnet18", role="teacher", input_shape=SHAPE, num_classes=7)
    with pytest.raises(ArchError, match=r"shape differences \(2\): fc.bias: file \(4,\) vs model \(7,\)"):
        load_weights(wrong_classes, plain)
    with pytest.raises(ArchError, match="does not exist"):
        load_weights(wrong_classes, tmp_path / "missing.pt")


def test_preflight_checks_names_layers_and_weights(tmp_path: Path) -> None:
    seed_everything(0)
    teacher = build_model("torchvision:resnet18", role="teacher", input_shape=SHAPE, num_classes=CLASSES)
    weights = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), weights)
    good = preflight(
        teacher=NetChoice("torchvision:resnet18", feature_layer="layer3"),
        student=NetChoice("torchvision:mobilenet_v3_small", feature_layer="features.9"),
        input_shape=SHAPE,
        num_classes=CLASSES,
        teacher_weights=str(weights),
    )
    assert good["teacher_weights_sha256"] == file_sha256(weights)
    with pytest.raises(ArchError, match=r"student.feature_layer(.|\n)*no layer 'features.42'"):
        preflight(
            teacher=NetChoice("torchvision:resnet18", feature_layer="layer3"),
            student=NetChoice("torchvision:mobilenet_v3_small", feature_layer="features.42"),
            input_shape=SHAPE,
            num_classes=CLASSES,
        )
    with pytest.raises(ArchError, match=r"teacher.arch(.|\n)*accepted forms"):
        preflight(
            teacher=NetChoice("torchvision"), student=NetChoice(), input_shape=SHAPE, num_classes=CLASSES
        )


def test_device_resolution_on_this_machine() -> None:
    runtime = resolve_runtime("auto", "bf16")
    if not torch.cuda.is_available():
        assert runtime.device == "cpu" and runtime.precision == "fp32"
        assert runtime.requested_precision == "bf16" and runtime.as_tags()["gpu_name"] == "-"
        with pytest.raises(Exception, match="no CUDA device"):
            resolve_runtime("cuda", "fp32")
    with pytest.raises(Exception, match="device must be"):
        resolve_runtime("tpu", "fp32")


def test_cpu_training_is_deterministic_for_a_seed() -> None:
    torch.set_num_threads(1)
    x, y = _data()
    weights = []
    for _ in range(2):
        seed_everything(0)
        model = build_model(
            "torchvision:mobilenet_v3_small", role="student", input_shape=SHAPE, num_classes=CLASSES
        )
        fit(model, (x[:32], y[:32]), (x[32:], y[32:]), epochs=1, lr=1e-3, batch_size=16, seed=0)
        weights.append(model.classifier[-1].weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False"
)
def test_two_training_steps_on_the_gpu_in_bf16_channels_last() -> None:
    runtime = resolve_runtime("cuda", "bf16")
    assert runtime.is_cuda and runtime.channels_last and runtime.gpu_name
    seed_everything(0)
    model = build_model("torchvision:resnet18", role="teacher", input_shape=SHAPE, num_classes=CLASSES)
    x, y = _data(64)
    before = model.fc.weight.detach().clone()
    result = fit(model, (x[:32], y[:32]), (x[32:], y[32:]), epochs=1, lr=1e-3, batch_size=16, runtime=runtime)
    assert result.epochs_run == 1  # 32 samples / batch 16 = two optimiser steps on the GPU
    assert next(model.parameters()).device.type == "cpu"  # handed back on the CPU for export
    assert not torch.equal(before, model.fc.weight)

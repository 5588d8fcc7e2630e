"""Unit tests of ml.distill: the KD loss against a hand computation, gradients, and the training runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ml.data import DataSplits
from ml.distill import DistillConfig, build_student, distill, kd_loss, make_adapter, train_label_only
from ml.errors import TrainingError
from ml.nets import ConvNet, NetSpec, build_net
from ml.train import accuracy, fit, seed_everything

TINY_TEACHER = NetSpec(widths=(8, 16), pools=(False, True), feature_block=0)
TINY_STUDENT = NetSpec(widths=(4, 8), pools=(True, False), feature_block=1)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _hand_kd(
    b: dict[str, np.ndarray], weight: np.ndarray, bias: np.ndarray, T: float, alpha: float, beta: float
) -> float:
    """The loss written out in numpy: α·T²·KL(p_t‖p_s) + (1−α)·CE + β·MSE(W·f_s + b, pool2×2(f_t))."""
    s, t, y, fs, ft = b["s"], b["t"], b["y"], b["fs"], b["ft"]
    n = len(s)
    log_ps = _log_softmax(s / T)
    log_pt = _log_softmax(t / T)
    kl = float((np.exp(log_pt) * (log_pt - log_ps)).sum() / n)  # batchmean: sum over all, divide by N
    ce = float(-_log_softmax(s)[np.arange(n), y].mean())
    adapted = np.einsum("oc,nchw->nohw", weight, fs) + bias[None, :, None, None]
    nn_, c, h, w = ft.shape
    pooled = ft.reshape(nn_, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))  # exact 2× adaptive average pool
    mse = float(((adapted - pooled) ** 2).mean())
    return alpha * T * T * kl + (1 - alpha) * ce + beta * mse


@pytest.fixture
def tiny_batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    return {
        "s": rng.normal(size=(4, 5)),
        "t": rng.normal(size=(4, 5)) * 3,
        "y": np.array([0, 3, 4, 1]),
        "fs": rng.normal(size=(4, 2, 2, 2)),
        "ft": rng.normal(size=(4, 3, 4, 4)),
    }


def _adapter(weight: np.ndarray, bias: np.ndarray) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight[:, :, None, None]))
        assert conv.bias is not None
        conv.bias.copy_(torch.from_numpy(bias))
    return conv


@pytest.mark.parametrize(("T", "alpha", "beta"), [(4.0, 0.7, 0.5), (1.0, 0.3, 2.0), (2.5, 1.0, 0.0)])
def test_kd_loss_matches_hand_computation(
    tiny_batch: dict[str, np.ndarray], T: float, alpha: float, beta: float
) -> None:
    rng = np.random.default_rng(1)
    weight, bias = rng.normal(size=(3, 2)), rng.normal(size=3)
    b = tiny_batch
    torch_loss = kd_loss(
        torch.from_numpy(b["s"]),
        torch.from_numpy(b["t"]),
        torch.from_numpy(b["y"]),
        torch.from_numpy(b["fs"]),
        torch.from_numpy(b["ft"]),
        _adapter(weight, bias),
        temperature=T,
        alpha=alpha,
        beta=beta,
    )
    expected = _hand_kd(b, weight, bias, T, alpha, beta)
    assert float(torch_loss.detach()) == pytest.approx(expected, rel=1e-10)


def test_the_t_squared_and_beta_terms_are_present(tiny_batch: dict[str, np.ndarray]) -> None:
    """Changing T and β moves the loss by exactly what the formula says."""
    b = tiny_batch
    s, t, y, fs, ft = (torch.from_numpy(b[k]) for k in ("s", "t", "y", "fs", "ft"))
    adapter = _adapter(np.ones((3, 2)), np.zeros(3))

    def loss(beta: float) -> torch.Tensor:
        return kd_loss(s, t, y, fs, ft, adapter, temperature=3.0, alpha=1.0, beta=beta)

    only_kl = loss(0.0)
    log_ps, log_pt = _log_softmax(b["s"] / 3.0), _log_softmax(b["t"] / 3.0)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum() / 4
    assert float(only_kl.detach()) == pytest.approx(9.0 * kl, rel=1e-10)
    with_beta = loss(2.0)
    plain_mse = loss(1.0) - only_kl
    assert float((with_beta - only_kl).detach()) == pytest.approx(2.0 * float(plain_mse.detach()), rel=1e-10)
    assert float(plain_mse.detach()) > 0


def test_alpha_zero_beta_zero_is_cross_entropy(tiny_batch: dict[str, np.ndarray]) -> None:
    b = tiny_batch
    s = torch.from_numpy(b["s"])
    y = torch.from_numpy(b["y"])
    adapter = _adapter(np.ones((3, 2)), np.zeros(3))
    loss = kd_loss(
        s, torch.from_numpy(b["t"]), y, torch.from_numpy(b["fs"]), torch.from_numpy(b["ft"]), adapter,
        temperature=4.0, alpha=0.0, beta=0.0,
    )  # fmt: skip
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-12)


def test_gradient_reaches_student_and_adapter_but_not_teacher(tiny_batch: dict[str, np.ndarray]) -> None:
    b = tiny_batch
    s = torch.from_numpy(b["s"]).requires_grad_()
    t = torch.from_numpy(b["t"]).requires_grad_()
    fs = torch.from_numpy(b["fs"]).requires_grad_()
    ft = torch.from_numpy(b["ft"]).requires_grad_()
    adapter = _adapter(np.ones((3, 2)), np.zeros(3))
    kd_loss(s, t, torch.from_numpy(b["y"]), fs, ft, adapter, temperature=4.0, alpha=0.7, beta=0.5).backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    assert adapter.bias is not None and adapter.bias.grad is not None and adapter.bias.grad.abs().sum() > 0
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert t.grad is None and ft.grad is None  # the teacher's outputs are targets, detached


def test_kd_loss_rejects_mismatched_shapes(tiny_batch: dict[str, np.ndarray]) -> None:
    b = tiny_batch
    s, t, y = (torch.from_numpy(b[k]) for k in ("s", "t", "y"))
    fs, ft = torch.from_numpy(b["fs"]), torch.from_numpy(b["ft"])
    good = _adapter(np.ones((3, 2)), np.zeros(3))
    wrong = _adapter(np.ones((5, 2)), np.zeros(5))
    kwargs = {"temperature": 4.0, "alpha": 0.5, "beta": 1.0}
    with pytest.raises(TrainingError, match="channels"):
        kd_loss(s, t, y, fs, ft, wrong, **kwargs)
    with pytest.raises(TrainingError, match="logits"):
        kd_loss(s, t[:, :4], y, fs, ft, good, **kwargs)
    with pytest.raises(TrainingError, match="labels"):
        kd_loss(s, t, y[:3], fs, ft, good, **kwargs)
    with pytest.raises(TrainingError, match="temperature"):
        kd_loss(s, t, y, fs, ft, good, temperature=0.0, alpha=0.5, beta=1.0)
    with pytest.raises(TrainingError, match="alpha"):
        DistillConfig(alpha=1.5)


# --- training ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_teacher(small_splits: DataSplits) -> ConvNet:
    torch.set_num_threads(1)
    seed_everything(0)
    teacher = build_net(TINY_TEACHER, in_channels=1, num_classes=10)
    fit(
        teacher,
        (small_splits.x_train, small_splits.y_train),
        (small_splits.x_val, small_splits.y_val),
        epochs=6,
        lr=3e-2,
        batch_size=32,
    )
    return teacher


def test_distill_trains_the_student_and_leaves_the_teacher_alone(
    small_splits: DataSplits, tiny_teacher: ConvNet
) -> None:
    teacher = tiny_teacher
    teacher.train()  # distill must switch it to eval for the run and restore the mode after
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_student(small_splits, seed=0, spec=TINY_STUDENT)
    start_acc = accuracy(student, small_splits.x_val, small_splits.y_val)
    epochs: list[int] = []
    config = DistillConfig(epochs=4, lr=3e-2, batch_size=32, patience=4)
    result = distill(student, teacher, small_splits, config, progress=lambda e, m: epochs.append(e))
    assert result.best_val_accuracy > start_acc + 0.2
    assert accuracy(student, small_splits.x_val, small_splits.y_val) == pytest.approx(
        result.best_val_accuracy
    )
    assert epochs == list(range(1, result.epochs_run + 1))
    assert teacher.training
    for name, value in teacher.state_dict().items():
        # Eval mode means BatchNorm statistics were not updated either.
        assert torch.equal(value, before[name]), name
    assert not hasattr(student, "adapter")  # the adapter is discarded


def test_cached_and_online_teacher_give_the_same_student(
    small_splits: DataSplits, tiny_teacher: ConvNet
) -> None:
    results = []
    for cache in (True, False):
        student = build_student(small_splits, seed=1, spec=TINY_STUDENT)
        config = DistillConfig(epochs=2, lr=1e-2, batch_size=50, seed=1, cache_teacher=cache)
        distill(student, tiny_teacher, small_splits, config)
        results.append(student.state_dict())
    for name, value in results[0].items():
        torch.testing.assert_close(value, results[1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_label_only_ablation_matches_plain_fit(small_splits: DataSplits) -> None:
    config = DistillConfig(epochs=2, lr=1e-2, batch_size=50, seed=2, patience=2)
    a = build_student(small_splits, seed=2, spec=TINY_STUDENT)
    train_label_only(a, small_splits, config)
    b = build_student(small_splits, seed=2, spec=TINY_STUDENT)
    fit(
        b,
        (small_splits.x_train, small_splits.y_train),
        (small_splits.x_val, small_splits.y_val),
        epochs=2,
        lr=1e-2,
        batch_size=50,
        seed=2,
        patience=2,
        weight_decay=config.weight_decay,
    )
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name


def test_build_student_is_seeded(small_splits: DataSplits) -> None:
    a = build_student(small_splits, seed=5, spec=TINY_STUDENT)
    b = build_student(small_splits, seed=5, spec=TINY_STUDENT)
    c = build_student(small_splits, seed=6, spec=TINY_STUDENT)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_make_adapter_maps_student_to_teacher_channels() -> None:
    student = build_net(TINY_STUDENT, in_channels=1, num_classes=10)
    teacher = build_net(TINY_TEACHER, in_channels=1, num_classes=10)
    adapter = make_adapter(student, teacher)
    assert (adapter.in_channels, adapter.out_channels, adapter.kernel_size) == (8, 8, (1, 1))


def test_distill_rejects_mismatched_networks(small_splits: DataSplits) -> None:
    student = build_net(TINY_STUDENT, in_channels=1, num_classes=10)
    wrong_teacher = build_net(TINY_TEACHER, in_channels=1, num_classes=7)
    with pytest.raises(TrainingError, match="teacher has 7 outputs"):
        distill(student, wrong_teacher, small_splits, DistillConfig(epochs=1))
    rgb_student = build_net(TINY_STUDENT, in_channels=3, num_classes=10)
    with pytest.raises(TrainingError, match="does not fit the data"):
        train_label_only(rgb_student, small_splits, DistillConfig(epochs=1))

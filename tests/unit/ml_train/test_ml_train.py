"""Unit tests of ml.train: determinism, learning, early stopping, best-weight restore and the hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ml.data import DataSplits
from ml.errors import TrainingError
from ml.nets import ConvBlock, ConvNet, NetSpec, build_net
from ml.train import accuracy, fit, predict, seed_everything

TINY_STUDENT = NetSpec(widths=(4, 8), pools=(True, False), feature_block=1)
SMALL = NetSpec(widths=(8, 16), pools=(False, True), feature_block=0)


def _net(splits: DataSplits, seed: int = 0, spec: NetSpec = TINY_STUDENT) -> ConvNet:
    seed_everything(seed)
    return build_net(spec, in_channels=1, num_classes=splits.num_classes)


def _data(splits: DataSplits) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return (splits.x_train, splits.y_train), (splits.x_val, splits.y_val)


class _FixedLogits(nn.Module):
    """Predicts class (sum of pixels > 0) with fixed logits; no parameters are used."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positive = (x.flatten(1).sum(1) > 0).float()
        return torch.stack([1 - positive, positive], dim=1) * self.scale


def test_fit_learns_and_restores_the_best_weights(small_splits: DataSplits) -> None:
    model = _net(small_splits, spec=SMALL)
    before = accuracy(model, small_splits.x_val, small_splits.y_val)
    result = fit(model, *_data(small_splits), epochs=6, lr=3e-2, batch_size=32, patience=6)
    after = accuracy(model, small_splits.x_val, small_splits.y_val)
    assert before < 0.3
    assert after > 0.7  # chance is 0.1
    # The restored weights are exactly the ones whose val accuracy was reported as best.
    assert after == pytest.approx(result.best_val_accuracy)
    assert result.best_val_accuracy == max(row["val_accuracy"] for row in result.history)
    assert result.history[result.best_epoch - 1]["val_accuracy"] == result.best_val_accuracy
    assert not model.training  # handed back in eval mode


def test_fit_is_deterministic_for_a_seed(small_splits: DataSplits) -> None:
    a, b, c = _net(small_splits), _net(small_splits), _net(small_splits)
    fit(a, *_data(small_splits), epochs=2, lr=5e-3, seed=3)
    fit(b, *_data(small_splits), epochs=2, lr=5e-3, seed=3)
    fit(c, *_data(small_splits), epochs=2, lr=5e-3, seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


class _Frozen(nn.Module):
    """Logits are the first ten pixels; its one parameter has zero gradient, so nothing ever improves."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] + 0.0 * self.unused


def test_early_stopping_fires_after_patience(small_splits: DataSplits) -> None:
    epochs_seen: list[int] = []
    result = fit(
        _Frozen(),
        *_data(small_splits),
        epochs=20,
        lr=1e-2,
        patience=3,
        progress=lambda epoch, metrics: epochs_seen.append(epoch),
    )
    assert result.epochs_run == 3
    assert epochs_seen == [1, 2, 3]
    assert result.best_epoch == 0  # the starting weights were never beaten, so they are kept


def test_early_stopping_counts_from_the_last_improvement(small_splits: DataSplits) -> None:
    model = _net(small_splits)
    result = fit(model, *_data(small_splits), epochs=15, lr=3e-2, patience=2)
    assert result.epochs_run == result.best_epoch + 2 or result.epochs_run == 15
    rows = result.history
    for row in rows[result.best_epoch :]:
        assert row["val_accuracy"] <= result.best_val_accuracy


def test_after_step_runs_once_per_optimizer_step(small_splits: DataSplits) -> None:
    model = _net(small_splits)
    calls: list[nn.Module] = []
    fit(model, *_data(small_splits), epochs=2, lr=1e-3, batch_size=64, patience=5, after_step=calls.append)
    assert len(calls) == 2 * int(np.ceil(400 / 64))
    assert all(m is model for m in calls)


def test_after_step_can_enforce_a_constraint(small_splits: DataSplits) -> None:
    """The pruning use: a mask re-applied after each step survives training and the best-weight restore."""
    model = _net(small_splits)
    block = model.features[1]
    assert isinstance(block, ConvBlock)
    conv = block.conv
    mask = (torch.rand_like(conv.weight) > 0.5).float()

    def reapply(m: nn.Module) -> None:
        with torch.no_grad():
            conv.weight.mul_(mask)

    reapply(model)
    fit(model, *_data(small_splits), epochs=2, lr=1e-2, after_step=reapply)
    assert torch.all(conv.weight[mask == 0] == 0)


def test_custom_loss_is_used(small_splits: DataSplits) -> None:
    seen: list[int] = []

    def loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        seen.append(len(xb))
        return F.cross_entropy(model(xb), yb) * 0.0 + model(xb).pow(2).mean()

    model = _net(small_splits)
    result = fit(model, *_data(small_splits), epochs=1, lr=1e-3, batch_size=100, loss_fn=loss)
    assert seen == [100, 100, 100, 100]
    assert result.history[0]["train_loss"] >= 0


def test_indexed_loss_gets_the_rows_of_each_batch(small_splits: DataSplits) -> None:
    rows_seen: list[torch.Tensor] = []
    x_train = torch.from_numpy(small_splits.x_train)

    def loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        assert torch.equal(xb, x_train[rows])
        rows_seen.append(rows)
        return F.cross_entropy(model(xb), yb)

    fit(_net(small_splits), *_data(small_splits), epochs=1, lr=1e-3, indexed_loss_fn=loss)
    assert sorted(torch.cat(rows_seen).tolist()) == list(range(400))
    with pytest.raises(TrainingError, match="not both"):
        fit(
            _net(small_splits),
            *_data(small_splits),
            epochs=1,
            lr=1e-3,
            indexed_loss_fn=loss,
            loss_fn=lambda m, xb, yb: F.cross_entropy(m(xb), yb),
        )


def test_divergence_is_a_training_error(small_splits: DataSplits) -> None:
    def exploding(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return model(xb).sum() * float("inf")

    with pytest.raises(TrainingError, match="diverged"):
        fit(_net(small_splits), *_data(small_splits), epochs=1, lr=1e-3, loss_fn=exploding)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"patience": 0}, "patience"),
        ({"seed": -1}, "seed"),
        ({"optimizer": "lbfgs"}, "optimizer"),
    ],
)
def test_bad_hyper_parameters(small_splits: DataSplits, kwargs: dict, message: str) -> None:
    args = {"epochs": 1, "lr": 1e-3} | kwargs
    with pytest.raises(TrainingError, match=message):
        fit(_net(small_splits), *_data(small_splits), **args)


def test_bad_arrays(small_splits: DataSplits) -> None:
    x, y = small_splits.x_train, small_splits.y_train
    val = (small_splits.x_val, small_splits.y_val)
    cases = [
        ((x[:, 0], y), "4 dimensions"),
        ((x, y[:-1]), "400 samples but y has 399"),
        ((x[:0], y[:0]), "empty"),
        ((np.where(x > 1, np.nan, x).astype(np.float32), y), "NaN"),
        ((x, y.astype(np.float32)), "integer class ids"),
        ((x, y + 10), "only 10 outputs"),
    ]
    for train, message in cases:
        with pytest.raises(TrainingError, match=message):
            fit(_net(small_splits), train, val, epochs=1, lr=1e-3)
    with pytest.raises(TrainingError, match="cannot run on inputs"):
        wrong = np.zeros((8, 3, 8, 8), np.float32)
        fit(_net(small_splits), (wrong, y[:8]), (wrong, y[:8]), epochs=1, lr=1e-3)


def test_predict_and_accuracy() -> None:
    model = _FixedLogits()
    model.train()
    x = np.array([1, -1, 2, -3, 5], dtype=np.float32).reshape(5, 1, 1, 1)
    logits = predict(model, x, batch_size=2)
    assert logits.dtype == np.float32 and logits.shape == (5, 2)
    assert logits.argmax(1).tolist() == [1, 0, 1, 0, 1]
    assert model.training  # the caller's mode is restored
    assert accuracy(model, x, np.array([1, 0, 0, 0, 0])) == pytest.approx(0.6)
    with pytest.raises(TrainingError):
        predict(model, x[:, 0])
    with pytest.raises(TrainingError):
        accuracy(model, x, np.array([1, 0]))


def test_seed_everything_makes_initialisation_repeatable(small_splits: DataSplits) -> None:
    a, b = _net(small_splits, seed=7), _net(small_splits, seed=7)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(TrainingError):
        seed_everything(-5)

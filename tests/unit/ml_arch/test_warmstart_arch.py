"""init_from for any architecture: weights cards of torchvision and user nets, pruned ones included."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ml.arch import build_model
from ml.data import DataSplits, split
from ml.errors import WarmStartError
from ml.prune import prune_structured
from ml.train import seed_everything
from ml.warmstart import MODEL_STEM, can_save, load_net, read_card, save_net

SHAPE = (3, 32, 32)
CLASSES = 4


def _splits() -> DataSplits:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, *SHAPE)).astype(np.float32)
    y = (np.arange(40) % CLASSES).astype(np.int64)
    return split(x, y, [f"c{c}" for c in range(CLASSES)], name="tiny", val_fraction=0.25, test_fraction=0.25)


def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("pruned", [False, True])
def test_torchvision_net_round_trips_through_its_card(name: str, pruned: bool, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    splits = _splits()
    kwargs = {"width_mult": 0.75} if name.startswith("mobilenet") else {}
    model = build_model(
        f"torchvision:{name}", role="student", input_shape=SHAPE, num_classes=CLASSES, kwargs=kwargs
    ).eval()
    if pruned:
        model = prune_structured(model, 0.5, multiple_of=8, input_shape=SHAPE).eval()
    assert can_save(model)
    save_net(model, tmp_path, MODEL_STEM, variant="student-structured-fp32", splits=splits)
    card = read_card(tmp_path, MODEL_STEM)
    assert (card.arch, dict(card.arch_kwargs), card.spec) == (f"torchvision:{name}", kwargs, None)
    loaded = load_net(tmp_path, MODEL_STEM).model
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in loaded.state_dict().items()} == shapes
    x = splits.x_test[:4]
    np.testing.assert_allclose(_logits(loaded, x), _logits(model, x), rtol=1e-5, atol=1e-5)
    # A fine-tune of the loaded copy can be saved again (the architecture travels with the module).
    assert can_save(loaded)


def test_modules_not_built_by_ml_arch_are_refused_with_the_reason(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, CLASSES))
    assert not can_save(model)
    with pytest.raises(WarmStartError, match=r"not built by ml\.arch\.build_model"):
        save_net(model, tmp_path, MODEL_STEM, variant="student-fp32", splits=_splits())


def test_weights_of_another_architecture_are_a_clear_error(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    model = build_model("torchvision:resnet18", role="student", input_shape=SHAPE, num_classes=CLASSES)
    save_net(model, tmp_path, MODEL_STEM, variant="student-fp32", splits=_splits())
    card_path = tmp_path / f"{MODEL_STEM}.json"
    raw = json.loads(card_path.read_text())
    raw["arch"] = "torchvision:mobilenet_v3_small"
    card_path.write_text(json.dumps(raw))
    with pytest.raises(WarmStartError, match=r"does not fit the architecture in model\.json"):
        load_net(tmp_path, MODEL_STEM)


def test_user_factory_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_nets_ws.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def small(num_classes, in_channels=3, width=8):
                return nn.Sequential(
                    nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
                )
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    seed_everything(0)
    splits = _splits()
    model = build_model(
        "my_nets_ws:small", role="student", input_shape=SHAPE, num_classes=CLASSES, kwargs={"width": 16}
    )
    save_net(model, tmp_path / "w", MODEL_STEM, variant="student-fp32", splits=splits)
    loaded = load_net(tmp_path / "w", MODEL_STEM).model
    x = splits.x_test[:4]
    np.testing.assert_allclose(_logits(loaded, x), _logits(model, x), rtol=1e-6, atol=1e-6)

"""External-data ONNX models get tensor-aware deltas; applying never loads onnx, torch or the server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from ota.core.delta import apply_delta, make_delta
from ota.core.delta.make import build_patch


def _save_external(folder: Path, model_bytes: bytes) -> None:
    folder.mkdir()
    model = onnx.load_from_string(model_bytes)
    onnx.save_model(
        model, str(folder / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=512
    )


def test_external_data_files_get_model_aware_deltas(
    tmp_path: Path, onnx_model: Callable[..., bytes], tensors: Callable[..., dict[str, np.ndarray]]
) -> None:
    base = tensors(0, big=True)
    rng = np.random.default_rng(3)
    new = {
        name: (array * np.float32(1.01) + rng.standard_normal(array.shape).astype(np.float32) * 1e-5).astype(
            np.float32
        )
        if array.dtype == np.float32
        else array
        for name, array in base.items()
    }
    _save_external(tmp_path / "v1", onnx_model(base))
    _save_external(tmp_path / "v2", onnx_model(new))
    old_data, new_data = tmp_path / "v1" / "m.onnx.data", tmp_path / "v2" / "m.onnx.data"

    for old_file, new_file in [
        (old_data, new_data),
        (tmp_path / "v1" / "m.onnx", tmp_path / "v2" / "m.onnx"),
    ]:
        patch, out = tmp_path / "p.efd", tmp_path / "out"
        make_delta(old_file, new_file, patch)
        apply_delta(old_file, patch, out)
        assert out.read_bytes() == new_file.read_bytes()

    header = make_delta(old_data, new_data, tmp_path / "data.efd")
    assert header.codec == "model-aware"
    # Without the sibling .onnx the same file is opaque bytes: the layout is what makes it small.
    blind = build_patch(old_data.read_bytes(), new_data.read_bytes())
    assert header.patch_length < 0.8 * len(blind)


def test_apply_path_imports_no_heavy_modules(small_patch: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, new, patch = small_patch
    out = tmp_path / "out.onnx"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from ota.core.delta import apply_delta\n"
        f"apply_delta(Path({str(old)!r}), Path({str(patch)!r}), Path({str(out)!r}))\n"
        "heavy = ('onnx', 'torch', 'onnxruntime', 'sqlalchemy', 'fastapi', 'zenml', 'mlflow', 'ota.server')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
    assert out.read_bytes() == new.read_bytes()

"""`edgefleet delta make/apply/info` drive the engine and turn its errors into one line and exit code 1."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ota.core.cli import delta_app

runner = CliRunner()


def test_make_apply_info_roundtrip(small_patch: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, new, _ = small_patch
    patch, out = tmp_path / "p.efd", tmp_path / "out.onnx"
    made = runner.invoke(delta_app, ["make", str(old), str(new), "-o", str(patch)])
    assert made.exit_code == 0, made.output
    assert "model-aware" in made.output
    applied = runner.invoke(delta_app, ["apply", str(old), str(patch), "-o", str(out)])
    assert applied.exit_code == 0, applied.output
    assert out.read_bytes() == new.read_bytes()
    info = runner.invoke(delta_app, ["info", str(patch)])
    assert info.exit_code == 0
    assert "result_length" in info.output and str(new.stat().st_size) in info.output
    assert "literal_method" in info.output and "control_method" in info.output


def test_full_make_and_apply_without_base(small_patch: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, new, _ = small_patch
    patch, out = tmp_path / "full.efd", tmp_path / "out.onnx"
    assert runner.invoke(delta_app, ["make", "--full", str(new), "-o", str(patch)]).exit_code == 0
    assert runner.invoke(delta_app, ["apply", str(patch), "-o", str(out)]).exit_code == 0
    assert out.read_bytes() == new.read_bytes()
    assert "no base" in runner.invoke(delta_app, ["info", str(patch)]).output


def test_errors_are_one_line_and_exit_code_1(small_patch: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, new, patch = small_patch
    result = runner.invoke(delta_app, ["apply", str(new), str(patch), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "BaseMismatchError" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    bad = tmp_path / "bad"
    bad.write_bytes(b"nonsense")
    info = runner.invoke(delta_app, ["info", str(bad)])
    assert info.exit_code == 1 and "PatchFormatError" in info.output

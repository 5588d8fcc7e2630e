"""Benchmark of ``ota.core.delta`` against generic binary diff tools on model pairs built offline with torch.

Run by ``make bench`` (not ``make test``): ``python bench/delta_bench.py [--models small,resnet18]``.
Needs Debian's ``xdelta3`` and ``zstd`` CLIs (``apt-get install -y xdelta3 zstd``).

Two networks, both built here (no download): a ~240k-parameter CNN and a hand-written ResNet-18 (11.7M
parameters, ~45 MB FP32). For each, six scenarios: (1) fine-tune of all layers at a small learning rate,
(2) retraining of the head only, (3) retraining from scratch with a new seed, (4) INT8 static quantization of
scenario 1's old and new, (5) INT8 of scenario 2, (6) a metadata-only change. Each tool makes a patch, which
is applied in a fresh subprocess (so peak RSS is the whole process's) and checked byte for byte.
Baselines: bsdiff4 and HDiffPatch (LZMA2, its strongest codec), ``xdelta3 -9``,
``zstd -19 --patch-from --long``, full ``zstd -19 --long`` and raw. Models are cached in bench/out/delta/.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "delta"
PYTHON = sys.executable
sys.path.insert(0, str(ROOT))

from ml.files import atomic_path, file_sha256  # noqa: E402  (after the path insert: run as a script)

SCENARIOS = ["finetune", "head-only", "scratch", "int8-finetune", "int8-head-only", "metadata"]


# --------------------------------------------------------------------------------------------- models (torch)
def _build(kind: str, seed: int):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class ResNet18(nn.Module):
        def __init__(self, classes: int = 1000) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
            )
            layers, cin = [], 64
            for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
                layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
                cin = cout
            self.body = nn.Sequential(*layers)
            self.fc = nn.Linear(512, classes)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(self.stem(x)), 1), 1))

    class SmallCNN(nn.Module):
        def __init__(self, classes: int = 10) -> None:
            super().__init__()

            def block(cin: int, cout: int, stride: int) -> nn.Sequential:
                return nn.Sequential(
                    nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
                )

            self.body = nn.Sequential(
                block(3, 32, 1), block(32, 64, 2), block(64, 128, 2), block(128, 128, 1)
            )
            self.fc = nn.Linear(128, classes)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1))

    return ResNet18() if kind == "resnet18" else SmallCNN()


def _data(kind: str, steps: int, seed: int):  # type: ignore[no-untyped-def]
    import torch

    generator = torch.Generator().manual_seed(seed)
    size, batch, classes = (64, 8, 1000) if kind == "resnet18" else (32, 16, 10)
    return [
        (
            torch.randn(batch, 3, size, size, generator=generator),
            torch.randint(0, classes, (batch,), generator=generator),
        )
        for _ in range(steps)
    ]


def _train(model, kind: str, *, lr: float, steps: int, seed: int, head_only: bool = False) -> None:  # type: ignore[no-untyped-def]
    import torch

    params = model.fc.parameters() if head_only else model.parameters()
    optimiser = torch.optim.SGD(params, lr=lr, momentum=0.9)
    # Head-only retraining keeps the frozen backbone in eval mode, so its BatchNorm statistics stay put.
    model.train(not head_only)
    model.fc.train()
    for inputs, labels in _data(kind, steps, seed):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimiser.step()
    model.eval()


def _export(model, kind: str, path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    size = 64 if kind == "resnet18" else 32
    with atomic_path(path) as tmp:
        torch.onnx.export(
            model, (torch.randn(1, 3, size, size),), str(tmp), dynamo=True, external_data=False,
            input_names=["input"], output_names=["logits"],
        )  # fmt: skip


def _quantize(source: Path, target: Path, kind: str) -> None:
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    size = 64 if kind == "resnet18" else 32
    rng = np.random.default_rng(1234)  # the same calibration data for old and new
    batches = [{"input": rng.standard_normal((1, 3, size, size)).astype(np.float32)} for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.items, None)

    with atomic_path(target) as tmp:
        quantize_static(
            str(source), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
        )  # fmt: skip


def metadata_release(onnx_model, *, release: str = "2026.11.28"):  # type: ignore[no-untyped-def]
    """The same model with only its metadata changed, as a metadata-only release makes it.

    A new producer name, doc string and metadata properties; graph and weights untouched (the built-in
    networks' ``metadata`` pair keeps its producer name, as it always did).
    """
    import onnx

    meta = onnx.ModelProto.FromString(onnx_model.SerializeToString())
    meta.producer_name = "edgefleet-exporter"
    meta.doc_string = f"EdgeFleet release {release}: same weights, new release notes."
    meta.model_version = 2
    onnx.helper.set_model_props(meta, {"release": release, "git_sha": "3f1c2ab", "owner": "perception"})
    return meta


def file_pairs(path: Path) -> dict[str, tuple[Path, Path]]:
    """The metadata-only pair of any ONNX file (``--models file:PATH``): the file and its metadata release."""
    import onnx

    folder = OUT / f"file-{path.stem}"
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "meta.onnx"
    onnx.save(metadata_release(onnx.load(str(path))), str(meta))
    return {"metadata": (path, meta)}


def build_models(kind: str) -> dict[str, tuple[Path, Path]]:
    """Build (or load from bench/out/delta) the six (old, new) pairs of one network."""
    import copy

    import onnx

    if kind.startswith("file:"):
        return file_pairs(Path(kind.removeprefix("file:")))
    folder = OUT / kind
    folder.mkdir(parents=True, exist_ok=True)
    path = {name: folder / f"{name}.onnx" for name in ["base", "finetune", "head", "scratch", "meta"]}
    steps = 12 if kind == "resnet18" else 40
    if not all(p.exists() for p in path.values()):
        print(f"[{kind}] training and exporting models (cached in {folder})", flush=True)
        base = _build(kind, seed=0)
        _train(base, kind, lr=0.05, steps=steps, seed=10)
        finetune = copy.deepcopy(base)
        _train(finetune, kind, lr=1e-3, steps=steps, seed=11)  # fine-tune: all layers, small lr
        head = copy.deepcopy(base)
        _train(head, kind, lr=1e-2, steps=steps, seed=12, head_only=True)
        scratch = _build(kind, seed=1)
        _train(scratch, kind, lr=0.05, steps=steps, seed=10)
        for name, model in [("base", base), ("finetune", finetune), ("head", head), ("scratch", scratch)]:
            _export(model, kind, path[name])
        meta = onnx.load(str(path["base"]))
        meta.doc_string = "EdgeFleet release 2026.11.28: same weights, new release notes."
        meta.model_version = 2
        onnx.helper.set_model_props(
            meta, {"release": "2026.11.28", "git_sha": "3f1c2ab", "owner": "perception"}
        )
        onnx.save(meta, str(path["meta"]))
    for name in ["base", "finetune", "head"]:
        q = folder / f"{name}-int8.onnx"
        if not q.exists():
            print(f"[{kind}] quantizing {name}", flush=True)
            _quantize(path[name], q, kind)
    return {
        "finetune": (path["base"], path["finetune"]),
        "head-only": (path["base"], path["head"]),
        "scratch": (path["base"], path["scratch"]),
        "int8-finetune": (folder / "base-int8.onnx", folder / "finetune-int8.onnx"),
        "int8-head-only": (folder / "base-int8.onnx", folder / "head-int8.onnx"),
        "metadata": (path["base"], path["meta"]),
    }


# --------------------------------------------------------------------------------------------- tools
@dataclass
class Result:
    size: int
    create_s: float
    apply_s: float
    rss_mb: float
    apply_cpu_s: float = 0.0


def _long(*paths: Path) -> int:
    return max(10, min(30, math.ceil(math.log2(max(p.stat().st_size for p in paths) + 1)) + 1))


@dataclass
class Child:
    """What one subprocess cost: wall time, peak RSS, CPU time (user + sys) and its stdout."""

    wall_s: float
    rss_mb: float
    cpu_s: float
    stdout: str


def _run_child(argv: list[str]) -> Child:
    """Run a command in a fresh process and measure it with GNU time.

    Peak RSS comes from GNU time's report: ``wait4``'s ru_maxrss would include the pages of this (torch-laden)
    parent, which Linux carries across fork + exec. CPU time is reported too: on a shared machine it moves
    far less than wall time.
    """
    with tempfile.NamedTemporaryFile(suffix=".time") as report:
        start = time.perf_counter()
        completed = subprocess.run(
            ["/usr/bin/time", "-v", "-o", report.name, *argv], capture_output=True, check=False
        )
        elapsed = time.perf_counter() - start
        text = Path(report.name).read_text()
    if completed.returncode:
        raise RuntimeError(f"{argv[0]} failed: {completed.stderr.decode()[-500:]}")
    fields = {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if ":" in line
    }
    return Child(
        wall_s=elapsed,
        rss_mb=int(fields["Maximum resident set size (kbytes)"]) / 1024,
        cpu_s=float(fields["User time (seconds)"]) + float(fields["System time (seconds)"]),
        stdout=completed.stdout.decode(),
    )


_APPLY_CHILD = {
    "ours": "from pathlib import Path; from ota.core.delta import apply_delta as f\n"
    "def run(o, p, n): f(Path(o) if o else None, Path(p), Path(n))",
    "bsdiff4": "import bsdiff4\ndef run(o, p, n): bsdiff4.file_patch(o, n, p)",
    "hdiffpatch": "import hdiffpatch\n"
    "def run(o, p, n): open(n, 'wb').write(hdiffpatch.apply(open(o, 'rb').read(), open(p, 'rb').read()))",
}


def _python_apply(tool: str, old: Path | None, patch: Path, new: Path) -> tuple[float, float, float]:
    """Apply in a fresh Python; return the apply call's own time, peak RSS and the process's CPU time."""
    code = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n{_APPLY_CHILD[tool]}\n"
        f"t = time.perf_counter(); run({str(old) if old else ''!r}, {str(patch)!r}, {str(new)!r}); "
        "print(time.perf_counter() - t)"
    )
    child = _run_child([PYTHON, "-c", code])
    return float(child.stdout.strip().splitlines()[-1]), child.rss_mb, child.cpu_s


def tool_ours(old: Path | None, new: Path, work: Path) -> tuple[Result, Path]:
    from ota.core.delta import make_delta

    patch, out = work / "ours.efd", work / "ours.out"
    start = time.perf_counter()
    make_delta(old, new, patch)
    create = time.perf_counter() - start
    applied, rss, cpu = _python_apply("ours", old, patch, out)
    return Result(patch.stat().st_size, create, applied, rss, cpu), out


def tool_bsdiff4(old: Path | None, new: Path, work: Path) -> tuple[Result, Path]:
    import bsdiff4

    assert old is not None
    patch, out = work / "bsdiff.patch", work / "bsdiff.out"
    start = time.perf_counter()
    bsdiff4.file_diff(str(old), str(new), str(patch))
    create = time.perf_counter() - start
    applied, rss, cpu = _python_apply("bsdiff4", old, patch, out)
    return Result(patch.stat().st_size, create, applied, rss, cpu), out


def tool_hdiffpatch(old: Path | None, new: Path, work: Path) -> tuple[Result, Path]:
    import hdiffpatch

    assert old is not None
    patch, out = work / "hdiff.patch", work / "hdiff.out"
    start = time.perf_counter()
    window = max(12, min(30, math.ceil(math.log2(new.stat().st_size + 1))))
    patch.write_bytes(
        hdiffpatch.diff(
            old.read_bytes(), new.read_bytes(), hdiffpatch.Lzma2Config(level=9, window=window), validate=False
        )
    )
    create = time.perf_counter() - start
    applied, rss, cpu = _python_apply("hdiffpatch", old, patch, out)
    return Result(patch.stat().st_size, create, applied, rss, cpu), out


def _result(patch: Path, create: Child, applied: Child) -> Result:
    return Result(patch.stat().st_size, create.wall_s, applied.wall_s, applied.rss_mb, applied.cpu_s)


def tool_xdelta3(old: Path | None, new: Path, work: Path) -> tuple[Result, Path]:
    assert old is not None
    patch, out = work / "xdelta.vcdiff", work / "xdelta.out"
    # -B: a source window over the whole base (xdelta3's minimum is 512 KiB), so matches are never missed.
    window = str(max(old.stat().st_size, 1 << 19))
    create = _run_child(["xdelta3", "-9", "-f", "-e", "-B", window, "-s", str(old), str(new), str(patch)])
    applied = _run_child(["xdelta3", "-f", "-d", "-B", window, "-s", str(old), str(patch), str(out)])
    return _result(patch, create, applied), out


def tool_zstd_patch_from(old: Path | None, new: Path, work: Path) -> tuple[Result, Path]:
    assert old is not None
    patch, out = work / "zstd.patch", work / "zstd.out"
    long = f"--long={_long(old, new)}"
    create = _run_child(["zstd", "-q", "-f", "-19", long, f"--patch-from={old}", str(new), "-o", str(patch)])
    applied = _run_child(["zstd", "-q", "-f", "-d", long, f"--patch-from={old}", str(patch), "-o", str(out)])
    return _result(patch, create, applied), out


def tool_zstd_full(old: Path | None, new: Path, work: Path) -> tuple[Result, Path]:
    patch, out = work / "full.zst", work / "full.out"
    long = f"--long={_long(new)}"
    create = _run_child(["zstd", "-q", "-f", "-19", long, str(new), "-o", str(patch)])
    applied = _run_child(["zstd", "-q", "-f", "-d", long, str(patch), "-o", str(out)])
    return _result(patch, create, applied), out


def tool_raw(old: Path | None, new: Path, work: Path) -> tuple[Result, Path]:
    out = work / "raw.out"
    start = time.perf_counter()
    shutil.copyfile(new, out)
    return Result(new.stat().st_size, 0.0, time.perf_counter() - start, 0.0), out


BASELINES: dict[str, Callable[[Path | None, Path, Path], tuple[Result, Path]]] = {
    "bsdiff4": tool_bsdiff4,
    "hdiffpatch": tool_hdiffpatch,
    "xdelta3-9": tool_xdelta3,
    "zstd-patch-from": tool_zstd_patch_from,
    "zstd-19": tool_zstd_full,
    "raw": tool_raw,
}


def _digest(path: Path) -> str:
    return file_sha256(path)


def run_model(kind: str, tools: list[str], scenarios: list[str], *, full: bool = True) -> list[str]:
    """Benchmark one network; print its tables and return the acceptance lines."""
    pairs = build_models(kind)
    rows: list[tuple[str, int, dict[str, Result]]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="delta-bench-") as tmp:
        work = Path(tmp)
        for scenario in [s for s in scenarios if s in pairs]:
            old, new = pairs[scenario]
            expected = _digest(new)
            results: dict[str, Result] = {}
            for name in ["ours", *tools]:
                function = tool_ours if name == "ours" else BASELINES[name]
                result, out = function(old, new, work)
                if _digest(out) != expected:
                    raise SystemExit(f"{kind}/{scenario}: {name} did not rebuild the new file byte for byte")
                out.unlink()
                results[name] = result
                print(
                    f"  {kind:8} {scenario:15} {name:16} {result.size:>10} B  create {result.create_s:6.2f} s"
                    f"  apply {result.apply_s:5.2f} s (process cpu {result.apply_cpu_s:5.2f} s)"
                    f"  rss {result.rss_mb:6.1f} MB",
                    flush=True,
                )
            rows.append((scenario, new.stat().st_size, results))
        # Full (no-base) model-aware compression against zstd -19 of the raw file.
        for label, new in (
            [("fp32", pairs["finetune"][0]), ("int8", pairs["int8-finetune"][0])]
            if full and "finetune" in pairs
            else []
        ):
            ours, out = tool_ours(None, new, work)
            assert _digest(out) == _digest(new)
            zstd, _ = tool_zstd_full(None, new, work)
            notes.append(
                f"{kind} full {label}: ours {100 * ours.size / new.stat().st_size:.2f} % vs zstd -19 "
                f"{100 * zstd.size / new.stat().st_size:.2f} % -> ratio {ours.size / zstd.size:.3f} "
                f"(apply {ours.apply_s:.2f} s, rss {ours.rss_mb:.0f} MB)"
            )
    _print_table(kind, rows, tools)
    ratios = []
    for scenario, _, results in rows:
        baselines = {name: result for name, result in results.items() if name not in ("ours",)}
        best = min(baselines, key=lambda name: baselines[name].size)
        ratio = results["ours"].size / baselines[best].size
        ratios.append(ratio)
        ours = results["ours"]
        notes.append(
            f"{kind} {scenario}: ours/best({best}) = {ratio:.3f}; create {ours.create_s:.2f} s, "
            f"apply {ours.apply_s:.2f} s (process cpu {ours.apply_cpu_s:.2f} s), rss {ours.rss_mb:.0f} MB"
        )
    notes.append(f"{kind}: median ratio {statistics.median(ratios):.3f}, max ratio {max(ratios):.3f}")
    return notes


def _print_table(kind: str, rows: list[tuple[str, int, dict[str, Result]]], tools: list[str]) -> None:
    names = ["ours", *tools]
    header = (
        f"{'scenario':15} {'new MB':>7} "
        + " ".join(f"{name:>15}" for name in names)
        + f" {'best baseline':>16} {'ratio':>6}"
    )
    print(f"\n== {kind}: patch size, % of the new file (ratio = ours / best baseline) ==")
    print(header)
    print("-" * len(header))
    for scenario, size, results in rows:
        baselines = {name: result for name, result in results.items() if name != "ours"}
        best = min(baselines, key=lambda name: baselines[name].size)
        cells = " ".join(f"{100 * results[name].size / size:>14.3f}%" for name in names)
        ratio = results["ours"].size / baselines[best].size
        print(f"{scenario:15} {size / 1e6:>7.2f} {cells} {best:>16} {ratio:>6.3f}")
    print(f"\n== {kind}: create s / apply s / apply peak RSS MB (apply in a fresh process) ==")
    print(f"{'scenario':15} " + " ".join(f"{name:>22}" for name in names))
    for scenario, _, results in rows:
        cells = " ".join(
            f"{results[n].create_s:>7.2f}/{results[n].apply_s:>5.2f}/{results[n].rss_mb:>6.0f}" for n in names
        )
        print(f"{scenario:15} {cells}")


def main() -> None:
    """Parse arguments, run each network and print the tables and acceptance figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default="small,resnet18",
        help="comma list of: small, resnet18, file:PATH (any ONNX file: its metadata-only release)",
    )
    parser.add_argument("--tools", default=",".join(BASELINES), help="comma list of baselines to run")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of scenarios to run")
    parser.add_argument("--no-full", action="store_true", help="skip the full (no-base) compression rows")
    args = parser.parse_args()
    missing = [tool for tool in ("xdelta3", "zstd") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing CLIs {missing}: apt-get install -y xdelta3 zstd")
    tools = [tool for tool in args.tools.split(",") if tool]
    notes: list[str] = []
    for kind in args.models.split(","):
        notes += run_model(kind, tools, args.scenarios.split(","), full=not args.no_full)
    print("\n== acceptance figures ==")
    print("\n".join(notes))


if __name__ == "__main__":
    main()

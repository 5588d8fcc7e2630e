"""Footprint of ``edgefleet serve`` on a device: what the ``serve`` extra adds to ``edge``, and idle RSS.

* install size: the bytes of each distribution the ``serve`` extra adds to the ``edge`` extra (and their
  dependencies not already there), from the installed files' sizes;
* RSS (``/proc/<pid>/status``): a fresh interpreter with numpy and onnxruntime imported (what any ORT
  application pays), the same with the service's modules imported, and an idle ``edgefleet serve`` with a
  small model loaded and warmed up.

Run: ``.venv/bin/python bench/serve_footprint.py``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ota.serve.testing import run_service  # noqa: E402

# What `serve` needs beyond `edge` (onnxruntime, httpx, psutil, numpy and the base install are there).
ADDED = ("starlette", "uvicorn", "httptools", "prometheus-client", "orjson", "click")

CHILD = """
import sys
{imports}
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) / 1024)
"""


def dist_bytes(name: str) -> int:
    try:
        files = distribution(name).files or []
    except PackageNotFoundError:
        return 0
    paths = [Path(str(f.locate())) for f in files]
    return sum(path.stat().st_size for path in paths if path.exists())


def child_rss(imports: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(imports=imports)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO)},
    )
    return float(out.stdout.strip())


def main() -> None:
    from tests.unit.serve.models import linear  # a small 8→4 model is enough for idle RSS

    console = Console()
    sizes = Table(title="install size the serve extra adds to edge")
    sizes.add_column("distribution")
    sizes.add_column("MiB", justify="right")
    total = 0
    for name in ADDED:
        size = dist_bytes(name)
        total += size
        sizes.add_row(name, f"{size / 2**20:.2f}")
    sizes.add_row("total", f"{total / 2**20:.2f}")
    sizes.add_row("(for scale) onnxruntime", f"{dist_bytes('onnxruntime') / 2**20:.1f}")
    console.print(sizes)

    base = child_rss("import numpy, onnxruntime")
    imported = child_rss("import numpy, onnxruntime, uvicorn, ota.serve.app, ota.serve.cli")
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "m.onnx"
        model.write_bytes(linear(1)[0])
        with run_service(["--model", str(model), "--intra-op-threads", "1"]) as service:
            idle = service.rss_mib()
    rss = Table(title="resident memory (MiB)")
    for column in ("process", "RSS", "× baseline"):
        rss.add_column(column, justify="right")
    for label, value in (
        ("numpy + onnxruntime imported (baseline)", base),
        ("+ the service's modules imported", imported),
        ("edgefleet serve, idle, small model warm", idle),
    ):
        rss.add_row(label, f"{value:.0f}", f"{value / base:.2f}")
    console.print(rss)


if __name__ == "__main__":
    main()

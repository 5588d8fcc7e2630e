"""Peak memory of ota.core.delta.make_delta on a 40 MB ONNX model (10 random 1000x1000 float32 initializers,
every 50th row changed): traced heap peak and max RSS, as a ratio of the model size (issue 9, item 8).

Run: PYTHONPATH=. python bench/delta_memory.py
"""

from __future__ import annotations

import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ota.core.delta import make_delta


def write_model(path: Path, *, tweak: bool) -> None:
    """Write a 10-layer MatMul chain with random 4 MB initializers (the same seed for base and new)."""
    rng = np.random.default_rng(1)
    initializers, nodes, previous = [], [], "x"
    for index in range(10):
        weights = rng.standard_normal((1000, 1000)).astype(np.float32)
        if tweak:
            weights[::50] += 0.01
        initializers.append(numpy_helper.from_array(weights, f"w{index}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{index}"], [f"h{index}"]))
        previous = f"h{index}"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1000])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, 1000])],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def main() -> None:
    """Build base and new models, make the delta under tracemalloc, print the peaks."""
    folder = Path(tempfile.mkdtemp(prefix="delta-memory-"))
    write_model(folder / "base.onnx", tweak=False)
    write_model(folder / "new.onnx", tweak=True)
    size = (folder / "new.onnx").stat().st_size
    tracemalloc.start()
    started = time.perf_counter()
    make_delta(folder / "base.onnx", folder / "new.onnx", folder / "patch.bin")
    _current, peak = tracemalloc.get_traced_memory()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print(
        f"model {size / 1e6:.1f} MB | patch {(folder / 'patch.bin').stat().st_size / 1e6:.2f} MB | "
        f"traced peak {peak / 1e6:.1f} MB ({peak / size:.2f}x) | {time.perf_counter() - started:.1f} s | "
        f"max RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()

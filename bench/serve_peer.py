"""The peer for ``bench/serve_bench.py``: the inference server a user would write by hand.

A FastAPI route that takes the same Open Inference Protocol JSON body, calls ``session.run`` once
per request (a plain ``def`` route, so FastAPI runs it on its thread pool, several at once) and answers
JSON; ``/binary/...`` takes the tensor as raw bytes. No batching, queue bound or warm-up.
Run: ``PEER_MODEL=model.onnx PEER_THREADS=1 uvicorn bench.serve_peer:app``.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import numpy as np
import onnxruntime as ort
from fastapi import Body, FastAPI, Request
from starlette.concurrency import run_in_threadpool

_options = ort.SessionOptions()
_options.intra_op_num_threads = int(os.environ.get("PEER_THREADS", "1"))
_options.inter_op_num_threads = 1
session = ort.InferenceSession(
    os.environ["PEER_MODEL"], sess_options=_options, providers=["CPUExecutionProvider"]
)
_input = session.get_inputs()[0].name
app = FastAPI()


@app.get("/v2/health/ready")
def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
def infer(name: str, body: Annotated[dict[str, Any], Body()]) -> dict[str, object]:
    tensor = body["inputs"][0]
    return _run(name, np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"]))


@app.post("/binary/{name}/infer")
async def infer_binary(name: str, request: Request) -> dict[str, object]:
    """The same with the tensor as raw bytes after a JSON header (the protocol's binary layout)."""
    raw = await request.body()
    split = int(request.headers["inference-header-content-length"])
    shape = json.loads(raw[:split])["inputs"][0]["shape"]
    x = np.frombuffer(raw[split:], dtype=np.float32).reshape(shape)
    return await run_in_threadpool(_run, name, x)


def _run(name: str, x: np.ndarray) -> dict[str, object]:
    (y,) = session.run(None, {_input: x})
    return {
        "model_name": name,
        "outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}],
    }

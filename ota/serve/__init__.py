"""``edgefleet serve``: the on-device inference service (Open Inference Protocol over HTTP/REST).

It serves the model the agent committed (or a given ONNX file) to the applications on the device, with
Triton's dynamic batching knobs, warm-up before readiness, hot swap on commit and Prometheus metrics.
Like :mod:`ota.edge` it runs on the vehicle: it imports ``ota.core``, onnxruntime, numpy, a small ASGI
stack (starlette + uvicorn) and prometheus-client, never torch, ZenML, MLflow, SQLAlchemy, FastAPI, onnx
or boto3 (an import-linter contract enforces it). Its only view of the agent is :mod:`ota.serve.source`.
"""

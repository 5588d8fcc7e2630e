# EdgeFleet inference service: `pip install .[serve]` only (no torch, zenml, mlflow, sqlalchemy or server code).
# Build from the repository root:  docker build -f docker/serve.Dockerfile -t edgefleet-serve .
# Beside the agent, sharing its state dir (read-only here):
#   docker run -v agent-state:/var/lib/edgefleet:ro -p 8000:8000 edgefleet-serve
# A plain ONNX file instead:  docker run -v $PWD/m.onnx:/models/m.onnx:ro -p 8000:8000 edgefleet-serve --model /models/m.onnx
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ota ./ota
RUN python -m venv /opt/edgefleet \
    && /opt/edgefleet/bin/pip install ".[serve]"

FROM python:3.11-slim
ENV PATH=/opt/edgefleet/bin:$PATH PYTHONUNBUFFERED=1
COPY --from=build /opt/edgefleet /opt/edgefleet
# The agent's image runs as uid 10001 and keeps its state dir private (0700): the same uid reads it here.
RUN useradd --system --uid 10001 --home-dir /var/lib/edgefleet --create-home edgefleet
USER 10001
WORKDIR /var/lib/edgefleet
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
ENTRYPOINT ["edgefleet-serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--state-dir", "/var/lib/edgefleet"]

# EdgeFleet OTA server: `pip install .[server]` (FastAPI on uvicorn; no torch, zenml or mlflow).
# Build from the repository root:  docker build -f docker/server.Dockerfile -t edgefleet-server .
# Production needs EDGEFLEET_MODE=production, EDGEFLEET_TOKEN_SECRET, EDGEFLEET_DATABASE_URL, EDGEFLEET_BLOB_URL
# and a key folder made offline with `edgefleet keys init` (mounted at /var/lib/edgefleet/keys).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
# Only the ota package: the server never imports the training or registry code.
COPY ota ./ota
RUN python -m venv /opt/edgefleet \
    && /opt/edgefleet/bin/pip install ".[server]"

FROM python:3.11-slim
ENV PATH=/opt/edgefleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EDGEFLEET_HOME=/var/lib/edgefleet \
    EDGEFLEET_HOST=0.0.0.0 \
    EDGEFLEET_PORT=8000
COPY --from=build /opt/edgefleet /opt/edgefleet
RUN useradd --system --uid 10001 --home-dir /var/lib/edgefleet --create-home edgefleet
USER 10001
WORKDIR /var/lib/edgefleet
VOLUME ["/var/lib/edgefleet"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["edgefleet", "server"]
CMD ["run"]

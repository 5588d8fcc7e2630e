# EdgeFleet edge agent: a slim image with only `pip install .[edge]` (no torch, zenml, mlflow, server code).
# Build from the repository root:  docker build -f docker/agent.Dockerfile -t edgefleet-agent .
# Run:  docker run -v agent-state:/var/lib/edgefleet edgefleet-agent --server https://ota.example --provisioning-token T
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
# Only the ota package: training and registry code is never needed on a device.
COPY ota ./ota
RUN python -m venv /opt/edgefleet \
    && /opt/edgefleet/bin/pip install ".[edge]"

FROM python:3.11-slim
ENV PATH=/opt/edgefleet/bin:$PATH PYTHONUNBUFFERED=1
COPY --from=build /opt/edgefleet /opt/edgefleet
RUN useradd --system --uid 10001 --home-dir /var/lib/edgefleet --create-home edgefleet
USER 10001
WORKDIR /var/lib/edgefleet
VOLUME ["/var/lib/edgefleet"]
ENTRYPOINT ["edgefleet-agent", "--state-dir", "/var/lib/edgefleet"]
CMD ["--help"]

# Simulated vLLM replica (pointsman.sim) for the compose stack and the Kubernetes demo pools.
# OpenAI API and Prometheus /metrics on 8000, like vLLM. Not a production component.
# Build from the repository root:
#   docker build -f deploy/compose/sim.Dockerfile -t pointsman-sim .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY src ./src
COPY services ./services
RUN python -m venv /opt/pointsman \
 && /opt/pointsman/bin/pip install --upgrade pip wheel \
 && /opt/pointsman/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/pointsman/bin/pip install --find-links /wheels "pointsman[sim]" \
 && /opt/pointsman/bin/pip uninstall -y pip wheel

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/pointsman/bin:$PATH
RUN groupadd --system --gid 10001 pointsman \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin pointsman
COPY --from=builder /opt/pointsman /opt/pointsman
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["python", "-m", "pointsman.sim"]
CMD ["--host", "0.0.0.0", "--port", "8000", "--model", "sim-model"]

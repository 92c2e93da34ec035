# syntax=docker/dockerfile:1
# Two images from one file, both running as a non-root user:
#   docker build --target api -t animate-api .        HTTP only: FastAPI, no torch
#   docker build --target worker -t animate-worker .  the engine, on a CUDA PyTorch base
# docker-compose.yml builds and wires both.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

# The project as a wheel, so neither final image carries the source tree or build tools.
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY service ./service
COPY engine ./engine
COPY worker ./worker
COPY cli ./cli
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS api
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
RUN python -m pip install --upgrade pip \
    && python -m pip install "$(ls /wheels/animate-*.whl)[api]" \
    && rm -rf /wheels
RUN useradd --create-home --uid 10001 animate && mkdir -p /data && chown animate /data
USER animate
WORKDIR /home/animate
ENV HOST=0.0.0.0 PORT=8000 DATA_DIR=/data WEIGHTS_DIR=/weights
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["python", "-m", "service"]

FROM ${TORCH_IMAGE} AS worker
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
# The same steps as `make setup`: torch pinned first (the base image's own build, so nothing is
# downloaded), then the project with its worker extra.
RUN python -m pip install --upgrade pip \
    && python -m pip install torch==2.13.0 \
    && python -m pip install "$(ls /wheels/animate-*.whl)[worker]" \
    && rm -rf /wheels
RUN useradd --create-home --uid 10001 animate && mkdir -p /data && chown animate /data
USER animate
WORKDIR /home/animate
ENV DATA_DIR=/data WEIGHTS_DIR=/weights WORKER_DEVICE=cuda
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "worker.run", "--healthcheck"]
CMD ["python", "-m", "worker.run"]

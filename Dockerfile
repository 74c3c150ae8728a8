# v4serve: OpenAI-compatible DeepSeek-V4 server on a CUDA runtime.
# Build:       docker build -t v4serve .
# Demo model:  docker run --rm -p 8000:8000 v4serve                (tiny random-weight model; no GPU needed)
# Checkpoint:  docker run --rm --gpus all --shm-size 16g -p 8000:8000 \
#                -v /path/to/DeepSeek-V4-Flash:/model:ro -v v4serve-kernels:/cache/triton v4serve [v4serve serve flags]
# A checkpoint mounted at /model (any directory with a config.json; V4SERVE_MODEL_DIR moves it) is
# served instead of the demo; flags after the image name go to `v4serve serve` (see --help).
FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

# Distribution packages follow the pinned base image release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common curl ca-certificates \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

# torch first, pinned: the default Linux wheel is a CUDA build and brings its matching triton.
ARG TORCH_VERSION=2.13.0
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY chat ./chat
COPY engine ./engine
COPY kvcache ./kvcache
COPY kernels ./kernels
COPY models ./models
COPY bench ./bench
# The [gpu] extra is only triton, which the CUDA torch above already brought: check it is there.
RUN pip install --no-cache-dir . && python -c "import triton; print('triton', triton.__version__)"
COPY deploy/docker-entrypoint.sh /usr/local/bin/v4serve-entrypoint

# Compiled Triton kernels: the first start on a GPU compiles every kernel variant the CUDA-graph capture
# needs (about 1.5 minutes on one H200); mount a volume at /cache/triton so restarts reuse them.
RUN useradd --create-home --uid 1000 v4serve && mkdir -p /cache/triton && chown 1000:1000 /cache/triton
USER 1000:1000
# The demo model is written at build time (~/.cache/v4serve), so a run without a checkpoint starts at once.
RUN python -c "from models.demo import ensure_demo_model; print(ensure_demo_model())"

ENV V4SERVE_MODEL_DIR=/model \
    V4SERVE_PORT=8000 \
    TRITON_CACHE_DIR=/cache/triton
EXPOSE 8000
# /health answers 503 while the weights load (minutes for a real checkpoint), 200 once ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["sh", "-c", "curl -fsS \"http://127.0.0.1:${V4SERVE_PORT:-8000}/health\" || exit 1"]

# Setting ENTRYPOINT clears the base image's CMD: no arguments = demo model or the checkpoint at /model.
ENTRYPOINT ["v4serve-entrypoint"]

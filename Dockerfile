# v4serve: OpenAI-compatible DeepSeek-V4 server on a CUDA runtime.
# Build:  docker build -t v4serve .
# Run:    docker run --gpus all -p 8000:8000 -v /path/to/DeepSeek-V4-Flash:/models/DeepSeek-V4-Flash v4serve
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

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY engine ./engine
COPY kvcache ./kvcache
COPY kernels ./kernels
COPY models ./models
COPY bench ./bench
RUN pip install --no-cache-dir .

RUN useradd --create-home --uid 1000 v4serve \
    && mkdir -p /models \
    && chown v4serve:v4serve /models
USER 1000:1000

VOLUME /models
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"]

ENTRYPOINT ["v4serve", "serve"]
CMD ["/models/DeepSeek-V4-Flash", "--host", "0.0.0.0", "--port", "8000"]

# fusion-search: CPU-only image of exactly what pyproject.toml packages.
#   docker build -t fusion-search .          (or: docker compose up --build)
# Where python:3.11-slim or the PyTorch CPU index cannot be reached, point the two arguments
# elsewhere (scripts/docker-test.sh does, with a local base image and wheel mirror):
#   --build-arg BASE_IMAGE=... --build-arg TORCH_INDEX=...
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# CPU wheels of torch/torchvision (no CUDA libraries): an extra index beside PyPI, where the
# CPU build (2.14.1+cpu) outranks PyPI's CUDA build of the same release.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Optional, for a local mirror: more indexes (space-separated) and hosts trusted over HTTP.
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST

LABEL org.opencontainers.image.title="fusion-search" \
      org.opencontainers.image.description="Image-text retrieval service (open_clip, FAISS, SQLite)"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FUSION_DATA_DIR=/data \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch

# /files: the image files volume that replicas share (docker-compose.scale.yml, FUSION_FILES_DIR)
RUN useradd --create-home --uid 10001 fusion \
    && mkdir -p /data /cache /files && chown fusion:fusion /data /cache /files

# Dependencies first, in their own layer: a change to the code does not reinstall torch.
# One resolver run for torch, torchvision and everything pyproject.toml names, so pillow (which
# torchvision brings unpinned) lands once, inside the project's own range. The `postgres` extra
# (psycopg, a few MB) too: FUSION_DATABASE_URL works in the image (docker-compose.scale.yml).
COPY pyproject.toml /tmp/src/
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/src/pyproject.toml', 'rb')); \
print('\n'.join(p['project']['dependencies'] + p['project']['optional-dependencies']['postgres'] \
+ p['build-system']['requires']))" \
        > /tmp/requirements.txt \
    && PIP_EXTRA_INDEX_URL="${TORCH_INDEX} ${PIP_EXTRA_INDEX_URL:-}" \
        pip install "torch==2.14.1" "torchvision==0.29.1" -r /tmp/requirements.txt \
    && rm -rf /tmp/requirements.txt /root/.cache

# The project itself, from the build context (.dockerignore keeps out venvs, data, tests, docs).
COPY . /tmp/src
RUN pip install --no-deps --no-build-isolation /tmp/src \
    && pip check \
    && rm -rf /tmp/src /root/.cache

USER fusion
WORKDIR /home/fusion
# /data: catalog, image files, FAISS snapshot. /cache: pretrained weights downloaded once.
VOLUME ["/data", "/cache"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"

# Listening on every interface inside the container needs FUSION_API_KEY (or, where only this
# machine can reach the published port, FUSION_ALLOW_OPEN_WRITES=true): see docker-compose.yml.
CMD ["fusion-search", "serve", "--host", "0.0.0.0", "--port", "8000"]

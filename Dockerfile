# fusion-search: CPU-only image. Install steps mirror the Makefile: torch + torchvision, then the project.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    FUSION_DATA_DIR=/data

WORKDIR /app

# CPU wheels of the same torch/torchvision pair the Makefile pins (no CUDA libraries).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.14.1" "torchvision==0.29.1"

COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY index ./index
RUN pip install .

RUN useradd --create-home --uid 10001 fusion \
    && mkdir -p /data && chown fusion:fusion /data
USER fusion
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"

CMD ["fusion-search", "serve", "--host", "0.0.0.0", "--port", "8000"]

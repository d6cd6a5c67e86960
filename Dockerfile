# syntax=docker/dockerfile:1
# Telemetry: daphne serving the ASGI app. Three stages: front-end libraries
# (npm ci from package-lock.json), Python dependencies (a venv), and the slim
# runtime image running as a non-root user.

FROM node:22-bookworm-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11-slim-bookworm AS python-deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /venv
COPY requirements.txt /tmp/requirements.txt
RUN /venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.11-slim-bookworm AS runtime
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=telemetry_project.settings \
    TELEMETRY_DATA_DIR=/app/data \
    STATIC_ROOT=/app/staticfiles \
    PORT=8000
RUN groupadd --system --gid 10001 telemetry \
    && useradd --system --uid 10001 --gid telemetry --home-dir /app --shell /usr/sbin/nologin telemetry
WORKDIR /app
COPY --from=python-deps /venv /venv
COPY . .
COPY --from=assets /src/node_modules ./node_modules
# Vendor the pinned front-end files, then collect every static file into
# STATIC_ROOT. Build-time only: no secret is baked into the image.
RUN python scripts/vendor_assets.py \
    && rm -rf node_modules \
    && DEBUG=0 TELEMETRY_ALLOW_INSECURE_KEY=1 python manage.py collectstatic --noinput -v0 \
    && mkdir -p /app/data \
    && chown -R telemetry:telemetry /app/data /app/staticfiles
USER telemetry
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["python", "deploy/healthcheck.py"]
# Every interface inside the container (only the published port reaches it);
# `make run` on a workstation binds 127.0.0.1 instead.
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "--proxy-headers", "telemetry_project.asgi:application"]

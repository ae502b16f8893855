# syntax=docker/dockerfile:1
# Multi-stage: build a wheel-installed virtualenv, then copy it into a slim runtime image.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install .

FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    INGEST_STORAGE_DIR=/data/storage \
    INGEST_IMPORTERS_DIR=/srv/importers
RUN useradd --system --uid 10001 --home /srv ingest \
    && mkdir -p /data/storage /srv/importers && chown -R ingest /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
COPY alembic.ini ./
COPY migrations ./migrations
COPY app ./app
COPY examples/importers ./importers
USER ingest
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
# `ingest worker` and `ingest migrate` use the same image (see docker-compose.yml).
CMD ["ingest", "serve", "--host", "0.0.0.0", "--port", "8000"]

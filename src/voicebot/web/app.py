"""The FastAPI app and its server: built in `build_app`, served by `serving` in the bot's loop.

State lives on `app.state` (`settings`, `health`, `metrics`), set once in `build_app`; a route
reads it from its request. Nothing is built at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import AsyncIterator, Generator

import structlog
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from voicebot.config import Settings
from voicebot.errors import ConfigError
from voicebot.health import Health, checks, queue_length
from voicebot.metrics import Metrics
from voicebot.web import webhook
from voicebot.web.admin import mount_dashboard

log = structlog.get_logger(__name__)

#: Seconds requests still in flight get to finish when the server stops.
SHUTDOWN_SECONDS = 2


def build_app(settings: Settings, health: Health, metrics: Metrics) -> FastAPI:
    """The HTTP app: GET /health, /ready and /metrics over the service's `health` and `metrics`;
    in webhook mode POST /telegram/webhook too (not on a worker), taking updates once
    `app.state.inbox` is set."""
    app = FastAPI(title="voicebot", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.health = health
    app.state.metrics = metrics
    app.state.inbox = None
    app.add_api_route("/health", alive, methods=["GET"])
    app.add_api_route("/ready", ready, methods=["GET"])
    app.add_api_route("/metrics", scrape, methods=["GET"])
    if settings.bot_mode == "webhook" and health.front:
        # A plain Starlette route: no FastAPI validation layer on the path every update takes.
        app.add_route(webhook.PATH, webhook.receive, methods=["POST"])
    mount_dashboard(app)
    return app


async def alive() -> dict[str, str]:
    """200 while the process serves HTTP at all."""
    return {"status": "ok"}


async def ready(request: Request) -> JSONResponse:
    """200 when every check holds, else 503; the body names each check and what is not ready."""
    found = await checks(request.app.state.health)
    failing = [check.name for check in found if not check.ok]
    body = {
        "status": "not ready" if failing else "ready",
        "not_ready": failing,
        "checks": {check.name: {"ok": check.ok, "detail": check.detail} for check in found},
    }
    return JSONResponse(body, status_code=503 if failing else 200)


async def scrape(request: Request) -> Response:
    """The metrics in Prometheus' text format; the queue length is read from the database now."""
    health: Health = request.app.state.health
    metrics: Metrics = request.app.state.metrics
    length = math.nan  # not known: no database yet, or it did not answer
    if health.sessions is not None:
        try:
            length = await queue_length(health.sessions)
        except (TimeoutError, SQLAlchemyError, OSError) as error:
            log.warning("queue_length_unknown", error=repr(error))
    metrics.queue_length.set(length)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: SIGINT and SIGTERM stay the bot's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Server.serve replaces the loop's handlers with its own (and re-raises the signal
        # after it stops); `service.serve` stops this server itself, after the bot drained.
        yield


def listen(host: str, port: int) -> socket.socket:
    """A bound socket on host:port; a one-line ConfigError when it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise ConfigError(f"HTTP_HOST={host}: {error}") from error
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise ConfigError(
            f"cannot listen on HTTP_HOST={host} HTTP_PORT={port}: {error.strerror or error} "
            "(another voicebot running? set HTTP_PORT to a free port, or 0 for no HTTP app)"
        ) from error
    return sock


@contextlib.asynccontextmanager
async def serving(app: FastAPI, settings: Settings) -> AsyncIterator[None]:
    """Serve `app` on HTTP_HOST:HTTP_PORT in this event loop while the block runs, then stop it."""
    host, port = settings.http_host, settings.http_port
    sock = listen(host, port)
    config = uvicorn.Config(
        app,
        log_config=None,  # uvicorn's lines go through our logging setup
        access_log=False,
        # The client address is the X-Forwarded-For of a proxy in FORWARDED_ALLOW_IPS (nginx
        # in front): what WEBHOOK_TRUSTED_NETWORKS is checked against.
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        lifespan="off",
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )
    server = _Server(config)
    # Kept by reference: the loop holds tasks only weakly.
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    log.info("http_started", host=host, port=sock.getsockname()[1])
    try:
        yield
    finally:
        server.should_exit = True
        try:
            await task
        except Exception:  # the HTTP app failing must not hide why the bot stopped
            log.exception("http_failed")
        finally:
            sock.close()

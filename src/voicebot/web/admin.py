"""The admin dashboard under /admin: a login with ADMIN_TOKEN, then charts over the database.

`mount_dashboard` adds it to the app only when ADMIN_TOKEN is set (without it every /admin
path is 404). A login sets a session cookie that carries an expiry and an HMAC of it keyed by
the token, never the token: changing ADMIN_TOKEN ends every session. Failed logins are
limited per client address in the RATE_LIMIT_STORAGE_URL storage.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from sqlalchemy.exc import SQLAlchemyError

from voicebot.dashboard import Overview, overview
from voicebot.models import utcnow
from voicebot.ratelimits import build_limiter

log = structlog.get_logger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

COOKIE = "voicebot_admin"
#: How long a login lasts.
SESSION_SECONDS = 12 * 3600
#: Failed logins a client address may make a minute before it must wait.
FAILED_LOGINS_PER_MINUTE = 5
#: The dashboard's queries together may take this long before the page answers 503.
QUERY_TIMEOUT = 10.0
#: Every /admin page: never stored by a browser or proxy, never framed, scripts from here only.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class Admin:
    """What the dashboard's routes share, on `app.state.admin`."""

    token: str
    templates: Environment
    limiter: MovingWindowRateLimiter
    failed_logins: RateLimitItem


def mount_dashboard(app: FastAPI) -> None:
    """Add /admin (login, logout, dashboard, static files) to `app` when ADMIN_TOKEN is set."""
    token = app.state.settings.admin_token
    if token is None:
        return
    app.state.admin = Admin(
        token=token.get_secret_value(),
        templates=Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
        ),
        limiter=build_limiter(app.state.settings),
        failed_logins=RateLimitItemPerMinute(FAILED_LOGINS_PER_MINUTE),
    )
    app.add_api_route("/admin", dashboard_page, methods=["GET"])
    app.add_api_route("/admin/login", login_page, methods=["GET"])
    app.add_api_route("/admin/login", login, methods=["POST"])
    app.add_api_route("/admin/logout", logout, methods=["POST"])
    app.mount("/admin/static", StaticFiles(directory=STATIC), name="admin-static")


def session_cookie(token: str, *, now: float) -> str:
    """A cookie value valid for SESSION_SECONDS from `now`: the expiry and its HMAC."""
    expires = int(now) + SESSION_SECONDS
    return f"{expires}.{_mac(token, expires)}"


def valid_session(token: str, value: str | None, *, now: float) -> bool:
    """Whether `value` is a cookie `session_cookie` made with `token` that has not expired."""
    if not value:
        return False
    expires, _, mac = value.partition(".")
    if not expires.isdigit():
        return False
    return hmac.compare_digest(mac, _mac(token, int(expires))) and now < int(expires)


def _mac(token: str, expires: int) -> str:
    return hmac.new(token.encode(), f"admin-session:{expires}".encode(), hashlib.sha256).hexdigest()


def _admin(request: Request) -> Admin:
    admin: Admin = request.app.state.admin
    return admin


def _signed_in(request: Request) -> bool:
    return valid_session(_admin(request).token, request.cookies.get(COOKIE), now=time.time())


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A rendered template with PAGE_HEADERS."""
    html = _admin(request).templates.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def _see(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303, headers=PAGE_HEADERS)


async def login_page(request: Request) -> Response:
    """The login form; a signed-in admin goes on to the dashboard."""
    if _signed_in(request):
        return _see("/admin")
    return _page(request, "login.html", error=None)


async def login(request: Request) -> Response:
    """Check the posted token: a session cookie and on to /admin, or the form with 401 (429)."""
    admin = _admin(request)
    client = request.client.host if request.client else "unknown"
    if not await admin.limiter.test(admin.failed_logins, "admin-login", client):
        stats = await admin.limiter.get_window_stats(admin.failed_logins, "admin-login", client)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        refused = _page(request, "login.html", 429, error=f"Too many failed logins: wait {wait} s.")
        refused.headers["Retry-After"] = str(wait)
        return refused
    try:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=10)
    except ValueError:  # more fields than a login has: not our form
        form = {}
    given = (form.get("token") or [""])[0]
    if not hmac.compare_digest(given.encode(), admin.token.encode()):
        await admin.limiter.hit(admin.failed_logins, "admin-login", client)
        log.warning("admin_login_failed", client=client)
        return _page(request, "login.html", 401, error="Wrong token.")
    log.info("admin_login", client=client)
    response = _see("/admin")
    response.set_cookie(
        COOKIE,
        session_cookie(admin.token, now=time.time()),
        max_age=SESSION_SECONDS,
        path="/admin",
        # Secure when the browser came over HTTPS (nginx's X-Forwarded-Proto); an SSH tunnel to
        # http://127.0.0.1 must still get its cookie.
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


async def logout(request: Request) -> Response:
    """Forget the session cookie in this browser and go back to the login form."""
    response = _see("/admin/login")
    response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="strict")
    return response


async def dashboard_page(request: Request) -> Response:
    """The dashboard (charts and the queue); 303 to the login without a valid session."""
    if not _signed_in(request):
        return _see("/admin/login")
    sessions = request.app.state.health.sessions
    if sessions is None:
        return _page(request, "unavailable.html", 503, reason="The database is not connected yet.")
    try:
        async with asyncio.timeout(QUERY_TIMEOUT), sessions() as session:
            found = await overview(session, today=utcnow().date())
    except TimeoutError:
        return _page(
            request, "unavailable.html", 503, reason=f"No answer within {QUERY_TIMEOUT:g} s."
        )
    except (SQLAlchemyError, OSError) as error:
        log.warning("dashboard_failed", error=repr(error))
        return _page(request, "unavailable.html", 503, reason=error.__class__.__name__)
    return _page(request, "dashboard.html", found=found, charts=chart_data(found))


def chart_data(found: Overview) -> dict[str, Any]:
    """The charts' series, as the page's script reads them (JSON)."""

    def rounded(value: float | None, digits: int = 2) -> float | None:
        return None if value is None else round(value, digits)

    return {
        "days": [day.day.isoformat() for day in found.days],
        "jobs": [day.jobs for day in found.days],
        "audio_minutes": [round(day.audio_seconds / 60, 1) for day in found.days],
        "p50_seconds": [rounded(day.p50_seconds) for day in found.days],
        "p95_seconds": [rounded(day.p95_seconds) for day in found.days],
        "cache_hit_percent": [
            rounded(None if day.cache_hit_rate is None else day.cache_hit_rate * 100, 1)
            for day in found.days
        ],
        "languages": {
            "labels": [name for name, _ in found.languages],
            "values": [count for _, count in found.languages],
        },
        "refusals": {
            "labels": [reason for reason, _ in found.refusals],
            "values": [count for _, count in found.refusals],
        },
        "failures": {
            "labels": [code for code, _ in found.failures],
            "values": [count for _, count in found.failures],
        },
        "top_users": {
            "labels": [f"{user.name} ({user.user_id})" for user in found.totals.top],
            "values": [round(user.audio_seconds / 60, 1) for user in found.totals.top],
        },
    }

"""The admin dashboard: its queries on seeded SQLite and PostgreSQL databases, its login over
the real app, the wheel's files, and the real bot's page in headless Chromium with its charts
drawn."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import async_playwright

from voicebot.config import Settings
from voicebot.dashboard import Day, day_start, overview, percentile
from voicebot.db import Sessions, build_engine, build_sessions, upgrade_async
from voicebot.health import Health
from voicebot.metrics import build_metrics
from voicebot.models import Chat, Job, JobStatus, RefusalCount, Transcript, Usage, User
from voicebot.web.admin import COOKIE, FAILED_LOGINS_PER_MINUTE, SESSION_SECONDS, session_cookie
from voicebot.web.app import build_app

from .botproc import BotProcess
from .fakes import FakeBotAPI
from .media import voice_note
from .servers import free_port
from .test_deploy import tool
from .test_fairness import rows

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "correct horse battery staple"
TODAY = date(2026, 3, 20)
ADA, BOB, CY = 5001, 5002, 5003
#: Sends the bot a real voice note in the browser test.
LISTENER = 5009
CLIP = "librispeech_alif_another_door.wav"


# ----------------------------------------------------------------- seeded rows


async def seed(sessions: Sessions, *, today: date) -> None:
    """Known rows around `today`: three days of jobs and usage, failures, refusals, a queue, an
    old day.

    Expected (see the tests): jobs 3 / 4 / 4 on today-2 / today-1 / today; audio 210 / 300 /
    600 s; one cache hit of 3 on today-2; languages en 2, de 1, ru 1, unknown 1; refusals
    quota 5, banned 1, queue_full 1, rate_limit 1; failures AudioDecodeError 2, TimeoutError 1;
    top users Ada 690 s, Cy 300 s, Bob 120 s; queue: Cy's running job, then Bob's queued one.
    """
    d0, d1, d2 = (day_start(today - timedelta(days=back)) for back in (2, 1, 0))
    old = day_start(today - timedelta(days=40))
    async with sessions() as session:
        for user_id, name, username in ((ADA, "Ada", "ada"), (BOB, "Bob", None), (CY, "Cy", "cy")):
            session.add(User(id=user_id, first_name=name, username=username))
            session.add(Chat(id=user_id, type="private"))
        await session.flush()
        en, ru = (
            Transcript(
                file_unique_id=f"u-{language}",
                text="...",
                language=language,
                language_probability=0.9,
                duration=1.0,
                segments=[],
                model="tiny",
                created_at=d0,
            )
            for language in ("en", "ru")
        )
        session.add_all([en, ru])
        await session.flush()
        message = iter(range(1, 100))

        def job(user_id: int, at: datetime, status: JobStatus, **values: Any) -> Job:
            made = Job(
                chat_id=user_id,
                user_id=user_id,
                message_id=next(message),
                kind="voice",
                file_id="f",
                file_unique_id="u",
                duration=values.pop("duration", 10.0),
                status=status,
                attempts=0,
                delivered_parts=0,
                created_at=at,
                **values,
            )
            session.add(made)
            return made

        done = JobStatus.done
        used = [
            # (job, audio seconds, processing seconds, cached, when answered, usage's language)
            (job(ADA, d0 + timedelta(hours=1), done, transcript_id=en.id), 60, 10, False, 1, "en"),
            (job(BOB, d0 + timedelta(hours=2), done, transcript_id=ru.id), 120, 20, False, 2, "ru"),
            (job(ADA, d0 + timedelta(hours=3), done, transcript_id=en.id), 30, 0.01, True, 3, "en"),
            # Its transcript has been purged: the usage row still knows the language.
            (job(CY, d1 + timedelta(hours=1), done), 300, 30, False, 1, "de"),
            # Charged before usage kept languages: unknown, though its transcript is there.
            (
                job(ADA, d2 + timedelta(minutes=10), done, transcript_id=en.id),
                600,
                40,
                False,
                0.5,
                None,
            ),
            (
                job(ADA, old, done, transcript_id=en.id),
                999,
                99,
                False,
                1,
                "en",
            ),  # before the 30 days
        ]
        for code in ("AudioDecodeError", "TimeoutError", "AudioDecodeError"):
            at = d1 + timedelta(hours=2)
            job(BOB, at, JobStatus.failed, error_code=code, finished_at=at + timedelta(minutes=1))
        job(BOB, d2 + timedelta(minutes=20), JobStatus.queued, duration=42.0)
        job(CY, d2 + timedelta(minutes=5), JobStatus.running, started_at=d2 + timedelta(minutes=6))
        job(ADA, d2 + timedelta(minutes=30), JobStatus.cancelled, finished_at=d2)
        await session.flush()
        for made, audio, processing, cached, hours, language in used:
            session.add(
                Usage(
                    user_id=made.user_id,
                    job_id=made.id,
                    audio_seconds=audio,
                    processing_seconds=processing,
                    cached=cached,
                    language=language,
                    created_at=made.created_at + timedelta(hours=hours),
                )
            )
        refused = [
            # (days before today, reason, count)
            (0, "quota", 3),
            (0, "rate_limit", 1),
            (1, "quota", 2),
            (1, "banned", 1),
            (29, "queue_full", 1),  # the first of the 30 days
            (30, "quota", 100),  # before them
        ]
        session.add_all(
            RefusalCount(day=today - timedelta(days=back), reason=reason, count=count)
            for back, reason, count in refused
        )
        await session.commit()


async def seeded(url: str, *, today: date) -> AsyncIterator[Sessions]:
    """Sessions on a migrated database with the seeded rows around `today`."""
    await upgrade_async(url)
    engine = build_engine(url)
    made = build_sessions(engine)
    await seed(made, today=today)
    yield made
    await engine.dispose()


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    """The seeded rows around TODAY, a fixed date (SQLite, PostgreSQL)."""
    async for made in seeded(database_url, today=TODAY):
        yield made


@pytest.fixture
async def recent(database_url: str) -> AsyncIterator[Sessions]:
    """The seeded rows around the real today, which the app's page shows (SQLite, PostgreSQL)."""
    async for made in seeded(database_url, today=datetime.now(UTC).date()):
        yield made


# ----------------------------------------------------------------- the queries


def test_percentile_interpolates_as_percentile_cont() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50.5
    assert percentile(values, 0.95) == pytest.approx(95.05)
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([10.0, 20.0], 0.95) == 19.5
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


async def test_overview_counts_the_seeded_rows(sessions: Sessions) -> None:
    async with sessions() as session:
        found = await overview(session, today=TODAY)
    assert len(found.days) == 30
    assert (found.days[0].day, found.days[-1].day) == (TODAY - timedelta(days=29), TODAY)
    busy = {day.day: day for day in found.days if day.jobs or day.transcribed}
    assert busy == {
        TODAY - timedelta(days=2): Day(TODAY - timedelta(days=2), 3, 3, 1, 210.0, 15.0, 19.5),
        TODAY - timedelta(days=1): Day(TODAY - timedelta(days=1), 4, 1, 0, 300.0, 30.0, 30.0),
        TODAY: Day(TODAY, 4, 1, 0, 600.0, 40.0, 40.0),
    }
    assert busy[TODAY - timedelta(days=2)].cache_hit_rate == pytest.approx(1 / 3)
    assert found.days[0].cache_hit_rate is None
    assert found.days[0].p50_seconds is None
    assert found.languages == [("en", 2), ("de", 1), ("ru", 1), ("unknown", 1)]
    assert found.refusals == [("quota", 5), ("banned", 1), ("queue_full", 1), ("rate_limit", 1)]
    assert found.failures == [("AudioDecodeError", 2), ("TimeoutError", 1)]
    totals = found.totals
    assert (totals.jobs, totals.transcribed, totals.cached) == (11, 5, 1)
    assert (totals.audio_seconds, totals.failures, totals.queue) == (1110.0, 3, 2)
    assert [(user.user_id, user.name, user.audio_seconds) for user in totals.top] == [
        (ADA, "Ada @ada", 690.0),
        (CY, "Cy @cy", 300.0),
        (BOB, "Bob", 120.0),
    ]
    assert [(job.user, job.status, job.duration) for job in found.queue] == [
        ("Cy @cy", JobStatus.running, 10.0),
        ("Bob", JobStatus.queued, 42.0),
    ]
    assert found.queue_length == 2


async def test_a_day_is_its_utc_calendar_day(sessions: Sessions) -> None:
    """A job a second before midnight counts on its day; the next day starts clean."""
    async with sessions() as session:
        late = day_start(TODAY + timedelta(days=1)) - timedelta(seconds=1)
        session.add(
            Job(
                chat_id=ADA,
                user_id=ADA,
                message_id=500,
                kind="voice",
                file_id="f",
                file_unique_id="u",
                status=JobStatus.cancelled,
                created_at=late,
            )
        )
        await session.commit()
        today = await overview(session, today=TODAY)
        tomorrow = await overview(session, today=TODAY + timedelta(days=1))
    assert today.days[-1].jobs == 5
    assert (tomorrow.days[-2].jobs, tomorrow.days[-1].jobs) == (5, 0)


# ----------------------------------------------------------------- the login


def app_client(sessions: Sessions | None, token: str | None = TOKEN) -> httpx.AsyncClient:
    """A client of the real app (build_app) with ADMIN_TOKEN=`token` over `sessions`."""
    settings = Settings(_env_file=None, admin_token=token)  # type: ignore[call-arg]
    app = build_app(settings, Health(sessions=sessions), build_metrics())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test")


def charts(html: str) -> dict[str, Any]:
    """The JSON the dashboard page embeds for its charts."""
    import json

    found = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', html)
    assert found, html
    data: dict[str, Any] = json.loads(found.group(1))
    return data


async def test_without_admin_token_every_admin_path_is_404(sessions: Sessions) -> None:
    async with app_client(sessions, token=None) as client:
        for path in ("/admin", "/admin/login", "/admin/static/dashboard.js", "/admin/x"):
            assert (await client.get(path)).status_code == 404, path
        assert (await client.post("/admin/login", data={"token": ""})).status_code == 404
        assert (await client.get("/health")).status_code == 200


async def test_login_sets_a_strict_cookie_then_the_dashboard_shows_the_data(
    recent: Sessions,
) -> None:
    async with app_client(recent) as client:
        first = await client.get("/admin")
        assert (first.status_code, first.headers["location"]) == (303, "/admin/login")
        form = await client.get("/admin/login")
        assert form.status_code == 200
        assert form.headers["cache-control"] == "no-store"
        assert 'name="token"' in form.text

        wrong = await client.post("/admin/login", data={"token": "guess"})
        assert wrong.status_code == 401
        assert "set-cookie" not in wrong.headers
        assert "Wrong token." in wrong.text
        assert 'name="token"' in wrong.text
        stuffed = await client.post("/admin/login", data={f"f{n}": "x" for n in range(20)})
        assert stuffed.status_code == 401

        right = await client.post("/admin/login", data={"token": TOKEN})
        assert (right.status_code, right.headers["location"]) == (303, "/admin")
        cookie = right.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        parts = {part.strip().lower() for part in cookie.split(";")}
        assert {"httponly", "samesite=strict", "path=/admin", f"max-age={SESSION_SECONDS}"} <= parts
        assert "secure" not in parts  # plain HTTP (an SSH tunnel); nginx's HTTPS gets Secure
        assert TOKEN.split()[0] not in cookie

        page = await client.get("/admin")
        assert page.status_code == 200, page.text
        assert page.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        data = charts(page.text)
        assert sum(data["jobs"]) == 11
        assert sum(data["audio_minutes"]) == pytest.approx(18.5)
        assert data["cache_hit_percent"][-3:] == [33.3, 0.0, 0.0]
        assert data["p95_seconds"][-3:] == [19.5, 30.0, 40.0]
        assert data["languages"] == {
            "labels": ["en", "de", "ru", "unknown"],
            "values": [2, 1, 1, 1],
        }
        assert data["refusals"] == {
            "labels": ["quota", "banned", "queue_full", "rate_limit"],
            "values": [5, 1, 1, 1],
        }
        assert re.search(r'id="total-refusals">8<', page.text)
        assert data["failures"] == {
            "labels": ["AudioDecodeError", "TimeoutError"],
            "values": [2, 1],
        }
        assert data["top_users"]["labels"][0] == f"Ada @ada ({ADA})"
        assert re.search(r"<td>running</td>\s*<td>Cy @cy", page.text)

        script = await client.get("/admin/static/vendor/chart.umd.min.js")
        assert script.status_code == 200
        assert "Chart.js v4" in script.text[:200]

        again = await client.get("/admin/login")  # signed in already: on to the dashboard
        assert (again.status_code, again.headers["location"]) == (303, "/admin")

        out = await client.post("/admin/logout")
        assert (out.status_code, out.headers["location"]) == (303, "/admin/login")
        assert re.search(rf"{COOKIE}=\"?\"?;.*Max-Age=0", out.headers["set-cookie"])
        assert (await client.get("/admin")).status_code == 303


async def test_over_https_the_cookie_is_secure(recent: Sessions) -> None:
    """Behind nginx (X-Forwarded-Proto: https) the browser sends the cookie over HTTPS only."""
    async with app_client(recent) as client:
        client.base_url = httpx.URL("https://admin.test")
        right = await client.post("/admin/login", data={"token": TOKEN})
        assert right.status_code == 303
        assert "secure" in {part.strip().lower() for part in right.headers["set-cookie"].split(";")}


@pytest.mark.parametrize(
    "cookie",
    [
        session_cookie(TOKEN, now=time.time() - SESSION_SECONDS - 1),  # expired
        session_cookie("another token", now=time.time()),  # signed with another token
        f"{int(time.time()) + 3600}.{'0' * 64}",  # made up
        f"{int(time.time()) + 10 * SESSION_SECONDS}.{session_cookie(TOKEN, now=time.time())[11:]}",
        TOKEN,
        "",
    ],
    ids=["expired", "other-token", "forged", "expiry-changed", "the-token", "empty"],
)
async def test_a_bad_session_cookie_goes_to_the_login(sessions: Sessions, cookie: str) -> None:
    async with app_client(sessions) as client:
        client.cookies.set(COOKIE, cookie, domain="admin.test", path="/admin")
        answer = await client.get("/admin")
        assert (answer.status_code, answer.headers["location"]) == (303, "/admin/login")


async def test_failed_logins_are_limited(sessions: Sessions) -> None:
    """After FAILED_LOGINS_PER_MINUTE wrong tokens even the right one waits (429)."""
    async with app_client(sessions) as client:
        for _ in range(FAILED_LOGINS_PER_MINUTE):
            assert (await client.post("/admin/login", data={"token": "x"})).status_code == 401
        refused = await client.post("/admin/login", data={"token": TOKEN})
        assert refused.status_code == 429
        assert 0 < int(refused.headers["retry-after"]) <= 60
        assert "set-cookie" not in refused.headers
        assert "Too many failed logins" in refused.text


async def test_no_database_yet_is_503(sessions: Sessions) -> None:
    async with app_client(None) as client:
        await client.post("/admin/login", data={"token": TOKEN})
        page = await client.get("/admin")
        assert page.status_code == 503
        assert "not connected" in page.text


def test_the_wheel_carries_the_templates_and_static_files(tmp_path: Path) -> None:
    """What `mount_dashboard` serves is in the built package, not only in the source tree."""
    uv = ["uv"] if subprocess.run(["which", "uv"], capture_output=True).returncode == 0 else []
    command = [*(uv or ["python3", "-m", "uv"]), "build", "--wheel", "-o", str(tmp_path)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=120)
    (wheel,) = tmp_path.glob("voicebot-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    web = ROOT / "src" / "voicebot" / "web"
    wanted = {
        f"voicebot/web/{path.relative_to(web).as_posix()}"
        for folder in ("templates", "static")
        for path in (web / folder).rglob("*")
        if path.is_file()
    }
    assert "voicebot/web/static/vendor/chart.umd.min.js" in wanted
    assert wanted <= names, wanted - names


# ----------------------------------------------------------------- in a browser

#: Each canvas: its id, size and how many of its pixels are painted (alpha above 0).
PAINTED = """() => Array.from(document.querySelectorAll("canvas")).map((canvas) => {
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
  return [canvas.id, canvas.width, canvas.height, painted];
})"""
#: What each chart was given, as Chart.js holds it.
CHART_DATA = """() => Object.fromEntries(Array.from(document.querySelectorAll("canvas")).map(
  (canvas) => [canvas.id, Chart.getChart(canvas).data.datasets.map((set) => set.data)]))"""


def artifacts() -> Path:
    """Where tests leave files to look at: TEST_ARTIFACTS, or test-artifacts/ in the repo."""
    folder = Path(os.environ.get("TEST_ARTIFACTS") or ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def test_the_real_bots_dashboard_draws_its_charts_in_chromium(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path
) -> None:
    """Log in to `voicebot run` with headless Chromium; every chart is drawn from the database,
    the bot's own transcription included; a screenshot is left in artifacts()."""
    chromium = tool("chromium")
    port = free_port()
    bot = BotProcess(
        api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", HTTP_PORT=str(port), ADMIN_TOKEN=TOKEN
    )
    await bot.start()  # migrated and polling
    engine = build_engine(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'voicebot.db'}")
    try:
        today = datetime.now(UTC).date()
        await seed(build_sessions(engine), today=today)
        api.send_voice(LISTENER, voice_note(corpus / "en" / CLIP), duration=5)
        await api.wait_for(
            lambda: (
                rows(tmp_path, f"SELECT status FROM jobs WHERE user_id = {LISTENER}") == [("done",)]
            ),
            60,
            "the bot's own job done",
        )
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=chromium, args=["--no-sandbox"]
            )
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on(
                "console",
                lambda message: problems.append(message.text) if message.type == "error" else None,
            )
            await page.goto(f"http://127.0.0.1:{port}/admin")
            assert page.url.endswith("/admin/login")
            await page.fill("#token", TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"http://127.0.0.1:{port}/admin")
            await page.wait_for_function("document.querySelectorAll('canvas').length === 7")
            painted = await page.evaluate(PAINTED)
            given = await page.evaluate(CHART_DATA)
            shot = artifacts() / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            queue = await page.locator("#queue tbody tr").all_inner_texts()
            await browser.close()
    finally:
        await engine.dispose()
        assert await bot.stop() == 0, bot.output()
    assert problems == []
    assert [name for name, *_ in painted] == [
        "chart-volume",
        "chart-processing",
        "chart-cache",
        "chart-languages",
        "chart-refusals",
        "chart-failures",
        "chart-users",
    ]
    for name, width, height, count in painted:
        assert min(width, height) > 100, name
        assert count > 0.01 * width * height, f"{name}: {count} painted pixels"
    jobs, minutes = given["chart-volume"]
    assert sum(jobs) >= 12  # 11 seeded in the 30 days and the bot's own
    assert sum(minutes) >= 18.5  # 1110 s seeded, and the bot's transcript
    assert given["chart-failures"] == [[2, 1]]
    assert given["chart-refusals"] == [[5, 1, 1, 1]]
    assert given["chart-languages"][0][:1] == [3]  # en: 2 seeded and the bot's own
    assert [row.split("\t")[1] for row in queue] == ["running", "queued"]
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}", file=sys.stderr)


def test_artifacts_are_ignored_by_git() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "test-artifacts/dashboard.png"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0

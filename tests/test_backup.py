"""`voicebot backup` during a burst, `voicebot restore`, and the one-bot-per-database lock."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from voicebot.backup import head_revision
from voicebot.db import upgrade

from .botproc import BotProcess
from .fakes import FakeBotAPI
from .media import voice_note

#: The newest schema revision this checkout migrates to.
HEAD = head_revision()

CLIPS = [
    "fleurs_en-000.ogg",
    "fleurs_en-001.ogg",
    "fleurs_en-002.ogg",
    "fleurs_en-003.ogg",
    "fleurs_en-004.ogg",
    "fleurs_en-005.ogg",
    "fleurs_en-006.ogg",
    "fleurs_en-007.ogg",
    "fleurs_en-008.ogg",
    "fleurs_en-009.ogg",
    "ljspeech_LJ001-0001.wav",
    "ljspeech_LJ001-0003.wav",
    "ljspeech_LJ001-0004.wav",
    "ljspeech_LJ001-0005.wav",
    "ljspeech_LJ001-0006.wav",
    "ljspeech_LJ001-0007.wav",
]
FIRST_WAVE = 12
FINAL = ("done", "failed", "cancelled")
Rows = dict[str, list[tuple[object, ...]]]


@pytest.fixture(scope="module")
def notes(corpus: Path) -> list[bytes]:
    """Voice notes of different clips (the transcript cache is off too: each one is transcribed)."""
    return [voice_note(corpus / "en" / name) for name in CLIPS]


def rows(database: Path) -> Rows:
    """Every row of every table, in rowid order."""
    with closing(sqlite3.connect(database)) as connection:
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name"
            )
        ]
        return {
            table: connection.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall()
            for table in tables
        }


def jobs(database: Path) -> dict[int, sqlite3.Row]:
    """Job rows by id."""
    with closing(sqlite3.connect(database)) as connection:
        connection.row_factory = sqlite3.Row
        return {row["id"]: row for row in connection.execute("SELECT * FROM jobs")}


def sound(database: Path) -> None:
    """The file passes SQLite's integrity and foreign key checks."""
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []


async def cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run `voicebot ARGS` as a process without blocking the fake Bot API's event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicebot",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def all_final(api: FakeBotAPI, database: Path, count: int, timeout: float = 240) -> None:
    """Wait until `count` jobs are recorded and every one of them is final."""

    def ready() -> bool:
        found = jobs(database)
        return len(found) == count and all(job["status"] in FINAL for job in found.values())

    await api.wait_for(ready, timeout, f"{count} final jobs")


async def test_backup_during_a_burst_then_restore(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, notes: list[bytes]
) -> None:
    """A backup taken mid-burst restores into a fresh and an existing DATA_DIR and runs again."""
    live_dir, fresh_dir = tmp_path / "live", tmp_path / "fresh"
    live_dir.mkdir()
    fresh_dir.mkdir()
    live, fresh = live_dir / "data" / "voicebot.db", fresh_dir / "data" / "voicebot.db"
    settings = {"WHISPER_MODEL": "tiny.en", "CACHE_TTL_DAYS": "0", "WORKERS": "1"}
    bot = BotProcess(api, live_dir, model_cache, **settings)
    await bot.start()
    for index, note in enumerate(notes[:FIRST_WAVE]):
        api.send_voice(7100 + index % 4, note, duration=10)
    await api.wait_for(
        lambda: any(job["status"] == "done" for job in jobs(live).values()), 120, "a job done"
    )

    backup_file = tmp_path / "backups" / "voicebot.db"
    backup_file.parent.mkdir()
    running = asyncio.create_task(cli("backup", str(backup_file), env=bot.env))
    for index, note in enumerate(notes[FIRST_WAVE:]):  # more writes while it copies
        api.send_voice(7200 + index, note, duration=10)
    code, out, err = await running
    assert (code, err) == (0, ""), err
    (backed_up,) = out.splitlines()
    assert backed_up.startswith(f"Backed up {live} to {backup_file}: ")

    # While the bot runs: no restore, and no second bot on the same database.
    code, out, err = await cli("restore", str(backup_file), env=bot.env)
    assert (code, out) == (1, "")
    (line,) = err.splitlines()
    assert line.startswith("voicebot: restore refused: voicebot (pid ")
    assert line.endswith(
        f"is using this database (it holds {live}.lock); stop the bot before restoring"
    )
    code, out, err = await cli("run", env=bot.env)
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert "is using this database" in err

    await all_final(api, live, len(notes))
    assert await bot.stop() == 0, bot.output()

    sound(backup_file)
    snapshot, taken = rows(backup_file), jobs(backup_file)
    statuses = {job["status"] for job in taken.values()}
    assert "done" in statuses, statuses  # taken in the middle of the burst:
    assert statuses - set(FINAL), statuses  # some answered, some still waiting or running
    assert backed_up.endswith(f", {len(taken)} jobs, schema {HEAD}.")
    for job in taken.values():
        if job["status"] == "done":
            assert job["transcript_id"] in {row[0] for row in snapshot["transcripts"]}

    # Into a fresh DATA_DIR: the same rows, nothing set aside.
    fresh_env = {**bot.env, "DATA_DIR": str(fresh.parent)}
    code, out, err = await cli("restore", str(backup_file), env=fresh_env)
    assert (code, err) == (0, ""), err
    assert out.strip() == (
        f"Restored {backup_file} to {fresh}: {out.split(': ', 1)[1].split(',')[0]}, "
        f"{len(taken)} jobs, schema {HEAD}."
    )
    assert rows(fresh) == snapshot
    assert not fresh.with_name("voicebot.db.before-restore").exists()

    # Over the live DATA_DIR: the replaced database is kept beside it, whole.
    before = rows(live)
    code, out, err = await cli("restore", str(backup_file), env=bot.env)
    assert (code, err) == (0, ""), err
    kept = live.with_name("voicebot.db.before-restore")
    assert out.strip().endswith(f"; the replaced database is {kept}.")
    assert rows(live) == snapshot
    assert rows(kept) == before
    assert len(jobs(kept)) == len(notes)
    sound(kept)

    # The bot runs on the restored data: every job of the backup is there and ends.
    again = BotProcess(api, fresh_dir, model_cache, **settings)
    await again.start()
    await all_final(api, fresh, len(taken))
    assert await again.stop() == 0, again.output()
    sound(fresh)
    after, transcripts = jobs(fresh), rows(fresh)["transcripts"]
    assert after.keys() == taken.keys()
    for job_id, job in taken.items():
        same = ("chat_id", "message_id", "file_unique_id", "user_id", "created_at")
        assert [after[job_id][key] for key in same] == [job[key] for key in same]
        if job["status"] in FINAL:
            assert tuple(after[job_id]) == tuple(job)
        assert after[job_id]["status"] == "done"
    assert set(snapshot["transcripts"]) <= set(transcripts)


def run_cli(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`voicebot ARGS` on `data_dir`, from a directory with no `.env`."""
    return subprocess.run(
        [sys.executable, "-m", "voicebot", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "DATA_DIR": str(data_dir), **env},
        cwd=data_dir.parent,
        timeout=120,
        check=False,
    )


def test_restore_refuses_what_is_not_a_voicebot_database(tmp_path: Path) -> None:
    """Each wrong file gets one line, exit 1, and the database in place is left untouched."""
    data = tmp_path / "data"
    database = data / "voicebot.db"
    upgrade(f"sqlite+aiosqlite:///{database}")
    original, original_rows = database.read_bytes(), rows(database)

    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as connection:
        connection.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY)")
    newer = tmp_path / "newer.db"
    with closing(sqlite3.connect(newer)) as connection, closing(sqlite3.connect(database)) as db:
        db.backup(connection)
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
        connection.commit()
    expected = {
        text: f"{text} is not a voicebot database (not an SQLite file)",
        other: f"{other} is not a voicebot database (no jobs or alembic_version)",
        newer: f"{newer} is at schema revision 0099, which this voicebot does not have "
        f"(its newest is {HEAD}): install the version that wrote it",
        tmp_path / "missing.db": f"{tmp_path / 'missing.db'}: no such file",
    }
    for path, reason in expected.items():
        result = run_cli("restore", str(path), data_dir=data)
        assert (result.returncode, result.stdout) == (1, ""), result.stderr
        assert result.stderr.splitlines() == [f"voicebot: restore refused: {reason}"]
    assert database.read_bytes() == original
    assert [p.name for p in data.iterdir()] == ["voicebot.db"]

    # A good older backup is accepted, and the line says `voicebot run` will migrate it.
    older = tmp_path / "older.db"
    upgrade(f"sqlite+aiosqlite:///{older}", "0003")
    result = run_cli("restore", str(older), data_dir=data)
    assert result.returncode == 0, result.stderr
    assert f"schema 0003 (`voicebot run` migrates it to {HEAD})" in result.stdout
    assert rows(data / "voicebot.db.before-restore") == original_rows
    assert rows(database)["alembic_version"] == [("0003",)]


def test_backup_without_a_database_and_on_postgresql(tmp_path: Path) -> None:
    """No database: one line and nothing created; PostgreSQL: the pg_dump command to run."""
    data, target = tmp_path / "data", tmp_path / "copy.db"
    result = run_cli("backup", str(target), data_dir=data)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        f"voicebot: backup failed: there is no database at {data / 'voicebot.db'} "
        "(check DATA_DIR or DATABASE_URL)"
    ]
    assert not target.exists()
    assert not data.exists()

    url = "postgresql+asyncpg://bot:s3cret@db.internal:5432/voicebot"
    result = run_cli("backup", str(target), data_dir=data, DATABASE_URL=url)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "voicebot: DATABASE_URL is PostgreSQL: back it up with pg_dump:"
    ]
    assert result.stdout.splitlines() == [
        f"pg_dump --format=custom --file={target} "
        "--dbname=postgresql://bot@db.internal:5432/voicebot"
    ]
    assert "s3cret" not in result.stdout + result.stderr


def test_restore_over_a_killed_bots_database_keeps_its_log(tmp_path: Path) -> None:
    """Writes still in the write-ahead log of a killed process end up in the .before-restore."""
    data = tmp_path / "data"
    database = data / "voicebot.db"
    upgrade(f"sqlite+aiosqlite:///{database}")
    backup_file = tmp_path / "backup.db"
    assert run_cli("backup", str(backup_file), data_dir=data).returncode == 0
    # A writer that dies without closing: its committed row is only in voicebot.db-wal.
    writer = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0')\n"
        'c.execute("INSERT INTO users (id, first_name, created_at, last_seen_at, plan, banned,'
        " balance_seconds, output_format) VALUES (42, 'Killed', '2025-01-01', '2025-01-01',"
        " 'free', 0, 0, 'text')\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", writer, str(database)], check=True, timeout=60)
    assert Path(f"{database}-wal").stat().st_size > 0

    result = run_cli("restore", str(backup_file), data_dir=data)
    assert result.returncode == 0, result.stderr
    assert not Path(f"{database}-wal").exists()  # the old log is never replayed into the new file
    assert rows(database)["users"] == []
    kept = data / "voicebot.db.before-restore"
    assert [row[:2] for row in rows(kept)["users"]] == [(42, "Killed")]
    sound(kept)

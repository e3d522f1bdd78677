"""GET /metrics of the real bot: the documented names, moving after a job, a hit, a refusal."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .botproc import BotProcess
from .fakes import FakeBotAPI
from .media import voice_note
from .servers import free_port
from .test_fairness import answered
from .test_web import get

USER = 9201
DOCUMENTED = {
    "voicebot_updates_total": "counter",
    "voicebot_jobs_total": "counter",
    "voicebot_refusals_total": "counter",
    "voicebot_queue_wait_seconds": "histogram",
    "voicebot_download_seconds": "histogram",
    "voicebot_transcription_seconds": "histogram",
    "voicebot_delivery_seconds": "histogram",
    "voicebot_audio_seconds_total": "counter",
    "voicebot_realtime_factor": "histogram",
    "voicebot_queue_length": "gauge",
    "voicebot_running_jobs": "gauge",
    "voicebot_cache_hits_total": "counter",
    "voicebot_cache_misses_total": "counter",
    "voicebot_telegram_errors_total": "counter",
    "voicebot_telegram_retries_total": "counter",
    "voicebot_leases_total": "counter",
    "voicebot_batch_pieces": "histogram",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> tuple[Samples, dict[str, str], str]:
    """Every sample by (name, labels), each family's type, and the raw text."""
    response = await get(port, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(response.text):
        if not family.name.startswith("voicebot_") or family.name.endswith("_created"):
            continue  # prometheus-client's own creation-time series
        # The parser drops a counter's _total from the family name; the samples keep it.
        name = family.name + ("_total" if family.type == "counter" else "")
        types[name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types, response.text


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when it is not there yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_after_a_job_a_cache_hit_and_a_refusal(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path
) -> None:
    """A transcribed note (after a failed, retried status reply), the same file again (a cache
    hit), then one over the quota (refused): each shows in /metrics; no user id in any label."""
    port = free_port()
    bot = BotProcess(
        api,
        tmp_path,
        model_cache,
        WHISPER_MODEL="tiny.en",
        HTTP_PORT=str(port),
        DAILY_QUOTA_SECONDS="30",
    )
    await bot.start()
    try:
        before, types, _ = await scrape(port)
        assert types == DOCUMENTED
        assert value(before, "voicebot_jobs_total", outcome="done", error="") == 0
        assert value(before, "voicebot_queue_length") == 0
        assert value(before, "voicebot_running_jobs") == 0

        note = voice_note(corpus / "en" / "librispeech_alif_another_door.wav")
        api.fail_next("sendMessage", status=500)  # the status reply: retried once
        first = api.send_voice(USER, note, duration=4)
        await answered(api, USER, first, "another door")
        await api.wait_for(lambda: bool(api.calls_of("editMessageText")), 10)
        after, _, _ = await _settled(port, "voicebot_jobs_total", outcome="done", error="")
        assert value(after, "voicebot_jobs_total", outcome="done", error="") == 1
        assert value(after, "voicebot_audio_seconds_total") > 3
        assert value(after, "voicebot_transcription_seconds_count") == 1
        assert value(after, "voicebot_transcription_seconds_sum") > 0
        assert value(after, "voicebot_realtime_factor_count") == 1
        assert value(after, "voicebot_batch_pieces_count") == 1  # a 4-s note: one piece
        assert value(after, "voicebot_batch_pieces_sum") == 1
        for step in ("queue_wait", "download", "delivery"):
            assert value(after, f"voicebot_{step}_seconds_count") == 1, step
        assert value(after, "voicebot_updates_total", type="message") == 1
        assert value(after, "voicebot_cache_misses_total") == 1
        assert value(after, "voicebot_telegram_errors_total", code="5xx") == 1
        assert value(after, "voicebot_telegram_retries_total") == 1

        again = api.send_voice(USER, note, duration=4)  # the same bytes: a cache hit
        await answered(api, USER, again, "another door")
        over = api.send_voice(USER, note, duration=60)  # past the 30 s a day: refused
        await api.wait_for(lambda: any(m.reply_to == over for m in api.messages(USER)), 30)
        last, _, text = await _settled(port, "voicebot_jobs_total", 2, outcome="done", error="")
        assert value(last, "voicebot_cache_hits_total") == 1
        assert value(last, "voicebot_transcription_seconds_count") == 1  # not transcribed again
        assert value(last, "voicebot_refusals_total", reason="quota") == 1
        assert value(last, "voicebot_refusals_total", reason="rate_limit") == 0
        assert value(last, "voicebot_updates_total", type="message") == 3
        labels = {v for (_, pairs) in last for _, v in pairs}
        assert str(USER) not in labels
        assert str(USER) not in text
    finally:
        assert await bot.stop() == 0, bot.output()


async def _settled(
    port: int, name: str, expected: float = 1, **labels: str
) -> tuple[Samples, dict[str, str], str]:
    """Scrape until `name{labels}` reaches `expected` (the job is marked done just after its
    last message is sent)."""
    for _ in range(200):
        found = await scrape(port)
        if value(found[0], name, **labels) >= expected:
            return found
        await asyncio.sleep(0.05)
    return found

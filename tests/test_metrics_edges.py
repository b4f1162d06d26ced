"""``ServerMetrics`` (``actors.metrics``) in-process: a scrape whose ``status()`` fails or races,
the per-actor gauges (web listeners, RSS, GPU) from the figures actors report, the event kinds the
process tests never send, and the windows that forget old events. The exposition is parsed with
prometheus-client's own parser."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import actors.metrics as metrics
from actors import wire
from actors.metrics import RECENT_WINDOW_S, RTF_WINDOW_S, ServerMetrics


def _samples(m: ServerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.exposition()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _names(m: ServerMetrics) -> set[str]:
    return {name for name, _ in _samples(m)}


class _Clock:
    """``actors.metrics``' view of ``time``: a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(metrics, "time", types.SimpleNamespace(monotonic=c.monotonic))
    return c


def test_rss_of_a_process_that_is_gone_is_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    assert metrics._rss_bytes(child.pid) is None
    own = metrics._rss_bytes(os.getpid())
    assert own is not None and own > 0


def test_a_failing_status_is_logged_and_the_scrape_still_answers(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> wire.Status:
        raise ValueError("supervisor state unreadable")

    m = ServerMetrics(broken)
    with caplog.at_level(logging.ERROR, logger="skald.metrics"):
        samples = _samples(m)
    assert samples[("skald_requests_active", ())] == 0.0
    assert "skald_ring_fill_seconds" not in _names(m)  # no figure rather than a made-up one
    assert "status for metrics failed" in caplog.text and "supervisor state unreadable" in caplog.text


def test_a_scrape_racing_the_main_loop_retries_then_gives_up() -> None:
    calls: list[int] = []

    def racing() -> wire.Status:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("dictionary changed size during iteration")
        return wire.Status(ring={"buffered_s": 0.25}, requests=[{"id": "a"}])

    m = ServerMetrics(racing)
    assert m.status_snapshot() == wire.Status(ring={"buffered_s": 0.25}, requests=[{"id": "a"}])
    assert len(calls) == 3

    def always_racing() -> wire.Status:
        calls.append(1)
        raise RuntimeError("dictionary changed size during iteration")

    calls.clear()
    assert ServerMetrics(always_racing).status_snapshot() is None
    assert len(calls) == 5


def test_actor_figures_become_web_rss_and_gpu_gauges() -> None:
    status = wire.Status(
        actors={
            "web": {"metrics": {"listeners": 3, "rss_mb": 50}},
            "tts_worker": {
                "metrics": {"rss_mb": 400.5, "gpu": {"util": {"util_pct": 42}, "vram": {"reserved_mb": 1024}}}
            },
            "render_worker": {"metrics": {"gpu": {"util": None, "vram": {"process_used_mb": 512, "reserved_mb": 9}}}},
            "audio_consumer": {"metrics": {"rss_mb": -1}},  # not measured: no series
            "prelude": {},
        }
    )
    samples = _samples(ServerMetrics(lambda: status))
    assert samples[("skald_web_listeners", ())] == 3.0
    assert samples[("skald_actor_rss_bytes", (("actor", "tts_worker"),))] == 400.5e6
    assert samples[("skald_actor_rss_bytes", (("actor", "web"),))] == 50e6
    assert ("skald_actor_rss_bytes", (("actor", "audio_consumer"),)) not in samples
    # One series each though two workers report (a duplicate series would fail the scrape): the
    # highest utilization, and the memory both hold (the render worker's own NVML figure wins
    # over its torch reserved figure).
    text = ServerMetrics(lambda: status).exposition()
    assert text.count("\nskald_gpu_utilization_ratio ") == 1 and text.count("\nskald_gpu_vram_bytes ") == 1
    assert samples[("skald_gpu_utilization_ratio", ())] == 0.42
    assert samples[("skald_gpu_vram_bytes", ())] == (512 + 1024) * 2**20


def test_no_gateway_and_no_gpu_means_no_such_series() -> None:
    status = wire.Status(actors={"tts_worker": {"metrics": {"rss_mb": 10, "gpu": {}}}})
    names = _names(ServerMetrics(lambda: status))
    assert "skald_actor_rss_bytes" in names
    assert not names & {"skald_web_listeners", "skald_gpu_utilization_ratio", "skald_gpu_vram_bytes"}


def test_a_gateway_whose_listener_count_is_not_a_number_shows_zero() -> None:
    status = wire.Status(actors={"web": {"metrics": {"listeners": "many"}}})
    assert _samples(ServerMetrics(lambda: status))[("skald_web_listeners", ())] == 0.0


def test_rarer_events_are_counted(clock: _Clock) -> None:
    m = ServerMetrics(lambda: wire.Status())
    m.observe(wire.ChunkSynthesized(request_id="r", index=0, dur_s=0.0, synth_ms=5.0, wait_ms=250.0))
    m.observe(wire.Underrun(request_id="r", frames=256, count=1))
    m.observe(wire.RequestFinished(request_id="r", status="done", device_underflows=2))
    m.observe(wire.Silenced(request_id="r", t_silent=5.0, was_audible=False, t_cancel_seen=4.0))
    m.observe(wire.Error(kind="actor_crashed", message="gone"))  # no actor named: no restart counted
    m.observe(wire.Error(kind="actor_crashed", message="gone", actor="tts_worker"))
    s = _samples(m)
    assert s[("skald_backpressure_wait_seconds_total", ())] == 0.25
    assert s[("skald_audio_synthesized_seconds_total", ())] == 0.0  # an empty chunk is no audio
    assert s[("skald_underruns_total", ())] == 1.0
    assert s[("skald_device_underflows_total", ())] == 2.0
    assert s[("skald_cancel_to_silence_seconds_count", ())] == 0.0  # nothing was audible
    assert s[("skald_errors_total", (("kind", "actor_crashed"),))] == 2.0
    assert s[("skald_actor_restarts_total", (("actor", "tts_worker"),))] == 1.0
    assert m.recent()["underruns"] == 1


def test_old_events_leave_the_windows(clock: _Clock) -> None:
    m = ServerMetrics(lambda: wire.Status())
    m.observe(wire.ChunkSynthesized(request_id="r", index=0, dur_s=2.0, synth_ms=500.0, engine="piper"))
    m.observe(wire.PlaybackStarted(request_id="r", ttfa_ms=120.0))
    m.observe(wire.Underrun(request_id="r", frames=256, count=1))
    assert m.recent()["rtf_last_minute"] == 0.25
    clock.now += RTF_WINDOW_S + 1  # the chunk is older than the RTF window; TTFA and underrun are not
    recent: dict[str, Any] = m.recent()
    assert recent["rtf_last_minute"] is None and (recent["playbacks"], recent["underruns"]) == (1, 1)
    clock.now += RECENT_WINDOW_S
    recent = m.recent()
    assert (recent["playbacks"], recent["underruns"], recent["ttfa_ms_p50"]) == (0, 0, None)


def test_engines_of_requests_are_remembered_for_a_bounded_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_MAX_TRACKED", 2)
    m = ServerMetrics(lambda: wire.Status(), default_engine="default")
    for rid, engine in (("a", "xtts"), ("b", "piper"), ("c", "piper")):
        m.observe(wire.ChunkSynthesized(request_id=rid, index=0, dur_s=1.0, synth_ms=10.0, engine=engine))
    # "a" was forgotten (the oldest): its TTFA is counted under the default engine.
    for rid in ("a", "b"):
        m.observe(wire.PlaybackStarted(request_id=rid, ttfa_ms=100.0))
    s = _samples(m)
    assert s[("skald_ttfa_seconds_count", (("engine", "default"),))] == 1.0
    assert s[("skald_ttfa_seconds_count", (("engine", "piper"),))] == 1.0
    assert ("skald_ttfa_seconds_count", (("engine", "xtts"),)) not in s

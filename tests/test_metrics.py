"""Figures that mean what they say: engine compute apart from backpressure, and the Prometheus
metrics of a real server scraped while it narrates."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config.settings import load_settings
from tests.conftest import ROOT, sample_text, server_env

pytestmark = pytest.mark.slow

SKALD = [sys.executable, "-m", "actors.cli"]
CRYPT = sample_text("crypt.txt")


def _engine_rtf(texts: list[str], passes: int = 3) -> float:
    """Piper's own real-time factor on ``texts``, timed in this process: the reference (the
    median of ``passes`` passes, as the shared machine's speed swings from pass to pass)."""
    import statistics

    from actors.tts import create_engine
    from actors.tts.base import CancelToken

    settings = load_settings(env={})
    engine = create_engine("piper", settings)
    info = engine.load_voice(settings.tts.voice)
    list(engine.synthesize("Warm up the session, please.", settings.tts.voice, CancelToken()))
    rtfs = []
    for _ in range(passes):
        compute = audio = 0.0
        for text in texts:
            t0 = time.perf_counter()
            frames = sum(len(block) for block in engine.synthesize(text, settings.tts.voice, CancelToken()))
            compute += time.perf_counter() - t0
            audio += frames / info.sample_rate
        rtfs.append(compute / audio)
    engine.close()
    return statistics.median(rtfs)


def test_a_paced_narration_reports_engine_compute_apart_from_ring_waits(tmp_path: Path) -> None:
    """With a small overfill guard the worker spends most of a paced narration waiting for ring
    space. The reported RTF must still be the engine's compute (near Piper's own, timed here), and
    the wait must show up as ``wait_ms``. Before the split, the report said RTF ~1.0 here."""
    report_path = tmp_path / "report.json"
    out = subprocess.run(
        [*SKALD, "speak", "--quiet", "--sink", "null", "--report", str(report_path), CRYPT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=server_env(SKALD_RING_MAX_FILL_S="1.0"),
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(report_path.read_text())
    audio_s = report["audio_seconds"]
    waited_s = sum(c["wait_ms"] for c in report["chunks"]) / 1000.0
    assert audio_s > 10.0, report
    # The worker really was held back: most of the narration's time went to waiting.
    assert waited_s > 0.3 * audio_s, (waited_s, audio_s)
    assert report["wait_s"] == pytest.approx(waited_s, abs=0.01)
    engine_rtf = _engine_rtf([c["text"] for c in report["chunks"]])
    ratio = report["rtf"] / engine_rtf
    print(
        f"reported compute RTF {report['rtf']:.3f}, engine's own {engine_rtf:.3f} (x{ratio:.2f}), "
        f"waited {waited_s:.1f} s of {audio_s:.1f} s"
    )
    # Generous: the shared 2-core VM swings (at load 12 the reference ran 0.9 against 0.34
    # reported, timed back to back rather than in the narration's bursts), while wait counted as
    # compute is off by ~1/engine_rtf (RTF ~1.0 on a paced sink).
    assert 1 / 4 < ratio < 3, (report["rtf"], engine_rtf)


# ------------------------------------------------------------------------------ Prometheus


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, parsed by prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _scrape(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        return reply.read().decode()


def test_metrics_scraped_during_narration_follow_the_events(make_server) -> None:  # type: ignore[no-untyped-def]
    import os
    import re
    import signal

    from actors import wire
    from tests.conftest import wait_until

    server = make_server("--sink", "null", "--metrics", "127.0.0.1:0")
    found = re.search(r"metrics (http://\S+/metrics)", server.banner)
    assert found, server.banner
    url = found.group(1)
    seen: list[wire.Message] = []

    def follow(client, until, timeout: float = 60.0) -> wire.Message:  # type: ignore[no-untyped-def]
        for event in client.events(timeout_s=timeout):
            seen.append(event)
            if until(event):
                return event
        raise AssertionError(f"event not seen; last: {seen[-3:]}")

    with server.client() as client:
        before = _samples(_scrape(url))
        assert _value(before, "skald_ttfa_seconds_count", engine="piper") == 0
        assert _value(before, "skald_requests_active") == 0
        assert ("skald_gpu_utilization_ratio", frozenset()) not in before  # no GPU here, no GPU series

        long_id = client.speak(CRYPT)
        follow(client, lambda e: isinstance(e, wire.PlaybackStarted) and e.request_id == long_id)
        follow(client, lambda e: isinstance(e, wire.ChunkSynthesized) and e.request_id == long_id and e.index >= 1)
        during = _samples(_scrape(url))
        assert _value(during, "skald_requests_active") == 1
        assert _value(during, "skald_ttfa_seconds_count", engine="piper") == 1
        assert _value(during, "skald_chunk_synthesis_seconds_count", engine="piper") >= 2
        assert _value(during, "skald_ring_fill_seconds") > 0  # audio queued ahead of the null sink
        assert 0 < _value(during, "skald_rtf") < 5
        assert _value(during, "skald_actor_rss_bytes", actor="tts_worker") > 50e6
        assert _value(during, "skald_actor_rss_bytes", actor="supervisor") > 10e6

        client.cancel(long_id)
        follow(client, lambda e: isinstance(e, wire.Silenced) and e.request_id == long_id)
        short_id = client.speak("The crypt falls silent.")
        follow(client, lambda e: isinstance(e, wire.RequestFinished) and e.request_id == short_id)

        # An actor dies: the restart is counted once it is noticed, and it comes back.
        victim = client.status()["actors"]["audio_consumer"]["pid"]
        os.kill(victim, signal.SIGKILL)
        follow(client, lambda e: isinstance(e, wire.Error) and e.kind == "actor_crashed")
        assert wait_until(lambda: client.status()["actors"]["audio_consumer"]["state"] == "running", 30)

        text = client.metrics_text()  # the control request a gateway's /metrics serves
        after = _samples(text)
        assert _samples(_scrape(url)).keys() == after.keys()

    finished = [e for e in seen if isinstance(e, wire.RequestFinished)]
    playbacks = [e for e in seen if isinstance(e, wire.PlaybackStarted)]
    chunks = [e for e in seen if isinstance(e, wire.ChunkSynthesized) and e.dur_s > 0]
    assert _value(after, "skald_ttfa_seconds_count", engine="piper") == len(playbacks) == 2
    assert _value(after, "skald_ttfa_seconds_sum", engine="piper") == pytest.approx(
        sum(e.ttfa_ms for e in playbacks) / 1000, rel=1e-6
    )
    for status in ("done", "cancelled", "failed"):
        expected = sum(1 for e in finished if e.status == status)
        assert (
            _value(after, "skald_requests_total", status=status) - _value(before, "skald_requests_total", status=status)
            == expected
        ), status
    assert _value(after, "skald_requests_total", status="cancelled") == 1
    assert _value(after, "skald_requests_total", status="done") == 1
    assert _value(after, "skald_requests_active") == 0
    assert _value(after, "skald_chunk_synthesis_seconds_count", engine="piper") == len(chunks)
    assert _value(after, "skald_cancel_to_silence_seconds_count") == 1
    assert 0 < _value(after, "skald_cancel_to_silence_seconds_sum") < 1.0
    assert _value(after, "skald_actor_restarts_total", actor="audio_consumer") == 1
    assert _value(after, "skald_actor_restarts_total", actor="tts_worker") == 0
    assert _value(after, "skald_errors_total", kind="actor_crashed") == 1
    assert _value(after, "skald_underruns_total") == sum(1 for e in seen if isinstance(e, wire.Underrun))
    assert server.stop() == 0


def test_metrics_address_errors_name_the_setting(run_dir: Path) -> None:
    import socket

    from config.settings import ConfigError

    with pytest.raises(ConfigError, match=r"supervisor.metrics = 'loopback' \(from SKALD_SUPERVISOR_METRICS\)"):
        load_settings(env={"SKALD_SUPERVISOR_METRICS": "loopback"})
    assert load_settings(env={"SKALD_SUPERVISOR_METRICS": "9464"}).supervisor.metrics == "9464"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [*SKALD, "serve", "--sink", "null", "--run-dir", str(run_dir), "--metrics", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=server_env(),
            timeout=60,
        )
    assert out.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in out.stderr and "supervisor.metrics" in out.stderr, out.stderr

"""A TTS worker or audio consumer killed mid-narration: the request resumes and ends ``done``.

``resume_point`` is tested on the chunker's own output; the process tests SIGKILL the real worker
of a real ``skald serve`` while it synthesizes, and check from the events that the narration as
finally planned says the whole text once: the chunks spoken before the crash, then the rest,
starting with the chunk that was being synthesized, nothing skipped, nothing said twice. The
device test kills the worker, then the consumer, of one narration on the PulseAudio rig and
checks the recording: every chunk heard in order, only the chunk the consumer was playing heard
again (from its start), and no silence over 1.5 s around either recovery.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import numpy as np
import pytest

from actors import wire
from actors.text.resume import resume_point
from tests.audio_rig import STEADY_DEVICE, MonitorRecorder, PulseNullSink, find_gaps, pulse_sink  # noqa: F401
from tests.conftest import Server, sample_text, wait_until
from tests.event_log import EventLog, alnum, planned_sources
from tests.test_device_loss import MATCH, TEMPLATE_S, find_chunks
from tests.test_speech_output import DETERMINISTIC, _lowpass, _raw_piper

RATE = 22050

MARKDOWN = "\n\n**Henry VIII** paid $3,450 and rolled 2d6 😀. # Heading\n- item one\n- item two"


@pytest.mark.parametrize("spoken", range(10))
def test_the_rest_of_the_text_is_exactly_what_was_not_spoken(spoken: int) -> None:
    text = sample_text("crypt.txt") + MARKDOWN
    sources = planned_sources(text)
    assert len(sources) >= 9
    point = resume_point([text], sources[:spoken])
    assert point is not None and point[0] == 0
    rest = text[point[1] :]
    assert alnum(planned_sources(rest)) == alnum(sources[spoken:])


def test_the_cut_can_fall_in_the_prelude_or_after_it() -> None:
    parts = ["The door groans open.", "Beyond it, a stair winds down."]
    assert resume_point(parts, []) == (0, 0)
    assert resume_point(parts, ["The door groans"]) == (0, 15)
    assert resume_point(parts, ["The door groans open."]) == (1, 0)
    assert resume_point(parts, ["The door groans open. Beyond it,"]) == (1, 10)
    assert resume_point(parts, ["Something else entirely"]) is None  # never guess


def test_a_killed_worker_resumes_the_narration(make_server: Callable[..., Server]) -> None:
    server = make_server("--sink", "null", **DETERMINISTIC)
    log = EventLog(server.client())
    text = sample_text("crypt.txt")  # ~30 s of speech in 8 chunks: the test lasts about that long
    try:
        with server.client() as ctl:
            worker = ctl.status()["actors"]["tts_worker"]["pid"]
            request_id = ctl.speak(text)
            log.wait(lambda e: isinstance(e, wire.ChunkSynthesized) and e.request_id == request_id and e.index == 1)
            os.kill(worker, signal.SIGKILL)
            t_crash, crash = log.wait(lambda e: isinstance(e, wire.Error) and e.kind == "actor_crashed")
            assert isinstance(crash, wire.Error) and "resume" in crash.message, crash
            _, finished = log.finished(request_id, timeout=240)
            assert ctl.status()["actors"]["tts_worker"]["pid"] != worker
        assert finished.status == "done" and finished.resumed == 1, finished
        before = [(t, e) for t, e in log.of(request_id, wire.ChunkPlanned) if t < t_crash]
        synthesized = {e.index for t, e in log.of(request_id, wire.ChunkSynthesized) if t < t_crash}
        first = min(set(range(len(before) + 1)) - synthesized)
        assert first >= 2
        spoken = [e for _, e in before if e.index < first]
        after = [e for t, e in log.of(request_id, wire.ChunkPlanned) if t > t_crash]
        assert after and after[0].index == first, "numbering goes on from the chunk that was cut"
        final = sorted(spoken, key=lambda e: e.index) + after
        assert [e.index for e in final] == list(range(len(final)))
        # The whole text, once: what the chunker makes of it, as written.
        assert alnum([e.source for e in final]) == alnum(planned_sources(text))
        heard = sum(e.dur_s for _, e in log.of(request_id, wire.ChunkSynthesized))
        assert finished.audio_s >= 0.95 * heard - 1.0  # every synthesized chunk was played
    finally:
        log.close()


def test_a_killed_consumer_plays_on_from_where_it_stopped(make_server: Callable[..., Server]) -> None:
    """The new consumer reads the ring on from the old one's last frame, told again what it holds:
    the request ends ``done`` and plays (nearly) all of its audio, the lost device buffer aside."""
    server = make_server("--sink", "null", **DETERMINISTIC)
    log = EventLog(server.client())
    try:
        with server.client() as ctl:
            consumer = ctl.status()["actors"]["audio_consumer"]["pid"]
            request_id = ctl.speak(sample_text("crypt.txt"))
            log.wait(lambda e: isinstance(e, wire.ChunkSynthesized) and e.request_id == request_id and e.index == 2)
            log.wait(lambda e: isinstance(e, wire.PlaybackStarted) and e.request_id == request_id)
            os.kill(consumer, signal.SIGKILL)
            _, crash = log.wait(lambda e: isinstance(e, wire.Error) and e.kind == "actor_crashed")
            assert isinstance(crash, wire.Error) and "play on" in crash.message, crash
            _, finished = log.finished(request_id, timeout=120)
            assert ctl.status()["actors"]["audio_consumer"]["pid"] != consumer
        assert finished.status == "done" and finished.resumed == 1, finished
        assert len(log.of(request_id, wire.PlaybackStarted)) == 1, "the listener heard one start"
        synthesized = sum(e.dur_s for _, e in log.of(request_id, wire.ChunkSynthesized))
        assert synthesized - 0.5 <= finished.audio_s <= synthesized + 0.1, (finished.audio_s, synthesized)
    finally:
        log.close()


def head_places(head: np.ndarray, recording: np.ndarray, rate: int) -> list[int]:
    """Every place in ``recording`` where ``head`` (a voiced piece of a chunk's start) is heard,
    scoring >= ``MATCH`` like ``find_chunks``' pieces, places closer than 1 s counted once."""
    ref = _lowpass(head.astype(np.float64), rate, 4000.0)
    rec = _lowpass(recording.astype(np.float64) / 32768.0, rate, 4000.0)
    n = len(ref)
    nfft = 1 << int(np.ceil(np.log2(len(rec) + n)))
    corr = np.fft.irfft(np.fft.rfft(rec, nfft) * np.conj(np.fft.rfft(ref, nfft)), nfft)[: len(rec) - n + 1]
    energy = np.concatenate([[0.0], np.cumsum(rec**2)])
    norm = corr / np.sqrt(np.maximum(energy[n:] - energy[:-n], 1e-12) * float(np.dot(ref, ref)))
    places: list[int] = []
    for k in np.flatnonzero(norm >= MATCH):
        if not places or k - places[-1] > rate:
            places.append(int(k))
        elif norm[k] > norm[places[-1]]:
            places[-1] = int(k)
    return places


@pytest.mark.device
@pytest.mark.timeout(400)
def test_the_device_hears_every_chunk_across_a_worker_and_a_consumer_kill(
    make_server: Callable[..., Server],
    pulse_sink: PulseNullSink,  # noqa: F811
) -> None:
    """Issue 14's acceptance on the PulseAudio rig: SIGKILL the TTS worker while it synthesizes,
    then the audio consumer while it plays, in one narration. The request ends ``done``; the
    recording holds every chunk of the final plan in order; only the chunk the consumer was
    playing is heard twice (re-spoken from its start); no silence inside the narration exceeds
    1.5 s."""
    server = make_server("--sink", "device", **DETERMINISTIC, **pulse_sink.env, **STEADY_DEVICE)
    log = EventLog(server.client())
    recorder = MonitorRecorder(rate=RATE, env=pulse_sink.env).start()
    try:
        with server.client() as ctl:
            pids = {role: info["pid"] for role, info in ctl.status()["actors"].items()}
            request_id = ctl.speak(sample_text("crypt.txt"))  # ~30 s of speech in 8 chunks
            log.wait(lambda e: isinstance(e, wire.ChunkSynthesized) and e.request_id == request_id and e.index == 1)
            os.kill(pids["tts_worker"], signal.SIGKILL)
            t_worker, _ = log.wait(crashed("tts_worker"))
            synthesized = len(log.of(request_id, wire.ChunkSynthesized))
            # The new worker's first chunk, then 3 s more of the narration: the consumer is mid-chunk.
            assert wait_until(lambda: len(log.of(request_id, wire.ChunkSynthesized)) > synthesized, 60)
            assert recorder.wait_for_samples(recorder.samples_recorded + 3 * RATE, timeout_s=30)
            os.kill(pids["audio_consumer"], signal.SIGKILL)
            t_consumer, crash = log.wait(crashed("audio_consumer"))
            assert isinstance(crash, wire.Error) and "play on" in crash.message, crash
            _, finished = log.finished(request_id, timeout=240)
            assert recorder.wait_until_covered(time.monotonic() + 0.3), "the recorder fell behind"
        heard = recorder.stop()
        assert finished.status == "done" and finished.resumed == 2, finished

        # The chunks as finally planned, each as raw Piper says it, found by their heads.
        texts = [e.text for e in _final_chunks(log, request_id)]
        reference, lengths, _ = _raw_piper(texts)
        starts = [int(x) for x in np.cumsum([0, *lengths[:-1]])]
        parts = [reference[a : a + n] for a, n in zip(starts, lengths, strict=True)]
        found = find_chunks(reference, starts, heard, RATE)
        print(f"{len(texts)} chunks, found {sorted(found)} at {[found[i][0] / RATE for i in sorted(found)]}")
        assert sorted(found) == list(range(len(texts))), found
        places = [found[i][0] for i in range(len(texts))]
        assert places == sorted(places), f"out of order: {found}"
        # Repetition: each chunk's first voiced piece is heard once, the cut chunk's twice.
        n = int(TEMPLATE_S * RATE)
        counts = []
        for part in parts:
            at = next(k for k in range(0, len(part) - n, n // 2) if np.sqrt(np.mean(part[k : k + n] ** 2)) >= 0.03)
            counts.append(len(head_places(part[at : at + n], heard, RATE)))
        print(f"heads heard per chunk: {counts}")
        assert all(c >= 1 for c in counts) and sum(c - 1 for c in counts) <= 1 and max(counts) <= 2, counts
        # The silences around the recoveries (and anywhere else inside the narration).
        gaps = find_gaps(heard, RATE, min_gap_ms=100.0)
        longest = max((d for _, d in gaps), default=0.0)
        print(f"longest silence inside the narration {longest:.2f} s; kills at +{t_consumer - t_worker:.1f} s apart")
        assert longest <= 1.5, gaps
    finally:
        recorder.stop()
        log.close()


def crashed(role: str) -> Callable[[wire.Message], bool]:
    return lambda e: isinstance(e, wire.Error) and e.kind == "actor_crashed" and e.actor == role


def _final_chunks(log: EventLog, request_id: str) -> list[wire.ChunkPlanned]:
    """``final_plan``'s chunks as events: a later plan of an index replaces the earlier ones."""
    plan: dict[int, wire.ChunkPlanned] = {}
    for _, event in log.of(request_id, wire.ChunkPlanned):
        for index in [i for i in plan if i >= event.index]:
            del plan[index]
        plan[event.index] = event
    return [plan[i] for i in sorted(plan)]

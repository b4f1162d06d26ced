"""A TTS worker killed mid-narration: the request resumes on the restarted worker and ends ``done``.

``resume_point`` is tested on the chunker's own output; the process test SIGKILLs the real worker
of a real ``skald serve`` while it synthesizes, and checks from the events that the narration as
finally planned says the whole text once: the chunks spoken before the crash, then the rest,
starting with the chunk that was being synthesized, nothing skipped, nothing said twice.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from actors import wire
from actors.text.resume import resume_point
from tests.conftest import Server, sample_text
from tests.event_log import EventLog, alnum, planned_sources
from tests.test_speech_output import DETERMINISTIC

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

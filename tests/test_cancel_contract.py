"""The cancel contract (docs/protocol.md): every cancelled request gets exactly one ``silenced``
before its ``request_finished``, whatever state it was cancelled in.

``scripts/bench cancel`` once waited in vain for a ``silenced`` at cancel 7 of 50: the consumer
measured silence only for requests with audio in the ring, and the supervisor published
``request_finished`` at once, so a request cancelled while queued or still synthesizing got no
``silenced`` at all, and a late one could follow its ``request_finished``. One real server (null
sink, pre-buffer start at 8 s so the pre-buffering state lasts) goes through every state.
"""

from __future__ import annotations

from collections.abc import Callable

from actors import wire
from tests.conftest import Server, sample_text
from tests.event_log import EventLog


def assert_contract(log: EventLog, request_id: str, audible: bool | None = None) -> wire.Silenced:
    """Exactly one silenced for ``request_id``, before its request_finished (cancelled)."""
    _, finished = log.finished(request_id, timeout=30)
    assert finished.status == "cancelled", finished
    ours = [(t, e) for t, e in log.seen if getattr(e, "request_id", "") == request_id]
    kinds = [e.KIND for _, e in ours]
    assert kinds.count(wire.Silenced.KIND) == 1, [k.decode() for k in kinds]
    assert kinds.index(wire.Silenced.KIND) < kinds.index(wire.RequestFinished.KIND), [k.decode() for k in kinds]
    silenced = next(e for _, e in ours if isinstance(e, wire.Silenced))
    if audible is not None:
        assert silenced.was_audible is audible, (request_id, silenced)
    return silenced


def test_every_cancel_state_gets_one_silenced_before_request_finished(make_server: Callable[..., Server]) -> None:
    server = make_server("--sink", "null", SKALD_PREBUFFER_START_S="8", SKALD_PREBUFFER_RESUME_S="8")
    log = EventLog(server.client())
    long_text = sample_text("forest-long.txt")
    try:
        with server.client() as ctl:

            def state(request_id: str, kind: type[wire.Message]) -> None:
                log.wait(lambda e: isinstance(e, kind) and getattr(e, "request_id", "") == request_id, 60)

            # Synthesizing: cancelled the moment it was accepted, before any chunk was done.
            synth = ctl.speak(long_text)
            ctl.cancel(synth)
            assert_contract(log, synth, audible=False)
            assert not log.of(synth, wire.PlaybackStarted)

            # Pre-buffering: chunks in the ring, playback not started (it waits for 8 s of audio).
            pre = ctl.speak(long_text)
            state(pre, wire.ChunkSynthesized)
            queued = ctl.speak("This line waits its turn behind the long one.")  # queued behind it
            assert not log.of(pre, wire.PlaybackStarted)
            ctl.cancel(queued)
            assert_contract(log, queued, audible=False)
            assert not log.of(queued, wire.ChunkSynthesized), "the queued request was not queued"
            ctl.cancel(pre)
            assert_contract(log, pre, audible=False)

            # Playing, then fading: a second cancel of a request already fading out adds nothing.
            playing = ctl.speak(long_text)
            state(playing, wire.PlaybackStarted)
            ctl.cancel(playing)
            ctl.cancel(playing)
            assert_contract(log, playing, audible=True)

            # Finished: a cancel after the end is accepted and changes nothing.
            short = ctl.speak("Done already.")
            log.finished(short, timeout=60)
            ctl.cancel(short)

            # Cancel all, with one request playing and one queued behind it.
            first = ctl.speak(long_text)
            second = ctl.speak(long_text)
            state(first, wire.PlaybackStarted)
            ctl.cancel(all=True)
            assert_contract(log, first, audible=True)
            assert_contract(log, second, audible=False)
            # A probe proves every event of the above was delivered before we count.
            probe = ctl.speak("Probe.")
            log.finished(probe, timeout=60)
        ours = [e for _, e in log.seen if getattr(e, "request_id", "") == short]
        assert [e.status for e in ours if isinstance(e, wire.RequestFinished)] == ["done"]
        assert not any(isinstance(e, wire.Silenced) for e in ours)
        for request_id in (synth, pre, queued, playing, first, second):
            ours = [e for _, e in log.seen if getattr(e, "request_id", "") == request_id]
            assert sum(isinstance(e, wire.Silenced) for e in ours) == 1
            assert sum(isinstance(e, wire.RequestFinished) for e in ours) == 1
    finally:
        log.close()

"""The XTTS engine inside the real pipeline (supervisor, worker, consumer processes), on CPU.

The model is coqui-tts's real XTTS v2 architecture, tiny config, random weights (see
``actors/engines/xtts_random.py``): what it says is noise, so these tests check code paths,
order and continuity, never speech content. Kept few: each XTTS chunk costs seconds on CPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors import wire
from tests.audio_rig import STEADY_DEVICE, MonitorRecorder, PulseNullSink

XTTS_ENV = {"SKALD_TTS_ENGINE": "xtts", "SKALD_XTTS_DEVICE": "cpu"}


def _events(client: Any, until: Any, timeout_s: float = 180.0) -> list[wire.Message]:
    seen: list[wire.Message] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in client.events(timeout_s=5.0):
            seen.append(event)
            if until(event):
                return seen
    raise AssertionError(f"timed out; events: {[type(e).__name__ for e in seen]}")


def test_voice_tags_switch_voice_and_engine_at_the_next_chunk(make_server, xtts_tiny_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """An XTTS narrator, a Piper NPC named by an inline tag, then the narrator again."""
    server = make_server(**XTTS_ENV, SKALD_XTTS_MODEL_DIR=str(xtts_tiny_dir), SKALD_AUDIO_WAV_PACED="false")
    with server.client(timeout_s=30) as ctl:
        events = server.client()
        try:
            rid = ctl.speak('He looks up. [voice:en_US-joe-medium] "Two silver." [voice:] He waits.')
            seen = _events(events, lambda e: isinstance(e, wire.RequestFinished) and e.request_id == rid)
        finally:
            events.close()
    finished = next(e for e in seen if isinstance(e, wire.RequestFinished))
    assert finished.status == "done"
    planned = sorted((e for e in seen if isinstance(e, wire.ChunkPlanned)), key=lambda e: e.index)
    synthesized = {e.index: e for e in seen if isinstance(e, wire.ChunkSynthesized)}
    assert [p.voice for p in planned] == ["", "en_US-joe-medium", ""], [(p.text, p.voice) for p in planned]
    assert "[voice" not in " ".join(p.text for p in planned)
    assert [synthesized[p.index].engine for p in planned] == ["xtts", "piper", "xtts"]
    assert not [e for e in seen if isinstance(e, wire.Error)]


def test_next_chunk_outranks_look_ahead_and_urgent_lines_go_at_the_next_seam(  # type: ignore[no-untyped-def]
    make_server, xtts_tiny_dir: Path
) -> None:
    """Two streams busy with a long request; an urgent one arrives: its chunks are pushed at the
    next seam, then the long one resumes, every request's chunks in index order."""
    server = make_server(
        **XTTS_ENV,
        SKALD_XTTS_MODEL_DIR=str(xtts_tiny_dir),
        SKALD_TTS_PARALLEL_STREAMS="2",
        SKALD_AUDIO_WAV_PACED="false",
    )
    long_text = (
        "The gate is shut. The guards sleep. The moon is low. A dog barks twice. Nobody moves. Then the bell rings."
    )
    with server.client(timeout_s=30) as ctl:
        events = server.client()
        try:
            slow = ctl.speak(long_text)
            seen = _events(events, lambda e: isinstance(e, wire.ChunkSynthesized) and e.request_id == slow)
            urgent = ctl.speak("Run! Now!", priority=5)
            seen += _events(events, lambda e: isinstance(e, wire.RequestFinished) and e.request_id == slow, 400)
        finally:
            events.close()
    order = [(e.request_id, e.index) for e in seen if isinstance(e, wire.ChunkSynthesized)]
    slow_idx = [i for r, i in order if r == slow]
    urgent_idx = [i for r, i in order if r == urgent]
    assert slow_idx == sorted(slow_idx) and urgent_idx == sorted(urgent_idx), order
    n_slow = len([e for e in seen if isinstance(e, wire.ChunkPlanned) and e.request_id == slow])
    assert n_slow >= 4, "the long request must have look-ahead chunks to overtake"
    first_urgent = order.index((urgent, 0))
    # Only what was done or in flight when it arrived goes first: the chunk we waited for plus
    # at most the two streams' worth.
    slow_before = [i for r, i in order[:first_urgent] if r == slow]
    assert len(slow_before) <= 1 + 2, order
    assert len(slow_idx) > len(slow_before), (
        order,
        [(e.index, e.text) for e in seen if isinstance(e, wire.ChunkPlanned)],
    )
    assert order[first_urgent : first_urgent + len(urgent_idx)] == [(urgent, i) for i in urgent_idx], order


@pytest.mark.device
def test_injected_xtts_failure_falls_back_to_piper_with_no_gap(  # type: ignore[no-untyped-def]
    make_server, xtts_tiny_dir: Path, pulse_sink: PulseNullSink
) -> None:
    """Chunk 1 fails on XTTS twice (injected): an error event, Piper speaks it and the rest, and
    the recorded device output has no hole where chunk 1 belongs."""
    server = make_server(
        "--sink",
        "device",
        **pulse_sink.env,
        **STEADY_DEVICE,
        **XTTS_ENV,
        SKALD_XTTS_MODEL_DIR=str(xtts_tiny_dir),
        SKALD_FAULT_INJECT="chunk=1,times=2",
        # XTTS on 2 CPU cores is slower than real time: buffer the whole request, so a hole
        # could only come from the failure, not from the CPU.
        SKALD_PREBUFFER_START_S="30",
    )
    with server.client(timeout_s=30) as ctl, MonitorRecorder(rate=24000, env=pulse_sink.env) as recorder:
        events = server.client()
        try:
            rid = ctl.speak("The rope snaps. You fall into the dark water. Something cold brushes your leg.")
            seen = _events(events, lambda e: isinstance(e, wire.RequestFinished) and e.request_id == rid, 400)
        finally:
            events.close()
        assert recorder.wait_until_covered(time.monotonic() + 0.3), "the recorder fell behind"  # the tail pad
        recording = recorder.stop()
    finished = next(e for e in seen if isinstance(e, wire.RequestFinished))
    assert finished.status == "done" and finished.underruns == 0 and finished.device_underflows == 0
    errors = [e for e in seen if isinstance(e, wire.Error)]
    assert [e.kind for e in errors] == ["engine_failed"], errors
    engines = {e.index: e.engine for e in seen if isinstance(e, wire.ChunkSynthesized)}
    assert engines[0] == "xtts" and engines[1] == "piper"
    assert all(engines[i] == "piper" for i in engines if i >= 1), engines  # Piper finishes the request
    # The recording: audible from the first frame to the last, no silence longer than the
    # longest pause the joiner puts between chunks (300 ms after a sentence).
    loud = np.flatnonzero(np.abs(recording.astype(np.int32)) > 60)
    assert loud.size, "nothing was heard"
    heard = recording[loud[0] : loud[-1] + 1]
    quiet = np.abs(heard.astype(np.int32)) <= 60
    longest, run = 0, 0
    for q in quiet:
        run = run + 1 if q else 0
        longest = max(longest, run)
    assert longest / 24000 < 0.45, f"a silent hole of {longest / 24000:.2f} s in the output"
    # Everything made was heard: the request's audio minus its final pause (200 ms of silence
    # after the last word); a lost chunk would take seconds away.
    assert finished.audio_s - 0.3 <= len(heard) / 24000 <= finished.audio_s + 0.05

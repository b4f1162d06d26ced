"""Layered cancel on the real device path, measured in the recording.

A real ``skald serve`` plays through PortAudio into the PulseAudio null sink; ``parec``
records the sink's monitor. Piper runs with its noise off, so each request's audio can be
rebuilt independently (raw ``piper.PiperVoice`` over the planned chunk texts) and found in the
recording. Bounds here are generous (50 ms); ``scripts/bench cancel`` measures precisely.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from actors import wire
from tests.audio_rig import MonitorRecorder, PulseNullSink, align
from tests.conftest import sample_text
from tests.test_speech_output import DETERMINISTIC, joined_from_events

RATE = 22050
# PortAudio's "high" device latency (~35-43 ms on the PulseAudio rig) with the default 128-frame
# blocks. The default "low" latency underflowed 3 times in 3 s of audio on the 2-vCPU test VM
# (before and after the "Rooms" change alike: the host stalls its vCPUs 5-11 ms at a time), and
# each underflow stretches the recording so the recorded audio no longer lines up with the
# reference. The cancel bound below follows: device buffer + one block + the 4 ms fade, with
# room for the VM; `scripts/bench cancel` measures the default latency precisely.
CANCEL_DEVICE = {"SKALD_AUDIO_LATENCY": "high"}
NEW_TEXT = "Enough. The guard lowers his spear and waves you through."


def _collect(client: Any, until: Any, timeout_s: float = 60.0) -> list[wire.Message]:
    seen: list[wire.Message] = []
    deadline = time.monotonic() + timeout_s
    for event in client.events(timeout_s=15.0):
        seen.append(event)
        if until(event) or time.monotonic() > deadline:
            return seen
    raise AssertionError(f"events stopped before the expected one; got {[type(e).__name__ for e in seen]}")


def _silent_runs(x: np.ndarray, threshold: int, min_len: int) -> list[tuple[int, int]]:
    quiet = np.abs(x.astype(np.int32)) <= threshold
    runs: list[tuple[int, int]] = []
    start = -1
    for i, q in enumerate(quiet):
        if q and start < 0:
            start = i
        elif not q and start >= 0:
            if i - start >= min_len:
                runs.append((start, i))
            start = -1
    if start >= 0 and len(quiet) - start >= min_len:
        runs.append((start, len(quiet)))
    return runs


@pytest.mark.device
def test_cancel_during_playback_fades_to_silence_and_the_next_request_plays_only_new_audio(
    make_server,  # type: ignore[no-untyped-def]
    pulse_sink: PulseNullSink,
) -> None:
    server = make_server("--sink", "device", **pulse_sink.env, **DETERMINISTIC, **CANCEL_DEVICE)
    with server.client() as ctl, MonitorRecorder(rate=RATE, env=pulse_sink.env) as recorder:
        from actors.client import SkaldClient

        events = SkaldClient.for_run_dir(str(server.run_dir), timeout_s=10)
        try:
            old = ctl.speak(sample_text("crypt.txt"))
            seen = _collect(events, lambda e: isinstance(e, wire.PlaybackStarted) and e.request_id == old)
            t_accepted = next(e.t_accepted for e in seen if isinstance(e, wire.Accepted) and e.request_id == old)
            ttfa_ms = next(e.ttfa_ms for e in seen if isinstance(e, wire.PlaybackStarted))
            time.sleep(1.3)  # mid-sentence, with chunks queued, in the ring and in the device buffer
            t_cancel = time.monotonic()
            ctl.cancel(old)
            seen += _collect(events, lambda e: isinstance(e, wire.Silenced) and e.request_id == old)
            silenced = next(e for e in seen if isinstance(e, wire.Silenced) and e.request_id == old)
            status = ctl.status()
            time.sleep(0.4)  # a clear silence between the cut and the next request
            new = ctl.speak(NEW_TEXT)
            seen += _collect(events, lambda e: isinstance(e, wire.RequestFinished) and e.request_id == new)
        finally:
            events.close()
        assert recorder.wait_until_covered(time.monotonic() + 0.3), "the recorder fell behind"  # the tail pad
        recording = recorder.stop()
    finished = {e.request_id: e for e in seen if isinstance(e, wire.RequestFinished)}
    assert finished[old].status == "cancelled"
    assert finished[new].status == "done"
    assert silenced.was_audible
    cancel_to_silence_ms = (silenced.t_silent - t_cancel) * 1000.0
    hop_ms = (silenced.t_cancel_seen - t_cancel) * 1000.0
    assert 0.0 < cancel_to_silence_ms <= 100.0, f"cancel -> silence {cancel_to_silence_ms:.1f} ms (hop {hop_ms:.1f} ms)"
    assert status["ring"]["buffered_s"] == 0.0 or status["requests"] == [], status

    # Where the old request starts in the recording, from its own (deterministic) audio.
    ref_old = joined_from_events(seen, old, RATE)
    start_old, score = align(ref_old[: RATE // 2], recording, RATE)  # its start: heard before the cancel
    underflows = status["actors"]["audio_consumer"]["metrics"].get("device_underflows")
    assert score > 0.9, f"old request not found in the recording (score {score:.3f}, device underflows {underflows})"

    # The silence the cancel made: the first quiet run of >= 0.3 s from 25 ms before the instant
    # the DAC clock gave (t_silent). It must start within 25 ms of that instant: audio that went
    # on past it would push the run later.
    t_first_dac = t_accepted + ttfa_ms / 1000.0
    predicted = start_old + (silenced.t_silent - t_first_dac) * RATE
    search = int(predicted - 0.025 * RATE)
    runs = _silent_runs(recording[search:], threshold=40, min_len=int(0.3 * RATE))
    assert runs, "no silence after the cancel"
    cut = search + runs[0][0]
    assert abs(cut - predicted) / RATE <= 0.025, f"cut at {cut / RATE:.3f} s, DAC clock said {predicted / RATE:.3f} s"
    # A fade, not a step: at the stop point (the last millisecond into silence) no sample moves
    # by more than -40 dBFS, and the 10-30 ms before it carry speech (so the check is not vacuous).
    tail = recording[cut - int(0.001 * RATE) : cut + 8].astype(np.int32)
    step_limit = 32768 * 10 ** (-40 / 20)
    assert np.max(np.abs(np.diff(tail))) <= step_limit, f"step of {np.max(np.abs(np.diff(tail)))} at the stop"
    before = recording[cut - int(0.030 * RATE) : cut - int(0.010 * RATE)].astype(np.float64)
    assert np.sqrt(np.mean(before**2)) > 100 or np.max(np.abs(before)) > 300, "no speech right before the cut"

    # After the silence only the new request is heard: its audio, once, and nothing else.
    ref_new = joined_from_events(seen, new, RATE)
    after = recording[cut:]
    start_new, score_new = align(ref_new, after, RATE)
    assert score_new > 0.9, f"new request not found after the cut (score {score_new:.3f})"
    stale = after[: max(0, start_new - int(0.005 * RATE))]
    assert np.max(np.abs(stale.astype(np.int32)), initial=0) <= 40, "stale audio between the cut and the new request"
    rest = after[start_new + len(ref_new) + int(0.05 * RATE) :]
    assert np.max(np.abs(rest.astype(np.int32)), initial=0) <= 40, "audio after the new request ended"


@pytest.mark.device
def test_cancel_during_synthesis_is_never_heard(make_server, pulse_sink: PulseNullSink) -> None:  # type: ignore[no-untyped-def]
    server = make_server("--sink", "device", **pulse_sink.env, **DETERMINISTIC, **CANCEL_DEVICE)
    with server.client() as ctl, MonitorRecorder(rate=RATE, env=pulse_sink.env) as recorder:
        events = server.client()
        try:
            for _ in range(3):
                rid = ctl.speak(sample_text("crypt.txt"))
                ctl.cancel(rid)  # the first chunk is being synthesized; pre-buffer not reached
            new = ctl.speak(NEW_TEXT)
            seen = _collect(events, lambda e: isinstance(e, wire.RequestFinished) and e.request_id == new)
        finally:
            events.close()
        assert recorder.wait_until_covered(time.monotonic() + 0.3), "the recorder fell behind"  # the tail pad
        recording = recorder.stop()
    ref_new = joined_from_events(seen, new, RATE)
    start_new, score = align(ref_new, recording, RATE)
    assert score > 0.9
    before = recording[: max(0, start_new - int(0.005 * RATE))]
    assert np.max(np.abs(before.astype(np.int32)), initial=0) <= 40, "a cancelled request was heard"
    after = recording[start_new + len(ref_new) + int(0.05 * RATE) :]
    assert np.max(np.abs(after.astype(np.int32)), initial=0) <= 40


def test_rapid_speak_cancel_pairs_end_in_the_right_state(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    with server.client() as ctl:
        events = server.client()
        try:
            ids = []
            for i in range(20):
                rid = ctl.speak(f"Attempt number {i + 1}. The lock holds, and the corridor stays dark.")
                if i % 3 == 1:
                    time.sleep(0.15)  # some cancels land mid-playback, some before the first audio
                ctl.cancel(rid)
                ids.append(rid)
            last = ctl.speak(NEW_TEXT)
            seen = _collect(events, lambda e: isinstance(e, wire.RequestFinished) and e.request_id == last)
            status = ctl.status()
        finally:
            events.close()
    finished = {e.request_id: e.status for e in seen if isinstance(e, wire.RequestFinished)}
    assert all(finished.get(rid) == "cancelled" for rid in ids), finished
    assert finished[last] == "done"
    assert status["requests"] == []
    assert status["ring"]["buffered_s"] == 0.0
    started = {e.request_id for e in seen if isinstance(e, wire.PlaybackStarted)}
    done = next(e for e in seen if isinstance(e, wire.RequestFinished) and e.request_id == last)
    assert last in started and done.audio_s > 2.0


def test_interrupt_barge_in_cancels_what_is_playing(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    with server.client() as ctl:
        events = server.client()
        try:
            first = ctl.speak(sample_text("crypt.txt"))
            _collect(events, lambda e: isinstance(e, wire.PlaybackStarted) and e.request_id == first)
            queued = ctl.speak("This waits its turn.", barge_in="queue")
            urgent = ctl.speak("Stop! Someone is coming.", barge_in="interrupt")
            seen = _collect(events, lambda e: isinstance(e, wire.RequestFinished) and e.request_id == urgent)
        finally:
            events.close()
        with pytest.raises(Exception, match="barge_in"):
            ctl.speak("x", barge_in="sometimes")
    finished = {e.request_id: e for e in seen if isinstance(e, wire.RequestFinished)}
    assert finished[first].status == "cancelled" and finished[queued].status == "cancelled"
    assert finished[urgent].status == "done"
    assert any(isinstance(e, wire.Silenced) and e.request_id == first for e in seen)


def test_a_cut_mid_sound_is_a_raised_cosine_fade_of_fade_ms() -> None:
    """In-process, no device: the callback core cuts a loud tone with the configured fade."""
    import os

    from actors.audio.prebuffer import PrebufferConfig, PrebufferPolicy
    from actors.audio_consumer import ConsumerControl, PlaybackCore
    from shm import PcmRing

    ring = PcmRing.create(f"skald-{os.getpid()}-pcm", 1 << 16, RATE, 2.0, role="producer")
    try:
        consumer = PcmRing.attach(ring.name, "consumer")
        try:
            core = PlaybackCore(consumer, 256, PrebufferPolicy(PrebufferConfig(start_s=0.0, resume_s=0.0)), 8.0)
            sent: list[wire.Message] = []
            control = ConsumerControl(core, sent.append)
            tone = (0.5 * np.sin(2 * np.pi * 220 * np.arange(RATE) / RATE)).astype(np.float32)
            ring.push(tone)
            control.handle(wire.Segment(request_id="a", index=0, start=0, end=len(tone), t_accepted=0.0))
            out = np.zeros(256, dtype=np.int16)
            played = []
            for i in range(8):
                core.render(out, dac_time=i * 256 / RATE)
                played.append(out.copy())
            control.handle(wire.Cancel(request_id="a"))
            for i in range(8, 12):
                core.render(out, dac_time=i * 256 / RATE)
                played.append(out.copy())
            control.poll()
        finally:
            consumer.close()
    finally:
        ring.close()
        ring.unlink()
    audio = np.concatenate(played).astype(np.int32)
    cut = 8 * 256
    fade = int(0.008 * RATE)
    assert np.max(np.abs(audio[cut - 256 : cut])) > 15000  # loud right up to the cut
    assert np.all(audio[cut + fade :] == 0)  # silent after the fade
    ramp = np.abs(audio[cut : cut + fade]).astype(np.float64) / (0.5 * 32767)
    envelope = 0.5 * (1.0 + np.cos(np.pi * np.arange(1, fade + 1) / fade))
    assert np.all(ramp <= envelope + 0.01), "the cut audio exceeds the raised-cosine fade envelope"
    tone_slope = 0.5 * 32767 * 2 * np.pi * 220 / RATE
    assert np.max(np.abs(np.diff(audio[cut - 4 : cut + fade + 4]))) <= 1.05 * tone_slope  # no step at the cut
    silenced = [m for m in sent if isinstance(m, wire.Silenced)]
    assert len(silenced) == 1
    # The end of the fade, by the (simulated) DAC clock of the block that made it.
    assert abs(silenced[0].t_silent - (cut + fade) / RATE) < 1.5 / RATE

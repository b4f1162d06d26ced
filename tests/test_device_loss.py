"""The output device is a part that can fail (issue 14, item 2).

Unit level: ``StreamWatch`` (is the stream dead?) and ``Backoff`` (when to try again), pure logic;
``PcmRing.rewind_read`` (the consumer plays the cut chunk again) on a real shared-memory ring.

Process level, on the PulseAudio rig: a real ``skald serve --sink device`` narrates; the test
unloads the null sink mid-narration (``pactl unload-module``), loads it again under the same name,
and checks from the event timeline and from recordings of the sink before and after: the
``audio_output`` error within 1 s of the unload, ``audio_output_restored`` when the device is
back, the request ``done``, and the recording of the new sink holding the narration from the start
of the chunk the loss cut, to the end, with nothing skipped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from actors import wire
from actors.audio.device_watch import Backoff, StreamWatch
from shm import PcmRing
from tests.audio_rig import STEADY_DEVICE, MonitorRecorder, PulseNullSink, align, pulse_sink  # noqa: F401
from tests.conftest import Server, sample_text
from tests.test_http import EventLog
from tests.test_speech_output import DETERMINISTIC, _window_scores, assert_recording_plays, joined_from_events

RATE = 22050

# --- the detector, without a device ----------------------------------------------------------------


def test_a_stream_that_advances_is_healthy() -> None:
    watch = StreamWatch(stall_s=0.5)
    watch.started(10.0, blocks=0)
    for i in range(1, 200):
        assert watch.check(10.0 + i * 0.01, blocks=i, active=True, finished=False) is None


def test_finished_inactive_and_errors_are_losses_at_once() -> None:
    watch = StreamWatch()
    watch.started(0.0, blocks=5)
    cause = watch.check(0.01, blocks=6, active=True, finished=True)
    assert cause is not None and "finished_callback" in cause
    assert "no longer active" in (watch.check(0.02, blocks=6, active=False, finished=False) or "")
    assert watch.check(0.03, blocks=7, active=True, finished=False, error="boom") == "PortAudio error: boom"


def test_a_stream_that_stops_advancing_is_lost_after_stall_s() -> None:
    watch = StreamWatch(stall_s=0.5)
    watch.started(0.0, blocks=0)
    assert watch.check(0.1, blocks=3, active=True, finished=False) is None
    t = 0.1
    while t < 0.59:  # polled every 10 ms, the counter frozen at 3
        t += 0.01
        assert watch.check(t, blocks=3, active=True, finished=False) is None
    t += 0.02
    cause = watch.check(t, blocks=3, active=True, finished=False)
    assert cause is not None and "stopped advancing" in cause


def test_a_deep_buffer_may_call_back_in_bursts() -> None:
    """No callback for 1 s is no stall while the device still has 1.5 s of audio to play: the
    window starts when what was rendered runs out at the DAC."""
    watch = StreamWatch(stall_s=0.5)
    watch.started(0.0, blocks=10)
    t = 0.0
    while t < 1.99:
        t += 0.01
        assert watch.check(t, blocks=10, active=True, finished=False, played_until=1.5) is None
    assert watch.check(2.02, blocks=10, active=True, finished=False, played_until=1.5) is not None


def test_a_starved_control_loop_does_not_blame_the_device() -> None:
    """The whole process slept 0.8 s (a loaded machine): the callback gets a new window."""
    watch = StreamWatch(stall_s=0.5)
    watch.started(0.0, blocks=0)
    assert watch.check(0.8, blocks=0, active=True, finished=False) is None
    assert watch.check(0.81, blocks=1, active=True, finished=False) is None
    assert watch.check(1.2, blocks=1, active=True, finished=False) is None  # slept 0.39 s itself
    # ... but a callback frozen while this loop keeps polling is a stall, 0.5 s on.
    t = 1.2
    while t < 1.69:
        t += 0.01
        assert watch.check(t, blocks=1, active=True, finished=False) is None
    assert watch.check(1.72, blocks=1, active=True, finished=False) is not None


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.25, cap=2.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    backoff.reset()
    assert backoff.next_delay() == 0.25
    with pytest.raises(ValueError, match="first <= cap"):
        Backoff(first=3.0, cap=2.0)


def test_the_ring_can_be_read_again_down_to_its_rewind_floor() -> None:
    """What the producer cannot have overwritten (capacity - max_fill behind the read index) is
    read again, bit-exact, after ``rewind_read``; below the floor is refused."""
    name = f"skald-test-rewind-{uuid.uuid4().hex[:8]}"
    owner = PcmRing.create(name, 4096, RATE, 1024 / RATE)
    producer = PcmRing.attach(name, "producer")
    consumer = PcmRing.attach(name, "consumer")
    try:
        audio = np.arange(20000, dtype=np.float32)
        out = np.zeros(1024, dtype=np.float32)
        pushed = 0
        while consumer.read_index < 10000:  # the producer keeps the ring full to its guard
            pushed += producer.push(audio[pushed : pushed + 1024])
            got = consumer.read_into(out, 1000)
            consumer.commit_read(consumer.read_index + got)
        pushed += producer.push(audio[pushed:])  # full again: up to read + max_fill
        r = consumer.read_index
        assert consumer.rewind_floor == r - (4096 - 1024)
        with pytest.raises(ValueError, match="rewind_floor"):
            consumer.rewind_read(consumer.rewind_floor - 1)
        consumer.rewind_read(consumer.rewind_floor)
        got = consumer.read_into(out, 1024)
        assert got == 1024 and np.array_equal(out, audio[r - 3072 : r - 2048])
        assert producer.push(audio[pushed : pushed + 10]) == 0, "a read index moved back is less room"
    finally:
        consumer.close()
        producer.close()
        owner.close()
        owner.unlink()


# --- the real thing --------------------------------------------------------------------------------


def _null_sink_module(rig: PulseNullSink) -> str:
    modules = rig.pactl("list", "short", "modules").stdout.splitlines()
    return next(line.split()[0] for line in modules if "module-null-sink" in line and rig.sink_name in line)


def _load_null_sink(rig: PulseNullSink) -> None:
    """The sink again, as the rig made it (same name, rate, no rewinds), and the defaults on it."""
    rig.pactl("load-module", "module-null-sink", f"sink_name={rig.sink_name}", f"rate={rig.rate}", "norewinds=1")
    rig.pactl("set-default-sink", rig.sink_name)
    rig.pactl("set-default-source", rig.monitor_source)


@pytest.mark.device
def test_a_lost_device_is_reported_the_narration_waits_and_resumes_on_its_return(
    make_server: Callable[..., Server],
    pulse_sink: PulseNullSink,  # noqa: F811
) -> None:
    server = make_server("--sink", "device", **DETERMINISTIC, **pulse_sink.env, **STEADY_DEVICE)
    log = EventLog(server)
    recorders: list[MonitorRecorder] = []

    def record() -> MonitorRecorder:
        recorder = MonitorRecorder(rate=RATE, env=pulse_sink.env).start()
        recorders.append(recorder)
        return recorder

    before = record()
    try:
        with server.client() as ctl:
            request_id = ctl.speak(sample_text("crypt.txt"))  # ~30 s of speech in 8 chunks
            log.wait(lambda e: isinstance(e, wire.PlaybackStarted) and e.request_id == request_id)
            # Mid-narration, mid-chunk: 7 s of the recording after the start (chunk 2 or so).
            assert before.wait_for_samples(before.samples_recorded + 7 * RATE, timeout_s=20)
            t_unload = time.monotonic()
            pulse_sink.pactl("unload-module", _null_sink_module(pulse_sink))
            t_error, error = log.wait(lambda e: isinstance(e, wire.Error) and e.kind == "audio_output", timeout=5)
            detect_s = t_error - t_unload
            print(f"audio_output error {detect_s * 1000:.0f} ms after the unload: {error}")
            assert detect_s < 1.0, detect_s
            assert isinstance(error, wire.Error), error
            assert "output device 'default' lost" in error.message or "output device 'pulse' lost" in error.message
            assert "finished_callback" in error.message and "waits" in error.message, error
            heard_before = before.stop()
            # The device stays away for a while (the retries fail: no sink): ~4 s, which puts the
            # reload between the consumer's 4th attempt (3.75 s after the loss) and its 5th (5.75
            # s: the backoff is at its 2-s cap), so the recorder of the new sink is running before
            # the narration resumes on it.
            time.sleep(max(0.0, t_error + 4.1 - time.monotonic()))
            _load_null_sink(pulse_sink)
            after = record()
            t_back, back = log.wait(lambda e: isinstance(e, wire.AudioOutputRestored), timeout=10)
            assert isinstance(back, wire.AudioOutputRestored) and back.held, back
            print(f"restored {t_back - t_unload:.2f} s after the unload: {back}")
            _, finished = log.finished(request_id, timeout=120)
            assert after.wait_for_samples(after.samples_recorded + int(0.3 * RATE))
            heard_after = after.stop()
        assert finished.status == "done", finished
        assert len(log.of(request_id, wire.PlaybackStarted)) == 1
        errors = [e for e in log.messages() if isinstance(e, wire.Error)]
        for e in errors:
            print("error event:", e.kind, e.message)
        assert [e.kind for e in errors] == ["audio_output"], [e.message for e in errors]  # one loss, nothing else

        reference = joined_from_events(log.messages(), request_id, RATE)
        starts = sorted(
            (e.index, e.span.out_start) for _, e in log.of(request_id, wire.ChunkSynthesized) if e.span is not None
        )
        # What the old sink played: the reference from its start, faithfully, up to `heard`.
        head = reference[: 3 * RATE]
        offset, score = align(head, heard_before, RATE)
        assert score >= 0.98, score
        heard = len(heard_before) - offset  # reference frames the old sink got before it went
        assert heard > 4 * RATE
        scores = _window_scores(reference[: heard - int(0.2 * RATE)], heard_before, offset, RATE)
        assert min(s for _, s in scores) >= 0.95
        # What the new sink played: the narration from the start of a chunk, to its end, whole.
        # The chunk is the one the loss cut: it starts no later than what the old sink played
        # (nothing skipped) and is the last chunk that does, give or take the audio that was still
        # in the device buffer at the loss.
        candidates = [(i, s) for i, s in starts if s <= heard + int(0.1 * RATE)][-2:]
        results = []
        for index, start in candidates:
            at, match = align(reference[start:], heard_after, RATE)
            results.append((match, index, start, at))
        match, index, start, at = max(results)
        print(f"old sink heard {heard / RATE:.2f} s; the new one plays from chunk {index} at {start / RATE:.2f} s")
        assert_recording_plays(reference[start:], heard_after, RATE, min_windows=50)
        replayed = (heard - start) / RATE
        assert -0.1 <= replayed <= 9.0, replayed  # at most the one chunk the loss cut
        assert abs(back.replayed_s - replayed) < 0.5, (back.replayed_s, replayed)
        # The recorder was running before the narration resumed: it begins with silence.
        assert at > int(0.02 * RATE)
    finally:
        for recorder in recorders:
            recorder.stop()  # idempotent
        if pulse_sink.sink_name not in pulse_sink.pactl("list", "short", "sinks").stdout:
            _load_null_sink(pulse_sink)  # a failure between unload and reload: the next test needs it
        log.close()

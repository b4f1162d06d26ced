"""The stage tee (issue 13, part 1): the audio consumer pushes exactly what it renders into a
second SPSC ring for the web actor, and never waits on it.

In-process, with real shared-memory rings and the real ``PlaybackCore``: blocks are rendered by
hand, the tee is read as the web actor reads it, and compared with the device output. The
end-to-end path (``skald serve --http``, browsers) is in ``tests/test_webrtc.py``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from actors import wire
from actors.audio.output import float_to_int16
from actors.audio_consumer import TEE_DROPPED, TEE_FRAMES
from shm import PcmRing
from tests.support.untraced import allocations
from tests.test_consumer_output import BLOCK, RATE, rig, tone


def _tee_ring(seconds: float = 1.0) -> tuple[PcmRing, PcmRing]:
    """(owner, producer handle) of a tee ring; the caller attaches a consumer when it wants one."""
    owner = PcmRing.create(f"skald-{os.getpid()}-tee", int(seconds * RATE), RATE, seconds)
    return owner, PcmRing.attach(owner.name, "producer")


@contextlib.contextmanager
def _feeding(on_frame: Callable[[bytes], None], feed_class: Any = None) -> Iterator[tuple[PcmRing, Any]]:
    """A tee ring (2 s) read by a started ``StageFeed`` (or ``feed_class``): (producer handle, feed);
    all closed after."""
    from actors.web.webrtc import StageFeed

    owner, producer = _tee_ring(seconds=2.0)
    reader = PcmRing.attach(owner.name, "consumer")
    feed = (feed_class or StageFeed)(reader, on_frame)
    try:
        feed.start()
        yield producer, feed
    finally:
        feed.stop()
        reader.close()
        producer.close()
        owner.close()
        owner.unlink()


def test_the_tee_carries_exactly_what_the_device_plays_fades_cuts_and_silence() -> None:
    """Idle blocks, a tone, a cancel in mid-sound (the fade), and idle again: the tee holds every
    rendered frame, in order, and equals the device output (int16) sample for sample."""
    owner, producer = _tee_ring()
    reader = PcmRing.attach(owner.name, "consumer")
    try:
        with rig() as r:
            r.core.tee = producer
            idle = r.render(4)
            r.play(tone(440.0, 0.5), request_id="a")
            playing = r.render(20)
            r.control.handle(wire.Cancel(request_id="a"))
            after = r.render(20)
            device = np.concatenate([idle, playing, after])
            n = reader.write_index - reader.read_index
            tee = np.zeros(n, dtype=np.float32)
            assert reader.read_into(tee, n) == n
            assert n == len(device) == 44 * BLOCK
            np.testing.assert_array_equal(float_to_int16(tee), device)
            assert not np.any(tee[: 4 * BLOCK]), "idle blocks are silence on the tee too"
            cut = int(np.flatnonzero(device)[-1])
            assert cut < 24 * BLOCK + int(0.010 * RATE), "the cancel's fade ends on the tee as on the device"
            assert int(r.core.stats[TEE_FRAMES]) == n and int(r.core.stats[TEE_DROPPED]) == 0
    finally:
        reader.close()
        producer.close()
        owner.close()
        owner.unlink()


def test_a_full_tee_drops_for_the_web_side_only_and_never_allocates() -> None:
    """Nobody reads the tee (the web actor is stopped): it fills, then every further block is
    dropped and counted, while the device output stays the full tone, and the callback allocates
    nothing for it."""
    owner, producer = _tee_ring(seconds=0.1)  # 2205 frames, rounded up to a 4096-frame ring
    try:
        with rig() as r:
            r.core.tee = producer
            x = tone(440.0, 1.0)
            r.play(x, last=False)
            out = np.zeros(BLOCK, dtype=np.int16)
            played = []
            for i in range(4):  # warm up every path once
                r.core.render(out, dac_time=i * 0.01)
                played.append(out.copy())
            with allocations() as allocated:
                for i in range(58):
                    r.core.render(out, dac_time=i * 0.01)
            played.append(out.copy())
            # Same bounds as the consumer's own no-allocation test: numpy view headers, no buffers.
            assert allocated.peak < 2048 and allocated.current < 256, allocated
            np.testing.assert_array_equal(played[-1], float_to_int16(x[61 * BLOCK : 62 * BLOCK]))
            max_fill = round(0.1 * RATE)
            assert int(r.core.stats[TEE_FRAMES]) == max_fill
            assert int(r.core.stats[TEE_DROPPED]) == 62 * BLOCK - max_fill
    finally:
        producer.close()
        owner.close()
        owner.unlink()


def test_stage_feed_sends_20ms_frames_of_the_tee_at_their_dac_time_never_before() -> None:
    """The web side of the tee: 0.45 s pushed at once (a device with a deep buffer asking for a
    burst; beyond ``LIVE_WINDOW_S`` it would count as a stalled web side) goes out as 20 ms frames
    of 48 kHz s16 paced by the published clock: frame k leaves no earlier than k × 20 ms after
    frame 0 (the device plays them 20 ms apart), never as a burst, and carries the tee's tone."""
    import threading
    import time

    from actors.web.webrtc import FRAME_SAMPLES, OPUS_RATE

    sent: list[tuple[float, bytes]] = []
    enough = threading.Event()

    def on_frame(frame: bytes) -> None:
        sent.append((time.monotonic(), frame))
        if len(sent) >= 18:
            enough.set()

    with _feeding(on_frame) as (producer, _feed):
        x = tone(440.0, 0.45)
        epoch = time.monotonic() + 0.05  # the device plays tee frame 0 50 ms from now
        producer.publish_clock(int(epoch * 1e9))
        assert producer.push(x) == len(x)
        assert enough.wait(30.0), f"only {len(sent)} frames"
    frames = [np.frombuffer(f, dtype="<i2") for _, f in sent[:18]]
    assert all(len(f) == FRAME_SAMPLES for f in frames)
    # Frame k is played at epoch + k x 20 ms; the feed sends it ahead of that by its lead, which is
    # at most how far ahead of the DAC the audio was when read (50 ms here). Measured against the
    # published clock, not against frame 0's send time: frame 0 goes out as soon as it is made, so
    # any delay in making it (a busy machine) made frame 1 look early by that much.
    for k, (t, _) in enumerate(sent[:18]):
        due = epoch + k * FRAME_SAMPLES / OPUS_RATE - 0.050
        assert t >= due - 0.002, f"frame {k} left {1000 * (due - t):.1f} ms ahead of the device's clock"
    audio = np.concatenate(frames[2:17]).astype(np.float64) / 32767.0
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak_hz = np.argmax(spectrum) * OPUS_RATE / len(audio)
    assert abs(peak_hz - 440.0) < 5.0 and 0.45 < np.max(np.abs(audio)) < 0.55


def test_stage_feed_counts_frames_that_leave_after_their_due_time() -> None:
    """Frames whose DAC time has already passed when they reach the tee (the consumer rendered
    them late) go out at once, counted as late: what a browser's jitter buffer may conceal."""
    import threading
    import time

    sent: list[float] = []
    enough = threading.Event()

    def on_frame(_frame: bytes) -> None:
        sent.append(time.monotonic())
        if len(sent) >= 10:
            enough.set()

    with _feeding(on_frame) as (producer, feed):
        producer.publish_clock(int((time.monotonic() - 0.3) * 1e9))  # tee frame 0 played 0.3 s ago
        x = tone(440.0, 0.3)
        assert producer.push(x) == len(x)
        assert enough.wait(30.0), f"only {len(sent)} frames"
    assert feed.late_frames >= 10 and feed.max_late_ms >= 250.0, (feed.late_frames, feed.max_late_ms)


def test_listeners_encode_each_frame_once_and_every_track_gets_the_same_opus_packets() -> None:
    """The fan-out (issue 13): with two listeners, every 20 ms frame of the stage is Opus-encoded
    once, and both tracks yield the same packets as ``av.Packet`` (aiortc only packs them into RTP)
    with continuous 48 kHz timestamps; decoded, they are the stage's tone."""
    import asyncio

    import av

    from actors.web.webrtc import FRAME_SAMPLES, OPUS_RATE, Listener, Listeners, _listener_track_class
    from config.settings import Settings

    loop = asyncio.new_event_loop()
    try:
        listeners = Listeners(Settings(), loop, loopback=True)
        tracks = [_listener_track_class()() for _ in range(2)]
        for i, track in enumerate(tracks):
            listeners.sessions[f"s{i}"] = Listener(f"s{i}", None, track)
        t = np.arange(30 * FRAME_SAMPLES) / OPUS_RATE
        pcm = np.round(0.5 * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype("<i2")
        got: list[list[Any]] = [[], []]
        for k in range(30):
            listeners.push_threadsafe(pcm[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES].tobytes())
            loop.run_until_complete(asyncio.sleep(0))  # the fan-out, scheduled from the feed thread
            for i, track in enumerate(tracks):
                got[i].append(loop.run_until_complete(track.recv()))
        assert listeners.opus is not None and listeners.opus.packets == 30, "one encode per frame, not per listener"
        assert all(isinstance(p, av.Packet) for p in got[0] + got[1])
        assert [bytes(p) for p in got[0]] == [bytes(p) for p in got[1]]
        assert [p.pts for p in got[0]] == [k * FRAME_SAMPLES for k in range(30)]
        assert listeners.metrics()["opus_packets"] == 30
        assert listeners.metrics()["fanout_lag_ms_max"] >= 0.0  # each packet's wait for the loop, measured
        decoder: Any = av.CodecContext.create("libopus", "r")
        decoder.layout, decoder.sample_rate = "mono", OPUS_RATE
        decoded = np.concatenate([f.to_ndarray().ravel() for p in got[0] for f in decoder.decode(p)])
        assert len(decoded) == 30 * FRAME_SAMPLES
        x = decoded[FRAME_SAMPLES:].astype(np.float64)  # past the codec's start-up
        x = x / 32767.0 if decoded.dtype == np.int16 else x
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        assert abs(np.argmax(spectrum) * OPUS_RATE / len(x) - 440.0) < 5.0
        assert 0.4 < np.max(np.abs(x)) < 0.6
        for track in tracks:
            track.end()
    finally:
        loop.close()


def test_no_listener_no_encoding() -> None:
    """A stage nobody listens to costs no Opus encoding."""
    import asyncio

    from actors.web.webrtc import FRAME_SAMPLES, Listeners
    from config.settings import Settings

    loop = asyncio.new_event_loop()
    try:
        listeners = Listeners(Settings(), loop, loopback=True)
        listeners.push_threadsafe(bytes(2 * FRAME_SAMPLES))
        assert listeners.opus is None and "opus_packets" not in listeners.metrics()
    finally:
        loop.close()


def test_a_frame_that_fails_is_counted_and_the_feed_goes_on() -> None:
    """One listener-side failure (here: ``on_frame`` raising for frames 3 and 4) costs the
    listeners those frames, not the feed: every later frame still goes out, and the failures are
    counted for ``skald status``."""
    import threading

    handed: list[int] = []
    enough = threading.Event()

    def on_frame(_frame: bytes) -> None:
        handed.append(len(handed))
        if len(handed) in (4, 5):
            raise RuntimeError("a listener-side failure")
        if len(handed) >= 12:
            enough.set()

    with _feeding(on_frame) as (producer, feed):
        x = tone(440.0, 0.3)
        assert producer.push(x) == len(x)
        assert enough.wait(30.0), f"the feed stopped after {len(handed)} frames"
    assert feed.frame_errors == 2 and feed.restarts == 0, (feed.frame_errors, feed.restarts)


def test_a_feed_loop_that_fails_starts_again_at_the_live_point() -> None:
    """Should the feed's loop itself fail, it is started again with the tee cleared, and frames go
    out again. No real input makes soxr or the ring fail here, so the failure is the loop's first
    run raising (a subclass in this test only)."""
    import threading

    from actors.web.webrtc import StageFeed

    class FailsOnce(StageFeed):
        def _feed(self) -> None:
            if self.restarts == 0:
                raise OSError("the first run fails")
            super()._feed()

    got = threading.Event()
    with _feeding(lambda _frame: got.set(), FailsOnce) as (producer, feed):
        while not got.is_set():  # until the restarted loop hands a frame out
            producer.push(tone(440.0, 0.05))
            got.wait(0.05)
        assert feed.restarts == 1 and feed.frames_out >= 1


def test_a_frame_libopus_fails_on_is_lost_alone_and_the_encoder_is_made_afresh() -> None:
    """A frame that fails to encode raises to the feed (which counts it) and is lost; the encoder
    is opened afresh and the next frame reaches every track, timestamps in place."""
    import asyncio

    import pytest

    from actors.web.webrtc import FRAME_SAMPLES, Listener, Listeners, _listener_track_class
    from config.settings import Settings

    loop = asyncio.new_event_loop()
    try:
        listeners = Listeners(Settings(), loop, loopback=True)
        track = _listener_track_class()()
        listeners.sessions["s"] = Listener("s", None, track)
        with pytest.raises(ValueError, match="need 1920 bytes"):
            listeners.push_threadsafe(b"\x00" * 10)  # a short frame: PyAV refuses it
        listeners.push_threadsafe(bytes(2 * FRAME_SAMPLES))
        loop.run_until_complete(asyncio.sleep(0))
        packet = loop.run_until_complete(track.recv())
        assert len(bytes(packet)) > 0 and packet.pts == 0
        metrics = listeners.metrics()
        assert metrics["opus_encode_errors"] == 1 and metrics["opus_packets"] == 1, metrics
        track.end()
    finally:
        loop.close()

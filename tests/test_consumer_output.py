"""The audio consumer's output stage, in-process: ``PlaybackCore.render`` reads float32 from the
ring, fades cuts in float, upsamples when the device runs at a multiple of the ring rate, and
converts with ``Int16Converter`` (rounding, optional TPDF dither) — with no allocation.

No device here: blocks are rendered by hand with a simulated DAC clock, so every output sample
can be compared with what ``actors.audio.output`` says it must be, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest

from actors import wire
from actors.audio.output import IntegerUpsampler, float_to_int16
from actors.audio.prebuffer import PrebufferConfig, PrebufferPolicy
from actors.audio_consumer import ConsumerControl, PlaybackCore
from shm import PcmRing
from tests.support.untraced import allocations

RATE = 22050
BLOCK = 256


@dataclass
class Rig:
    producer: PcmRing
    core: PlaybackCore
    control: ConsumerControl
    sent: list[wire.Message] = field(default_factory=list)
    blocks: int = 0

    def play(self, audio: np.ndarray, request_id: str = "a", last: bool = True) -> None:
        start = self.producer.write_index
        assert self.producer.push(audio.astype(np.float32)) == len(audio)
        self.control.handle(
            wire.Segment(request_id=request_id, index=0, start=start, end=start + len(audio), last=last)
        )

    def render(self, n_blocks: int) -> np.ndarray:
        """``n_blocks`` callbacks of BLOCK ring frames; the device output, concatenated."""
        up = self.core.upsample
        out = np.zeros(BLOCK * up, dtype=np.int16)
        parts = []
        for _ in range(n_blocks):
            self.core.render(out, dac_time=self.blocks * BLOCK / RATE)
            parts.append(out.copy())
            self.blocks += 1
            self.control.poll()
        return np.concatenate(parts)


@contextmanager
def rig(upsample: int = 1, dither: bool = False, fade_ms: float = 8.0, blocksize: int = BLOCK) -> Iterator[Rig]:
    ring = PcmRing.create(f"skald-{os.getpid()}-out", 1 << 17, RATE, 4.0, role="producer")
    try:
        consumer = PcmRing.attach(ring.name, "consumer")
        try:
            policy = PrebufferPolicy(PrebufferConfig(start_s=0.0, resume_s=0.0))
            core = PlaybackCore(consumer, blocksize, policy, fade_ms, upsample=upsample, dither=dither, dither_seed=1)
            r = Rig(ring, core, ConsumerControl(core, lambda m: None))
            r.control.send = r.sent.append
            yield r
        finally:
            consumer.close()
    finally:
        ring.close()
        ring.unlink()


def _fade_ramp(n: int) -> np.ndarray:
    """The consumer's cut fade: raised cosine from 1 to 0 over ``n`` frames (last frame 0)."""
    return (0.5 * (1.0 + np.cos(np.pi * np.arange(1, n + 1) / n))).astype(np.float32)


def tone(freq_hz: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq_hz * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


def test_output_is_rounded_not_truncated() -> None:
    """Values 0.6 LSB above a step come out on the next step up (the ring's own int16 read
    truncates toward zero); the whole output is exactly ``float_to_int16`` of the input."""
    x = ((np.arange(-3000, 3000) + 0.6) / 32767.0).astype(np.float32)
    with rig() as r:
        r.play(x)
        y = r.render(len(x) // BLOCK + 3)
    np.testing.assert_array_equal(y[: len(x)], float_to_int16(x))
    truncated = np.trunc(x.astype(np.float64) * 32767.0).astype(np.int16)
    assert np.mean(y[: len(x)] != truncated) > 0.45  # every positive value differs from truncation
    assert not np.any(y[len(x) :])


def test_dither_makes_the_error_tpdf() -> None:
    """``dither=True``: the error of a constant 0.25 LSB off a step has mean 0 and variance 1/4 LSB²
    (without dither it is a constant -0.25 LSB)."""
    x = np.full(RATE, 1000.25 / 32767.0, dtype=np.float32)
    for dither in (False, True):
        with rig(dither=dither) as r:
            r.play(x)
            y = r.render(len(x) // BLOCK)[: (len(x) // BLOCK) * BLOCK].astype(np.float64)
        err = y - 1000.25
        if dither:
            assert abs(err.mean()) < 0.02 and abs(err.var() - 0.25) < 0.02, (err.mean(), err.var())
            assert np.abs(err).max() <= 1.5
        else:
            assert np.all(err == -0.25)


@pytest.mark.parametrize("factor", [2, 3])
def test_upsampled_output_is_the_upsampler_output_and_rings_out(factor: int) -> None:
    """Through an upsampling core, the device output is exactly ``IntegerUpsampler`` of the ring
    audio (then rounded), block after block; after the request ends, idle callbacks let the
    filter ring out (its last taps are played, not cut off), then the output is digital zero."""
    x = tone(440.0, 0.5) + tone(3100.0, 0.5, 0.2)
    with rig(upsample=factor) as r:
        assert r.core.device_rate == RATE * factor
        r.play(x)
        n_blocks = len(x) // BLOCK + 4
        y = r.render(n_blocks)
    expected = float_to_int16(IntegerUpsampler(factor).process(np.concatenate([x, np.zeros(4 * BLOCK, np.float32)])))
    np.testing.assert_array_equal(y, expected[: len(y)])
    delay = IntegerUpsampler(factor).delay_frames_out
    assert np.any(y[len(x) * factor : len(x) * factor + delay])  # the filter tail was played
    assert not np.any(y[(len(x) + 2 * BLOCK) * factor :])


def test_a_cut_fades_with_a_raised_cosine_when_upsampling() -> None:
    """A cancel mid-tone at 2×: the device output is the upsampled tone with the fade applied at
    the ring rate — exactly — so it falls within the raised-cosine fade of ``fade_ms`` (plus the filter's
    few-sample smoothing), has no step at the cut, is digital silence after it, and the reported
    silence time includes the filter's delay."""
    factor = 2
    x = tone(220.0, 1.0)
    with rig(upsample=factor) as r:
        r.play(x, last=False)
        y = r.render(8)
        r.control.handle(wire.Cancel(request_id="a"))
        y = np.concatenate([y, r.render(6)])
        silenced = [m for m in r.sent if isinstance(m, wire.Silenced)]
        delay_s = r.core.output_delay_s
    cut = 8 * BLOCK
    fade = int(0.008 * RATE)
    ramp = _fade_ramp(fade)
    faded = np.zeros(14 * BLOCK, np.float32)
    faded[:cut] = x[:cut]
    faded[cut : cut + fade] = x[cut : cut + fade] * ramp
    expected = float_to_int16(IntegerUpsampler(factor).process(faded))
    np.testing.assert_array_equal(y, expected)
    up = IntegerUpsampler(factor)
    d = up.delay_frames_out
    audio = y.astype(np.float64)
    c = cut * factor + d  # where the cut is centred in the output
    assert np.max(np.abs(audio[c - factor * BLOCK : c])) > 15000  # loud right up to the cut
    assert not np.any(y[c + fade * factor + d + factor :])  # silent once the fade has left the filter
    envelope = np.interp(np.arange(fade * factor) / factor, np.arange(fade), _fade_ramp(fade))
    smear = up.taps_per_phase  # the filter spreads the ramp's corner by a few output samples
    level = np.abs(audio[c : c + fade * factor]) / (0.5 * 32767)
    assert np.all(level[smear:] <= envelope[smear:] + 0.01), "the cut audio exceeds the fade envelope"
    slope = 0.5 * 32767 * 2 * np.pi * 220 / (RATE * factor)  # the tone's largest step per output sample
    assert np.max(np.abs(np.diff(audio[c - 16 : c + fade * factor + 2 * d]))) <= 1.05 * slope
    assert len(silenced) == 1
    assert silenced[0].t_silent == pytest.approx((cut + fade) / RATE + delay_s, abs=1.5 / RATE)


@pytest.mark.parametrize("factor", [1, 2])
def test_a_fade_longer_than_the_block_goes_on_in_the_next_block(factor: int) -> None:
    """128-frame blocks (the default) and an 8 ms fade (176 frames at 22.05 kHz; the default is 4 ms).
    The ramp is played whole across two callbacks, down to zero — not cut at the end of the
    block where it began (a step of a quarter of the signal: a click)."""
    block = 128
    x = tone(220.0, 1.0)
    with rig(upsample=factor, blocksize=block) as r:
        r.play(x, last=False)
        out = np.zeros(block * factor, dtype=np.int16)
        parts = []
        for i in range(20):
            if i == 12:
                r.control.handle(wire.Cancel(request_id="a"))
            r.core.render(out, dac_time=i * block / RATE)
            parts.append(out.copy())
            r.control.poll()
        silenced = [m for m in r.sent if isinstance(m, wire.Silenced)]
        delay_s = r.core.output_delay_s
    y = np.concatenate(parts)
    cut, fade = 12 * block, int(0.008 * RATE)
    assert fade > block
    faded = np.zeros(20 * block, np.float32)
    faded[:cut] = x[:cut]
    faded[cut : cut + fade] = x[cut : cut + fade] * _fade_ramp(fade)
    expected = float_to_int16(IntegerUpsampler(factor).process(faded))
    np.testing.assert_array_equal(y, expected)
    assert len(silenced) == 1
    assert silenced[0].t_silent == pytest.approx((cut + fade) / RATE + delay_s, abs=1.5 / RATE)


def test_dac_times_include_the_filter_delay() -> None:
    """With upsampling a ring frame is heard ``output_delay_s`` after its block starts playing:
    TTFA and cancel-to-silence come from these times."""
    for factor in (1, 2):
        with rig(upsample=factor) as r:
            r.render(2)  # idle blocks first
            r.play(tone(440.0, 0.1))
            r.render(3)
            delay = r.core.output_delay_s
            assert r.core.dac_time_of(0) == pytest.approx(2 * BLOCK / RATE + delay)
            assert r.core.dac_time_of(300) == pytest.approx((2 * BLOCK + 300) / RATE + delay)
        assert (delay == 0.0) == (factor == 1)
        assert factor == 1 or delay == pytest.approx(IntegerUpsampler(factor).delay_s(RATE))


def test_render_allocates_no_sample_buffers() -> None:
    """Playing, cutting and idle callbacks, with upsampling and dither: 600 renders of 1024-frame
    blocks raise the traced peak by less than an int16 copy of one block would (2 KiB; a float32
    one is 4 KiB, an upsampled one 8 KiB or more) and leave nothing behind. (What is traced is
    small Python objects: views, ints, the ring's own bookkeeping — about 1 KiB.)"""
    block = 1024
    for factor, dither in ((1, False), (2, True), (3, False)):
        with rig(upsample=factor, dither=dither, blocksize=block) as r:
            out = np.zeros(block * factor, dtype=np.int16)
            r.play(tone(330.0, 3.5), last=False)
            for i in range(4):  # warm up every path once
                r.core.render(out, dac_time=i * 0.01)
            with allocations() as playing:
                for i in range(200):  # playing, then underrunning (more audio is expected)
                    r.core.render(out, dac_time=i * 0.01)
            r.control.handle(wire.Cancel(request_id="a"))  # (control allocates; the callback must not)
            with allocations() as cut:
                for i in range(400):  # the cut with its fade, the filter tail, then idle
                    r.core.render(out, dac_time=i * 0.01)
        assert playing.peak < 2048 and cut.peak < 2048, (factor, playing.peak, cut.peak)
        assert playing.current < 256 and cut.current < 256, (factor, playing.current, cut.current)


def test_render_takes_whole_upsampled_blocks_only() -> None:
    with rig(upsample=2) as r, pytest.raises(ValueError, match="not a multiple of 2"):
        r.core.render(np.zeros(2 * BLOCK + 1, np.int16), 0.0)

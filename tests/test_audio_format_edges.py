"""Edge cases of format conversion (seed §1.8) that tests/test_dsp.py leaves out: empty and odd-length
input, bad scratch sizes and filter designs, low-attenuation upsampler designs, resampling ratios
and rate checks, and the streaming resampler's same-rate path, bad qualities, flush and reset.
"""

from __future__ import annotations

import numpy as np
import pytest

from actors.audio.output import Int16Converter, IntegerUpsampler, float_to_int16
from actors.audio.pcm import EMPTY, DspError, check_any_rate
from actors.audio.resample import Resampler, resample

# ------------------------------------------------------------------------------------------------
# float32 → int16


def test_empty_input_converts_to_nothing_and_writes_nothing() -> None:
    assert float_to_int16(np.zeros(0, np.float32)).shape == (0,)
    assert float_to_int16([]).dtype == np.int16
    out = np.full(3, 7, np.int16)
    Int16Converter(4).convert(np.zeros(0, np.float32), out)
    assert out.tolist() == [7, 7, 7]


@pytest.mark.parametrize("scratch", [1, 2, 3, 5])
def test_odd_lengths_through_any_scratch_size_convert_every_sample(scratch: int) -> None:
    x = np.array([0.5, -0.5, np.nan, np.inf, -np.inf, 2.0, -2.0], np.float32)  # 7: odd, > scratch
    out = np.full(8, 99, np.int16)
    Int16Converter(scratch).convert(x, out)
    assert out.tolist() == [16384, -16384, 0, 32767, -32768, 32767, -32768, 99]  # out[7] untouched


def test_two_dimensional_input_is_flattened_by_the_whole_array_form() -> None:
    assert float_to_int16(np.array([[0.25], [-0.25]], np.float32)).tolist() == [8192, -8192]


@pytest.mark.parametrize("bad", [0, -1])
def test_converter_scratch_must_hold_a_frame(bad: int) -> None:
    with pytest.raises(DspError, match=f"max_frames = {bad}: must be at least 1"):
        Int16Converter(bad)


def test_converter_refuses_a_float_output() -> None:
    with pytest.raises(DspError, match="out must be int16 with at least 2 frames, got float32"):
        Int16Converter(4).convert(np.zeros(2, np.float32), np.zeros(2, np.float32))


def test_dither_moves_no_sample_more_than_one_step() -> None:
    x = np.linspace(-0.99, 0.99, 10_001, dtype=np.float32)
    plain = float_to_int16(x).astype(np.int32)
    dithered = float_to_int16(x, dither=True, seed=42).astype(np.int32)
    assert np.abs(dithered - plain).max() == 1  # it does move samples, by one step at most
    np.testing.assert_array_equal(dithered, float_to_int16(x, dither=True, seed=42))  # seeded: repeatable


# ------------------------------------------------------------------------------------------------
# Whole-factor upsampling: arguments and designs


def test_upsampler_rejects_bad_scratch_and_designs() -> None:
    with pytest.raises(DspError, match="max_frames = 0: must be at least 1"):
        IntegerUpsampler(2, max_frames=0)
    with pytest.raises(DspError, match=r"passband 0.5 < stopband 0.45 \(× the input rate\) must lie in \(0, factor"):
        IntegerUpsampler(2, passband=0.5, stopband=0.45)
    with pytest.raises(DspError, match=r"passband 0\.0 < stopband"):
        IntegerUpsampler(2, passband=0.0)
    with pytest.raises(DspError, match=r"passband 0\.45 < stopband 1\.1"):
        IntegerUpsampler(2, stopband=1.1)  # above factor / 2
    for atten in (19.0, 161.0):
        with pytest.raises(DspError, match=f"stopband attenuation {atten} dB must be between 20 and 160 dB"):
            IntegerUpsampler(2, atten_db=atten)


@pytest.mark.parametrize("atten_db", [20.0, 30.0, 50.0, 80.0])
def test_every_kaiser_design_range_passes_dc_at_unit_gain_with_fewer_taps_for_less_attenuation(
    atten_db: float,
) -> None:
    # Kaiser's beta has three formulas (<21 dB, 21-50 dB, >50 dB): each design keeps the level,
    # within its own ripple (a design down by A dB ripples by about 10^(-A/20)).
    up = IntegerUpsampler(3, atten_db=atten_db)
    y = up.process(np.full(600, 0.5, np.float32))
    np.testing.assert_allclose(y[3 * 200 :], 0.5, atol=0.5 * 10 ** (-atten_db / 20))
    assert len(up.taps) == 3 * up.taps_per_phase - 1
    if atten_db < 80.0:
        assert up.taps_per_phase < IntegerUpsampler(3, atten_db=80.0).taps_per_phase


def test_upsampler_of_empty_input_writes_nothing() -> None:
    up = IntegerUpsampler(2)
    out = np.full(4, 9.0, np.float32)
    assert up.process_into(np.zeros(0, np.float32), out) == 0
    assert out.tolist() == [9.0] * 4
    assert up.frames_in == 0


# ------------------------------------------------------------------------------------------------
# Resampling: ratios, rates, the streaming resampler


@pytest.mark.parametrize(
    ("rin", "rout"),
    [(16000, 48000), (22050, 44100), (22050, 48000), (24000, 16000), (24000, 48000), (48000, 8000)],
)
def test_resample_ratio_sets_the_length_and_keeps_a_tone(rin: int, rout: int) -> None:
    n = rin  # one second
    t = np.arange(n) / rin
    x = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    y = resample(x, rin, rout)
    assert y.dtype == np.float32
    assert abs(len(y) - n * rout / rin) <= 1
    # The same tone at the new rate (away from the edges, where the filter starts and stops).
    ty = np.arange(len(y)) / rout
    want = 0.5 * np.sin(2 * np.pi * 440.0 * ty)
    inner = slice(len(y) // 10, -len(y) // 10)
    np.testing.assert_allclose(y[inner], want[inner], atol=2e-3)


def test_resample_at_the_same_rate_returns_a_copy() -> None:
    x = np.linspace(-1, 1, 101, dtype=np.float32)
    y = resample(x, 22050, 22050)
    np.testing.assert_array_equal(y, x)
    y[0] = 5.0
    assert x[0] == -1.0, "the input must not be aliased by the result"


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        ("22050", "output rate '22050' is not a number"),
        (True, "output rate True is not a number"),
        (None, "output rate None is not a number"),
        (float("nan"), "output rate nan Hz is not a whole rate between 8000 and 192000 Hz"),
        (22050.5, "output rate 22050.5 Hz is not a whole rate"),
        (7999, "output rate 7999 Hz is not a whole rate"),
        (192001, "output rate 192001 Hz is not a whole rate"),
    ],
)
def test_resampler_endpoint_rates_are_checked(rate: object, message: str) -> None:
    with pytest.raises(DspError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_any_rate(rate, "output rate")
    with pytest.raises(DspError, match="output rate"):
        resample(np.zeros(10, np.float32), 22050, rate)  # type: ignore[arg-type]


def test_resampler_endpoints_take_device_and_codec_rates() -> None:
    for rate in (8000, 44100, 48000, 192000, np.int32(48000), 44100.0):
        assert check_any_rate(rate, "rate") == int(rate)


def test_resampler_with_an_unknown_quality_names_rates_and_quality() -> None:
    with pytest.raises(DspError, match=r"resampler 22050 -> 48000 Hz \(ULTRA\)"):
        Resampler(22050, 48000, quality="ULTRA")


def test_same_rate_resampler_passes_blocks_through_without_delay() -> None:
    rs = Resampler(24000, 24000)
    x = np.linspace(-0.5, 0.5, 77, dtype=np.float32)
    np.testing.assert_array_equal(rs.process(x), x)
    assert rs.delay_frames == 0.0
    assert (rs.frames_in, rs.frames_out) == (77, 77)
    assert rs.flush() is EMPTY
    assert (rs.frames_in, rs.frames_out) == (0, 0)
    rs.process(x)
    rs.reset()
    assert (rs.frames_in, rs.frames_out) == (0, 0)


def test_reset_drops_what_is_in_the_filter() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(4000) * 0.3).astype(np.float32)
    fresh = Resampler(22050, 48000)
    want = np.concatenate([fresh.process(x), fresh.flush()])
    rs = Resampler(22050, 48000)
    rs.process((rng.standard_normal(3000) * 0.3).astype(np.float32))  # a cancelled stream
    rs.reset()
    assert (rs.frames_in, rs.frames_out) == (0, 0)
    got = np.concatenate([rs.process(x), rs.flush()])
    np.testing.assert_array_equal(got, want)  # nothing of the cancelled stream is left

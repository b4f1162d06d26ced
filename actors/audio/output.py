"""The callback side: float32 → int16 and whole-factor upsampling, without allocating.

What the audio consumer's callback runs after reading the ring (``PlaybackCore``): the cut fade,
then ``IntegerUpsampler`` when the device runs at a whole multiple of the ring rate, then
``Int16Converter`` into the device's buffer. numpy only — no soxr, no engine: the consumer
process imports this module, and a test checks that nothing heavy comes with it.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from actors.audio.pcm import Audio, DspError

__all__ = ["Int16Converter", "IntegerUpsampler", "float_to_int16"]

# Rows per matmul in IntegerUpsampler (one shape for every product, see process_into): a
# 128-frame callback block is four products.
_ROW_TILE = 32


# ------------------------------------------------------------------------------------------------
# float32 → int16


class Int16Converter:
    """float32 → int16 for the audio callback, without allocating: scale by 32767, optional TPDF
    dither, round to nearest, clip to [-32768, 32767] (never wrap), NaN → 0.

    This is skald's one float → int16 conversion (the ring carries float32; nothing else
    converts). NaN becomes 0, silence, because a NaN sample carries no level at all: any other
    value is an invented one, and the full-scale values a bare cast or clip give (-32768 or
    +32767) are a click at the loudest the device can play. ±inf keep their sign and clip to full
    scale like any other overload.

    All scratch memory is allocated here, once; ``convert`` only writes into it and into ``out``.
    TPDF dither is the difference of two uniform [0, 1) draws (±1 LSB, triangular): it makes the
    rounding error independent of the signal (mean 0, variance 1/4 LSB², no distortion of quiet
    fades) at the cost of 0.5 LSB RMS of error (-96 dB re full scale) instead of 0.29. Off by
    default: speech engines already carry more noise than that.
    """

    def __init__(self, max_frames: int = 4096, dither: bool = False, seed: int | None = None) -> None:
        if max_frames < 1:
            raise DspError(f"max_frames = {max_frames}: must be at least 1")
        self.max_frames = int(max_frames)
        self.dither = dither
        self._s = np.empty(self.max_frames, dtype=np.float32)
        self._nan = np.empty(self.max_frames, dtype=np.bool_)
        self._d1 = np.empty(self.max_frames if dither else 0, dtype=np.float32)
        self._d2 = np.empty(self.max_frames if dither else 0, dtype=np.float32)
        self._rng = np.random.default_rng(seed)

    def convert(self, x: npt.NDArray[np.float32], out: npt.NDArray[np.int16]) -> None:
        """Write ``len(x)`` converted samples into ``out[:len(x)]`` (both 1-D; out is int16)."""
        n = len(x)
        if len(out) < n or out.dtype != np.int16:
            raise DspError(f"out must be int16 with at least {n} frames, got {out.dtype} {out.shape}")
        i = 0
        while i < n:
            m = min(n - i, self.max_frames)
            s = self._s[:m]
            np.multiply(x[i : i + m], np.float32(32767.0), out=s)
            if self.dither:
                d1, d2 = self._d1[:m], self._d2[:m]
                self._rng.random(dtype=np.float32, out=d1)
                self._rng.random(dtype=np.float32, out=d2)
                np.subtract(d1, d2, out=d1)
                np.add(s, d1, out=s)
            np.rint(s, out=s)
            nan = self._nan[:m]
            np.isnan(s, out=nan)
            np.copyto(s, np.float32(0.0), where=nan)
            np.fmax(s, np.float32(-32768.0), out=s)  # ±inf clips too
            np.fmin(s, np.float32(32767.0), out=s)
            np.copyto(out[i : i + m], s, casting="unsafe")  # exact: s holds integers in range
            i += m


def float_to_int16(x: npt.ArrayLike, dither: bool = False, seed: int | None = None) -> npt.NDArray[np.int16]:
    """Convert a whole array (allocates; for files and tests — the callback uses ``Int16Converter``)."""
    a = np.asarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(len(a), dtype=np.int16)
    Int16Converter(max(1, min(len(a), 1 << 16)), dither=dither, seed=seed).convert(a, out)
    return out


# ------------------------------------------------------------------------------------------------
# Whole-factor upsampling in the audio callback


class IntegerUpsampler:
    """Streaming polyphase FIR interpolator by a whole ``factor`` (2× 22.05 → 44.1 kHz, 3× 16 → 48 kHz),
    for the audio callback: it allocates no sample buffer after construction.

    Used when the output device refuses the ring's rate but takes a whole multiple of it. Unlike
    ``Resampler`` (soxr, allocating, tens of ms of delay) it runs inside the callback, so a cancel,
    a skip window and the fade all stay in ring frames and nothing sits in a second buffer.

    The filter is a Kaiser-windowed sinc (linear phase, odd length ``factor × taps_per_phase − 1``,
    so the delay is a whole number of output samples), designed at the output rate with its
    passband up to ``passband`` × the input rate (0.45: 9.9 kHz at 22.05 kHz) and its stopband from
    ``stopband`` × the input rate (0.5: the input's Nyquist, so every image of every input
    frequency is in the stopband) down by ``atten_db``. The length comes from Kaiser's formula for
    that transition width: about 100 taps per phase for 80 dB whatever the factor, ~2.3 ms of
    delay at 22.05 kHz (``delay_s``). Gain: DC gain ``factor`` of the prototype, so each phase has
    unit gain and the level does not change.

    Per block of ``n`` input frames the work is ``np.matmul`` of a strided ``(n, taps_per_phase)``
    view of the input history with the ``(taps_per_phase, factor)`` phase matrix, in tiles of 32
    rows (one product shape, so BLAS sums every frame the same way), then copied into ``out``
    viewed as ``(n, factor)``: output ``n·factor + p`` is phase ``p`` at input frame ``n``. The last
    ``taps_per_phase − 1`` input frames are kept for the next call, so block-by-block output equals
    one-shot output bit for bit (tested). Figures in docs/audio-quality.md.
    """

    def __init__(
        self,
        factor: int,
        max_frames: int = 4096,
        *,
        passband: float = 0.45,
        stopband: float = 0.5,
        atten_db: float = 80.0,
    ) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or not 1 <= int(factor) <= 16:
            raise DspError(f"upsampling factor {factor!r} must be a whole number from 1 to 16")
        if max_frames < 1:
            raise DspError(f"max_frames = {max_frames}: must be at least 1")
        if not 0.0 < passband < stopband <= 0.5 * int(factor):
            raise DspError(f"passband {passband} < stopband {stopband} (× the input rate) must lie in (0, factor / 2]")
        if not 20.0 <= atten_db <= 160.0:
            raise DspError(f"stopband attenuation {atten_db} dB must be between 20 and 160 dB")
        self.factor = L = int(factor)
        self.max_frames = int(max_frames)
        self.passband, self.stopband, self.atten_db = passband, stopband, atten_db
        if L == 1:
            taps_pp = 1
            proto = np.ones(1, dtype=np.float64)
        else:
            # Kaiser's estimates, with frequencies as fractions of the output rate.
            width = (stopband - passband) / L
            n_est = math.ceil((atten_db - 7.95) / (14.36 * width)) + 1
            taps_pp = max(2, math.ceil((n_est + 1) / L))
            taps_pp += taps_pp % 2  # even: L·T − 1 is odd, so the centre is a whole output sample
            n_taps = L * taps_pp - 1
            if atten_db > 50:
                beta = 0.1102 * (atten_db - 8.7)
            elif atten_db >= 21:
                beta = 0.5842 * (atten_db - 21) ** 0.4 + 0.07886 * (atten_db - 21)
            else:
                beta = 0.0
            cutoff = 0.5 * (passband + stopband) / L
            k = np.arange(n_taps, dtype=np.float64) - (n_taps - 1) / 2
            proto = 2.0 * cutoff * np.sinc(2.0 * cutoff * k) * np.kaiser(n_taps, beta)
            proto *= L / proto.sum()
        self.taps: npt.NDArray[np.float64] = proto
        """The prototype filter at the output rate (for analysis; ``len = factor × taps_per_phase − 1``)."""
        self.taps_per_phase = taps_pp
        self.delay_frames_out = (len(proto) - 1) // 2
        """Group delay in output samples: input frame ``i`` is centred on output sample ``i·factor + delay``."""
        padded = np.zeros(L * taps_pp, dtype=np.float64)
        padded[: len(proto)] = proto
        # _phases[j, p] = h[p + (T − 1 − j)·L]: row j multiplies input frame n − (T − 1 − j).
        self._phases = np.ascontiguousarray(padded.reshape(taps_pp, L)[::-1], dtype=np.float32)
        self._hist = taps_pp - 1
        # Blocks are computed in whole tiles of _ROW_TILE rows (see process_into): room for the
        # last tile's spare rows, inputs and outputs. Their values are never used.
        rows = self.max_frames + _ROW_TILE
        self._xbuf = np.zeros(self._hist + rows, dtype=np.float32)
        self._prod = np.zeros((rows, L), dtype=np.float32)
        # Row i is xbuf[i : i + T]: every input window as a sliding view, no copy.
        step = self._xbuf.strides[0]
        self._windows = np.lib.stride_tricks.as_strided(
            self._xbuf, shape=(rows, taps_pp), strides=(step, step), writeable=False
        )
        self._carry = np.zeros(max(self._hist, 1), dtype=np.float32)
        self.frames_in = 0

    def delay_s(self, in_rate: float) -> float:
        """The filter's group delay in seconds at input rate ``in_rate``."""
        return self.delay_frames_out / (self.factor * float(in_rate))

    def reset(self) -> None:
        """Forget the input history (the next output starts from silence)."""
        self._xbuf[: self._hist] = 0.0
        self.frames_in = 0

    def process_into(self, x: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> int:
        """Upsample ``x`` (1-D float32) into ``out[: len(x) · factor]`` (1-D contiguous float32);
        returns the output frames written. No allocation of sample buffers."""
        n_total = len(x)
        L = self.factor
        if out.dtype != np.float32 or out.ndim != 1 or len(out) < n_total * L or not out.flags.c_contiguous:
            raise DspError(
                f"out must be contiguous 1-D float32 with at least {n_total * L} frames, got {out.dtype} {out.shape}"
            )
        if L == 1:
            np.copyto(out[:n_total], x)
            self.frames_in += n_total
            return n_total
        hist = self._hist
        i = 0
        while i < n_total:
            n = min(n_total - i, self.max_frames)
            xb = self._xbuf
            np.copyto(xb[hist : hist + n], x[i : i + n])
            # BLAS sums a row in an order that depends on the matrix shape (OpenBLAS takes other
            # kernels for a remainder of rows, for small and for large products, gemv for one
            # row), so a frame would come out a few ulps apart in blocks of different sizes, and
            # an int16 rounding would flip now and then. Every product here has one shape,
            # (_ROW_TILE, T) @ (T, factor): the output is bit-identical whatever the block sizes.
            for t in range(0, n, _ROW_TILE):
                np.matmul(self._windows[t : t + _ROW_TILE], self._phases, out=self._prod[t : t + _ROW_TILE])
            np.copyto(out[i * L : (i + n) * L].reshape(n, L), self._prod[:n])
            # Keep the last T − 1 input frames in front (through _carry: the ranges may overlap).
            # hist >= 1 here: factor > 1 has at least two taps per phase.
            np.copyto(self._carry[:hist], xb[n : n + hist])
            np.copyto(xb[:hist], self._carry[:hist])
            i += n
        self.frames_in += n_total
        return n_total * L

    def process(self, x: npt.ArrayLike) -> Audio:
        """Allocating form of ``process_into`` (tests, offline use)."""
        a = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        out = np.empty(len(a) * self.factor, dtype=np.float32)
        self.process_into(a, out)
        return out

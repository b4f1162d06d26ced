"""Resampling with soxr, on the worker side: engine rate → ring rate, and whole signals for tools.

``Resampler`` allocates (soxr returns new arrays) and delays by tens of ms: it runs in the TTS
worker, never in the audio callback (the callback's ``actors.audio.output.IntegerUpsampler``
handles a device that refuses the ring rate). The consumer process must not import this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from actors.audio.pcm import EMPTY, Audio, DspError, check_any_rate, to_mono

__all__ = ["Resampler", "resample"]



def resample(x: npt.ArrayLike, in_rate: int, out_rate: int, quality: str = "HQ") -> Audio:
    """Resample a whole mono signal (soxr, linear phase, delay compensated: output is aligned)."""
    a = to_mono(x)
    rin, rout = check_any_rate(in_rate, "input rate"), check_any_rate(out_rate, "output rate")
    if rin == rout:
        return a.copy()
    return np.asarray(soxr.resample(a, rin, rout, quality=quality), dtype=np.float32)


class Resampler:
    """Streaming soxr resampler for one mono stream (engine rate → device rate, 48 kHz for Opus…).

    ``process(block)`` returns what is ready; the output lags the input by ``delay_frames`` output
    frames (HQ: up to ~40 ms, varying with soxr's internal block; figures in docs/audio-quality.md).
    ``flush()`` ends the stream and returns the rest (then the resampler is ready for a fresh
    stream); ``reset()`` drops everything (after a cancel). Concatenated output is sample-identical
    to ``resample()`` of the whole input. It allocates (soxr returns new arrays): run it in the
    worker or a consumer thread, never in the audio callback.
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        self.in_rate = check_any_rate(in_rate, "input rate")
        self.out_rate = check_any_rate(out_rate, "output rate")
        self.quality = quality
        self._stream: Any = None
        if self.in_rate != self.out_rate:
            try:
                self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality=quality)
            except Exception as exc:  # soxr raises ValueError/TypeError for bad qualities
                raise DspError(f"resampler {self.in_rate} -> {self.out_rate} Hz ({quality}): {exc}") from exc
        self.frames_in = 0
        self.frames_out = 0

    @property
    def delay_frames(self) -> float:
        """Output frames the input so far implies but that are still inside the filter."""
        return float(self._stream.delay()) if self._stream is not None else 0.0

    def process(self, block: npt.ArrayLike) -> Audio:
        x = to_mono(block)
        self.frames_in += len(x)
        if self._stream is None:
            y = x.copy()
        else:
            y = np.asarray(self._stream.resample_chunk(x, last=False), dtype=np.float32)
        self.frames_out += len(y)
        return y

    def flush(self) -> Audio:
        """End of stream: the frames still in the filter. The resampler is then fresh again."""
        if self._stream is None:
            y = EMPTY
        else:
            y = np.asarray(self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True), dtype=np.float32)
            self._stream.clear()
        self.frames_in = self.frames_out = 0
        return y

    def reset(self) -> None:
        """Drop everything in the filter (after a cancel)."""
        if self._stream is not None:
            self._stream.clear()
        self.frames_in = self.frames_out = 0

"""PCM basics both sides of the audio room share: the error type, the internal rate range, mono float32.

numpy only: the audio consumer imports this (through ``actors.audio.output``), so nothing heavy
may come with it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["EMPTY", "MAX_RATE", "MIN_RATE", "Audio", "DspError", "check_any_rate", "to_mono", "validate_rate"]

Audio = npt.NDArray[np.float32]

MIN_RATE = 16000
MAX_RATE = 24000
#: A shared read-only empty block (returned where there is nothing to pass on: no allocation).
EMPTY: Audio = np.zeros(0, dtype=np.float32)
EMPTY.flags.writeable = False


class DspError(ValueError):
    """Audio that the audio room cannot take as it is (rate, shape, dtype) or a misused joiner."""


# ------------------------------------------------------------------------------------------------
# Validation: rate and channels


def validate_rate(rate: Any, what: str = "sample rate") -> int:
    """Return ``rate`` as an int if it is an internal rate (16–24 kHz), else raise ``DspError``.

    Engines and the ring run at 16–24 kHz (speech needs no more, and every figure in the chunker
    and the pre-buffer assumes it); 44.1/48 kHz exist only at the edges, made by ``Resampler``.
    """
    if isinstance(rate, bool) or not isinstance(rate, int | float | np.integer | np.floating):
        raise DspError(f"{what} {rate!r} is not a number; internal rates are {MIN_RATE}-{MAX_RATE} Hz")
    if not math.isfinite(float(rate)) or float(rate) != int(rate):
        raise DspError(f"{what} {rate!r} Hz is not a whole number of Hz; internal rates are {MIN_RATE}-{MAX_RATE} Hz")
    value = int(rate)
    if not MIN_RATE <= value <= MAX_RATE:
        raise DspError(
            f"{what} {value} Hz is outside the internal range {MIN_RATE}-{MAX_RATE} Hz; engines must produce "
            f"16-24 kHz audio (other rates are made at the output with actors.audio.resample.Resampler)"
        )
    return value


def check_any_rate(rate: Any, what: str) -> int:
    """A resampler endpoint: any whole rate from 8 kHz to 192 kHz (device and codec rates included)."""
    if isinstance(rate, bool) or not isinstance(rate, int | float | np.integer | np.floating):
        raise DspError(f"{what} {rate!r} is not a number")
    if not math.isfinite(float(rate)) or float(rate) != int(rate) or not 8000 <= int(rate) <= 192000:
        raise DspError(f"{what} {rate!r} Hz is not a whole rate between 8000 and 192000 Hz")
    return int(rate)


def to_mono(x: Any, what: str = "audio") -> Audio:
    """Return ``x`` as 1-D float32 mono; stereo is downmixed as (L + R) / 2.

    Accepted: 1-D; 2-D frames-first ``(n, 1)`` / ``(n, 2)`` (sounddevice, soundfile, soxr); 2-D
    channels-first ``(1, n)`` / ``(2, n)`` with ``n > 2`` (torch, torchaudio). Float input is taken
    as is (±1.0 full scale), int16 is scaled by 1/32768. (L + R) / 2 keeps the level of a centred
    voice, which is what a TTS engine's stereo output is. Anything else raises ``DspError`` naming
    the shape: more than two channels, 0-D, 3-D and more.
    """
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype == np.int16:
        x = x.astype(np.float32) * np.float32(1.0 / 32768.0)
    elif x.dtype.kind != "f":
        raise DspError(f"{what}: dtype {x.dtype} is not audio; give float32/float64 (±1.0) or int16 samples")
    if x.ndim == 1:
        return np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        frames_first = x.shape[1] in (1, 2)
        channels_first = x.shape[0] in (1, 2) and x.shape[1] > 2
        if frames_first or channels_first:
            y = x if frames_first else x.T
            if y.shape[1] == 1:
                return np.ascontiguousarray(y[:, 0], dtype=np.float32)
            return ((y[:, 0].astype(np.float32) + y[:, 1].astype(np.float32)) * np.float32(0.5)).astype(np.float32)
        raise DspError(
            f"{what}: shape {x.shape} has more than 2 channels (or is ambiguous); skald takes mono or stereo "
            "audio as (frames,), (frames, 1|2) or (1|2, frames)"
        )
    raise DspError(f"{what}: shape {x.shape} is not audio; skald takes (frames,), (frames, 1|2) or (1|2, frames)")

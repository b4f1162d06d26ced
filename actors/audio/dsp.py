"""Audio DSP for skald: chunk seams, silence, DC offset, int16, sample rates. numpy and soxr only.

The audio consumer imports this module, so it must stay light: no torch, no onnxruntime, no
engine. Where each stage runs::

    TTS worker, one ChunkJoiner per request                                        audio consumer
    ┌──────────────────────────────── ChunkJoiner ────────────────────────────────┐
    engine ─> to_mono ─> DcBlocker ─> silence trim ─> equal-power crossfade ─> [Resampler] ─> PcmRing
    blocks    float32    per chunk    to a natural    held tail of N meets                      │
                                      pause           the head of N+1    callback (no allocation):
                                                                         fade, [IntegerUpsampler],
                                                                         Int16Converter ─> device

Latency. Nothing here delays speech by more than the crossfade length: the joiner holds back the
last ``crossfade_ms`` of what it was given (any block may be a chunk's last, and that tail must
meet the next chunk's head), and the trimmer holds back only silence that would be cut if the
chunk ended there (silence beyond the natural pause). Leading silence is cut, so the first chunk of
a request starts *earlier* than the raw engine output (Piper: 35–55 ms of lead silence).

Every sample rate inside skald (engine, ring) is 16–24 kHz (``validate_rate``); other rates are
made at the edges with ``Resampler`` / ``resample``, or, for a device that refuses the ring rate,
at a whole multiple of it by ``IntegerUpsampler`` inside the audio callback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import soxr

from actors.text.punctuation import PAUSE_KINDS, pause_kind

if TYPE_CHECKING:
    from config.settings import DspSettings

__all__ = [
    "DEFAULT_PAUSES_MS",
    "MAX_RATE",
    "MIN_RATE",
    "PAUSE_KINDS",
    "ChunkJoiner",
    "ChunkSpan",
    "DcBlocker",
    "DspError",
    "Int16Converter",
    "IntegerUpsampler",
    "Resampler",
    "equal_power_gains",
    "float_to_int16",
    "pause_kind",
    "resample",
    "to_mono",
    "validate_rate",
]

Audio = npt.NDArray[np.float32]

MIN_RATE = 16000
MAX_RATE = 24000
_EMPTY: Audio = np.zeros(0, dtype=np.float32)
_EMPTY.flags.writeable = False


class DspError(ValueError):
    """Audio that this module cannot take as it is (rate, shape, dtype) or a misused joiner."""


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
            f"16-24 kHz audio (other rates are made at the output with actors.audio.dsp.Resampler)"
        )
    return value


def _check_any_rate(rate: Any, what: str) -> int:
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


# ------------------------------------------------------------------------------------------------
# DC offset


class DcBlocker:
    """Streaming one-pole DC blocker, ``y[n] = x[n] - x[n-1] + r * y[n-1]`` (-3 dB at ``cutoff_hz``).

    Used per chunk: ``reset()`` at each chunk start, then ``process`` its blocks. The filter is
    primed with the chunk's first sample as ``x[-1]``, so a constant offset is removed from the
    very first sample, with no transient and no step at the seam (a chunk's own offset never
    leaks into the next). A first sample louder than ``prime_max`` (-20 dBFS, far above any real
    engine's offset: Piper's is ~0.0004) is not taken for an offset but for an engine that started
    mid-waveform; then the filter starts from zero and an offset, if any, decays with a 16 ms time
    constant under the chunk's fade-in. At 10 Hz the speech band (≥ 80 Hz) changes by < 0.07 dB.

    The recursion runs on a fixed 256-sample grid counted from the chunk start, in float64, so
    the output is bit-identical whatever the block sizes (the joiner's tests rely on it).
    """

    _SEG = 256

    def __init__(self, sample_rate: int, cutoff_hz: float = 10.0, prime_max: float = 0.1) -> None:
        if not 0.0 < cutoff_hz < sample_rate / 100:
            raise DspError(f"DC blocker cutoff {cutoff_hz} Hz must be above 0 and below 1% of {sample_rate} Hz")
        self.r = math.exp(-2.0 * math.pi * cutoff_hz / sample_rate)
        self.prime_max = prime_max
        k = np.arange(1, self._SEG + 1, dtype=np.float64)
        self._p = self.r**k  # r^(j+1): y[j] = p[j] * (y0 + sum_{k<=j} v[k] / p[k]) inside one segment
        self._inv_p = 1.0 / self._p
        self.reset()

    def reset(self) -> None:
        self._x_prev: float | None = None
        self._y0 = 0.0  # y just before the current segment
        self._acc = 0.0  # running sum of v/p inside the current segment
        self._k = 0  # position inside the current segment

    def process(self, block: npt.ArrayLike) -> Audio:
        x = np.asarray(block, dtype=np.float64)
        n = len(x)
        if n == 0:
            return _EMPTY
        if self._x_prev is None:
            self._x_prev = float(x[0]) if abs(float(x[0])) <= self.prime_max else 0.0
        v = np.empty(n, dtype=np.float64)
        v[0] = x[0] - self._x_prev
        np.subtract(x[1:], x[:-1], out=v[1:])
        y = np.empty(n, dtype=np.float64)
        i = 0
        while i < n:
            k = self._k
            m = min(n - i, self._SEG - k)
            w = v[i : i + m] * self._inv_p[k : k + m]
            # Carry the running sum as the first element: add.accumulate is sequential, so the
            # sums are the same as if the segment had arrived in one piece.
            cs = np.cumsum(np.concatenate(([self._acc], w)))[1:]
            y[i : i + m] = self._p[k : k + m] * (self._y0 + cs)
            self._acc = float(cs[-1])
            self._k = k + m
            if self._k == self._SEG:
                self._y0 = float(y[i + m - 1])
                self._acc = 0.0
                self._k = 0
            i += m
        self._x_prev = float(x[-1])
        return y.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Fades


def equal_power_gains(n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(fade_out, fade_in)`` of length ``n``: cos/sin quarter waves, ``out² + in² = 1`` at every sample.

    Equal power (not equal gain) because the two sides of a seam are uncorrelated: their powers
    add, so the loudness stays constant through the fade instead of dipping 3 dB in the middle.
    Sampled at (i + ½)/n, so the curve is symmetric and neither end is exactly 0 or 1.
    """
    t = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    return np.cos(0.5 * np.pi * t), np.sin(0.5 * np.pi * t)


def _raised_cosine_in(n: int) -> npt.NDArray[np.float64]:
    """A short 0 → 1 fade (half a Hann window) for edges next to silence: no click, no overlap."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    return 0.5 - 0.5 * np.cos(np.pi * t)


# ------------------------------------------------------------------------------------------------
# Pauses at chunk boundaries

# Silence from the last speech of chunk N to the first speech of chunk N+1, by what ended chunk N.
# Measured on the default Piper voice (noise off, 5 ms frames at -50 dBFS): the engine's own
# comma pauses are 230-410 ms (median 300) and the gap between its sentences 130-200 ms. The
# table sits between: a seam at a comma sounds like Piper's comma; a seam at a sentence end a
# little longer than Piper's (narration is read, not chatted); a conjunction or bare word cut
# is a breath at most. "end" is the tail kept after a request's last chunk (the decay of the
# last word, then the request ends).
DEFAULT_PAUSES_MS: dict[str, float] = {
    "paragraph": 700.0,
    "sentence": 300.0,
    "clause": 250.0,
    "conjunction": 100.0,
    "word": 50.0,
    "end": 200.0,
}

# ------------------------------------------------------------------------------------------------
# The chunk joiner


@dataclass
class ChunkSpan:
    """Where one chunk's audio lies in a ``ChunkJoiner``'s output, in frames since its last ``reset()``.

    The chunk occupies output frames ``[start, end)``. Its first ``overlap_in`` frames are
    crossfaded with the previous chunk, its last ``overlap_out`` with the next one (0 when the
    joiner was released in between). Output frame ``start + lead_pad + i`` is engine frame
    ``src_start + i`` of this chunk (after DC removal) for ``0 <= i < kept``; before it are
    ``lead_pad`` zeros, after it ``trail_pad`` zeros. ``speech_start``/``speech_end`` bound the
    frames the trimmer heard as speech (-1 if it heard none). ``start``/``end`` are -1 until known
    (``start`` once the crossfade is mixed, ``end`` at ``end_chunk``).
    """

    index: int
    kind: str
    start: int = -1
    end: int = -1
    overlap_in: int = 0
    overlap_out: int = 0
    speech_start: int = -1
    speech_end: int = -1
    lead_pad: int = 0
    src_start: int = 0
    kept: int = 0
    trail_pad: int = 0
    engine_frames: int = 0
    done: bool = False


class _Trimmer:
    """Silence trimming of one chunk, streaming. Positions are engine frames since the chunk start.

    Speech = a ``frame``-long analysis frame (5 ms, on a grid from the chunk start, so decisions do
    not depend on block sizes) whose mean square is above the threshold. The chunk keeps
    ``lead_keep`` frames of silence before its first speech frame (zeros in front if the engine gave
    fewer and ``lead_pad_to`` asks for them) and ``post_keep`` frames after its last one (cut, or
    zero-padded if the engine ended in silence but gave fewer). Interior pauses are the engine's
    own and are never touched. Held back: silence before the first speech (it may be cut) and
    silence more than ``post_keep`` past the last speech (it would be cut if the chunk ended now).
    """

    def __init__(
        self,
        *,
        frame: int,
        threshold_msq: float,
        lead_keep: int,
        lead_pad_to: int,
        post_keep: int,
        edge: int,
        enabled: bool,
    ) -> None:
        self.frame = frame
        self.thr_msq = threshold_msq
        self.thr_sum = threshold_msq * frame  # compare sums, not means: no division per frame
        self.lead_keep = lead_keep
        self.lead_pad_to = lead_pad_to
        self.post_keep = post_keep
        self.edge = edge
        self.enabled = enabled
        self._buf: Audio = _EMPTY
        self.buf_start = 0  # engine frame of _buf[0]
        self.emitted = 0  # engine frames passed on or dropped
        self.pos_in = 0  # engine frames received
        self.classified = 0  # engine frames classified (a multiple of frame until finish)
        self.onset = -1  # first speech frame's start
        self.speech_end = -1  # last speech frame's end
        self.started = False  # the first kept frame has been passed on
        self.src_start = 0
        self.lead_pad = 0
        self.kept = 0
        self.trail_pad = 0
        self.ended_in_silence = True

    def push(self, x: Audio) -> Audio:
        self.pos_in += len(x)
        self._buf = np.concatenate((self._buf, x)) if len(self._buf) else x
        self._classify(final=False)
        return self._emit(final=False)

    def finish(self) -> tuple[Audio, int]:
        """The rest of the chunk's kept engine frames, and how many zeros should follow them."""
        self._classify(final=True)
        if self.onset < 0 and self.enabled:
            self._buf = _EMPTY  # no speech at all: nothing of this chunk is worth hearing
            return _EMPTY, 0
        out = self._emit(final=True)
        self.ended_in_silence = self.speech_end < self.pos_in
        pad = 0
        if self.enabled and self.ended_in_silence:
            pad = max(0, self.speech_end + self.post_keep - self.pos_in)
        self.trail_pad = pad
        return out, pad

    def _classify(self, final: bool) -> None:
        f = self.frame
        n_full = (self.pos_in - self.classified) // f
        if n_full:
            off = self.classified - self.buf_start
            seg = self._buf[off : off + n_full * f].reshape(n_full, f).astype(np.float64)
            # Row sums over the contiguous axis: the same pairwise sum per row however many rows
            # there are, so decisions do not depend on how the chunk was split into blocks.
            hits = np.flatnonzero(np.square(seg).sum(axis=1) > self.thr_sum)
            if hits.size:
                if self.onset < 0:
                    self.onset = self.classified + int(hits[0]) * f
                self.speech_end = self.classified + (int(hits[-1]) + 1) * f
            self.classified += n_full * f
        if final and self.classified < self.pos_in:
            seg = self._buf[self.classified - self.buf_start :].astype(np.float64)
            if float(np.square(seg).sum()) > self.thr_msq * len(seg):
                if self.onset < 0:
                    self.onset = self.classified
                self.speech_end = self.pos_in
            self.classified = self.pos_in

    def _drop_to(self, pos: int) -> None:
        """Forget engine frames before ``pos`` (never unclassified ones: they are still needed)."""
        pos = min(pos, self.classified)
        if pos > self.buf_start:
            self._buf = self._buf[pos - self.buf_start :]
            self.buf_start = pos

    def _take(self, limit: int) -> Audio:
        """Pass on engine frames [emitted, limit)."""
        if limit <= self.emitted:
            return _EMPTY
        out = self._buf[self.emitted - self.buf_start : limit - self.buf_start]
        self.emitted = limit
        self.kept += len(out)
        self._drop_to(limit)
        return out

    def _emit(self, final: bool) -> Audio:
        if not self.enabled:
            return self._take(self.pos_in)
        if self.onset < 0:
            self._drop_to(self.classified - self.lead_keep)
            self.emitted = max(self.emitted, self.buf_start)
            return _EMPTY
        pad = 0
        if not self.started:
            self.started = True
            ks = max(0, self.onset - self.lead_keep)
            self._drop_to(ks)
            self.emitted = self.src_start = ks
            lead = self.onset - ks
            if self.lead_pad_to > lead:
                pad = self.lead_pad = self.lead_pad_to - lead
        out = self._take(min(self.pos_in, self.speech_end + self.post_keep))
        if final:
            self._buf = _EMPTY  # silence past the post-roll: trimmed
        if not pad:
            return out
        # Zeros, then the engine: ramp its first samples up from zero (silence, normally; if the
        # engine starts mid-sound this is what keeps the onset from clicking).
        out = out.copy()
        e = min(self.edge, len(out))
        out[:e] *= _raised_cosine_in(e).astype(np.float32)
        return np.concatenate((np.zeros(pad, dtype=np.float32), out))


class ChunkJoiner:
    """Joins the chunks of one request into one seamless stream: DC removal, silence trimming to a
    natural pause, and an equal-power crossfade at each seam. Streaming, used by the TTS worker.

    Per chunk::

        joiner.start_chunk(pause_kind(plan.boundary, plan.text))   # how this chunk *ends*
        for block in engine.synthesize(...):
            push(joiner.feed(block))          # frames ready now (possibly none)
        push(joiner.end_chunk())
        if the next thing to push is not this request's next chunk (queue empty, another request
           first, request done):
            push(joiner.release())            # the held tail, faded out: nothing is lost
    and ``reset()`` after a cancel (drops everything held; the consumer fades the cut itself).

    What the output looks like: each chunk is ``[pre-roll][speech][post-roll]``. At a seam the
    last ``crossfade`` frames of chunk N (its post-roll: silence, unless the engine stopped
    mid-sound) are overlapped with the first frames of chunk N+1 and mixed with equal-power gains.
    The pre-roll is ``crossfade + lead_ms`` of N+1's leading silence (``lead_ms`` when nothing is
    held: the first chunk, or after ``release()``); the post-roll is ``pause − lead_ms`` of N's
    trailing silence, so the silence between the last word of N and the first of N+1 is the pause
    of N's boundary kind. When the engine gave less silence than that, zeros are added (after a
    short fade of the engine's own residual); when N ended mid-sound, nothing is padded and the
    crossfade blends sound into sound. The first chunk after silence (no held tail) gets a short
    fade-in; ``release()`` a short fade-out.

    Why the pause kind comes at ``start_chunk`` and not at ``end_chunk``: knowing the post-roll
    length up front lets the trimmer pass on trailing silence up to the pause at once and hold
    back only silence beyond it, which the chunk's end would cut anyway. (The chunker knows the
    boundary when it plans the chunk.)

    Latency: the joiner holds back at most the last ``crossfade`` frames (plus, while the
    trimmer waits, silence that may be cut). With ``crossfade_ms = 0`` it holds nothing but a
    partial 5 ms analysis frame, and seams are plain concatenations of trimmed chunks.

    Accounting: ``spans`` lists every chunk's ``ChunkSpan`` (output frames since ``reset``), and
    ``frames_out`` counts the frames returned so far; add the ring's write index at ``reset`` to
    get ring positions.
    """

    def __init__(
        self,
        sample_rate: int,
        crossfade_ms: float = 30.0,
        *,
        trim: bool = True,
        silence_db: float = -50.0,
        lead_ms: float = 10.0,
        pauses_ms: dict[str, float] | None = None,
        dc_block: bool = True,
        edge_ms: float = 4.0,
        frame_ms: float = 5.0,
    ) -> None:
        self.sample_rate = validate_rate(sample_rate)
        if not 0.0 <= crossfade_ms <= 50.0:
            raise DspError(f"crossfade_ms = {crossfade_ms}: must be 0 (off) or up to 50 ms (10-50 recommended)")
        if not -120.0 <= silence_db <= 0.0:
            raise DspError(f"silence_db = {silence_db}: must be between -120 and 0 dBFS")
        if not 0.0 <= lead_ms <= 500.0:
            raise DspError(f"lead_ms = {lead_ms}: must be between 0 and 500 ms")
        pauses = dict(DEFAULT_PAUSES_MS)
        for kind, ms in (pauses_ms or {}).items():
            if kind not in PAUSE_KINDS:
                raise DspError(f"unknown pause kind {kind!r}; kinds: {', '.join(PAUSE_KINDS)}")
            if not 0.0 <= ms <= 5000.0:
                raise DspError(f"pause for {kind!r} = {ms} ms: must be between 0 and 5000 ms")
            pauses[kind] = float(ms)
        rate = self.sample_rate
        self.crossfade = round(crossfade_ms * rate / 1000.0)
        self.edge = min(round(edge_ms * rate / 1000.0), self.crossfade)
        self.frame = max(1, round(frame_ms * rate / 1000.0))
        self.lead = round(lead_ms * rate / 1000.0)
        self.trim = trim
        self.threshold_msq = 10.0 ** (silence_db / 10.0)  # mean square of a full-scale-relative level
        self.pauses = {k: round(v * rate / 1000.0) for k, v in pauses.items()}
        self._dc = DcBlocker(rate) if dc_block else None
        self.reset()

    @classmethod
    def from_settings(cls, dsp: DspSettings, sample_rate: int) -> ChunkJoiner:
        """A joiner configured by the ``[dsp]`` section of the settings."""
        return cls(
            sample_rate,
            dsp.crossfade_ms,
            trim=dsp.trim_silence,
            silence_db=dsp.silence_db,
            lead_ms=dsp.lead_ms,
            pauses_ms={kind: float(getattr(dsp, f"pause_{kind}_ms")) for kind in PAUSE_KINDS},
        )

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget everything (after a cancel): held audio, the chunk in progress, spans, counters."""
        self.frames_out = 0
        self.spans: list[ChunkSpan] = []
        self._pending: Audio = _EMPTY  # output frames held back (the last `crossfade` of the stream)
        self._tail_silent = True  # the held tail is post-roll silence (pad the next chunk's lead)
        self._joined = False  # a chunk ended and no release() since: the next chunk is a seam
        self._tail_span = -1  # the span whose last frames are held (-1: none)
        self._trimmer: _Trimmer | None = None
        self._span: ChunkSpan | None = None
        self._overlap = 0  # frames of held tail the current chunk's head will be mixed with
        self._head: Audio = _EMPTY  # the current chunk's first frames, until `_overlap` have come
        self._mixed = True  # the current chunk's crossfade is done (or there is none)
        self._chunk_len = 0  # output frames of the current chunk so far
        self._fade_in = False  # the current chunk starts after silence: ramp its first frames

    @property
    def in_chunk(self) -> bool:
        return self._trimmer is not None

    @property
    def held_frames(self) -> int:
        """Output frames held back right now: at most ``crossfade``. (A next chunk's first frames,
        while fewer than the held tail, lie under that tail in output time; silence that the
        trimmer may still cut is not counted.)"""
        return len(self._pending) + max(0, len(self._head) - self._overlap)

    def pause_frames(self, kind: str) -> int:
        """Frames of silence this joiner puts between the last speech of a chunk and the next."""
        return max(self.pauses[kind], self.crossfade + self.lead)

    # ---------------------------------------------------------------- chunk stream
    def start_chunk(self, kind: str = "sentence") -> None:
        """Begin a chunk whose end calls for the pause ``kind`` (one of ``PAUSE_KINDS``)."""
        if self._trimmer is not None:
            raise DspError("start_chunk() while a chunk is open; call end_chunk() first")
        if kind not in self.pauses:
            raise DspError(f"unknown pause kind {kind!r}; kinds: {', '.join(PAUSE_KINDS)} (see dsp.pause_kind)")
        held = len(self._pending)
        self._overlap = held
        self._mixed = held == 0
        self._fade_in = held == 0
        self._head = _EMPTY
        self._chunk_len = 0
        # Pad the lead only at a seam after silence: there the pre-roll must cover the overlap,
        # so the fade-in touches silence and never the first consonant.
        pad_lead = self.trim and self._joined and self._tail_silent
        self._trimmer = _Trimmer(
            frame=self.frame,
            threshold_msq=self.threshold_msq,
            lead_keep=held + self.lead if held else self.lead,
            lead_pad_to=held + self.lead if pad_lead else 0,
            post_keep=self.pause_frames(kind) - self.lead,
            edge=self.edge,
            enabled=self.trim,
        )
        self._span = ChunkSpan(index=len(self.spans), kind=kind)
        self.spans.append(self._span)
        if self._dc is not None:
            self._dc.reset()

    def feed(self, block: npt.ArrayLike) -> Audio:
        """Take an engine block of the open chunk; return the output frames that are final now."""
        trimmer, span = self._open("feed")
        x = to_mono(block, "engine block")
        if not len(x):
            return _EMPTY
        if not np.isfinite(x).all():
            x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)  # a model fault must not reach the DAC
        span.engine_frames += len(x)
        # Own copy either way: held frames must not alias a buffer the engine may reuse.
        y = self._dc.process(x) if self._dc is not None else x.copy()
        return self._accept(trimmer.push(y))

    def end_chunk(self) -> Audio:
        """Close the open chunk; return the frames that are final now. Its last frames stay held."""
        trimmer, span = self._open("end_chunk")
        rest, pad = trimmer.finish()
        out = [self._accept(rest)]
        if pad:
            self._fade_recent_out()
            out.append(self._accept(np.zeros(pad, dtype=np.float32)))
        if not self._mixed:
            out.append(self._mix())  # a chunk shorter than the held tail: overlap what there is
        if self._chunk_len == 0:
            span.start = span.end = self.frames_out + len(self._pending)  # nothing heard: an empty span
        else:
            span.end = self.frames_out + len(self._pending)
            self._tail_silent = trimmer.ended_in_silence or not self.trim
            self._joined = True
            self._tail_span = span.index
        span.src_start, span.lead_pad, span.kept, span.trail_pad = (
            trimmer.src_start,
            trimmer.lead_pad,
            trimmer.kept,
            trimmer.trail_pad,
        )
        if trimmer.onset >= 0 and self._chunk_len:
            base = span.start + trimmer.lead_pad - trimmer.src_start
            span.speech_start = base + trimmer.onset
            span.speech_end = base + min(trimmer.speech_end, trimmer.src_start + trimmer.kept)
        span.done = True
        self._trimmer = None
        self._span = None
        return _join(out)

    def release(self) -> Audio:
        """Between chunks: hand out the held tail with a short fade-out (the next chunk is late or
        there is none). The next chunk then starts after silence, with a short fade-in."""
        if self._trimmer is not None:
            raise DspError("release() inside a chunk; call end_chunk() first")
        out = self._pending
        self._pending = _EMPTY
        if len(out) and self.edge:
            out = out.copy()
            e = min(self.edge, len(out))
            out[-e:] *= _raised_cosine_in(e)[::-1].astype(np.float32)
        self.frames_out += len(out)
        self._tail_silent = True
        self._joined = False
        self._tail_span = -1
        return out

    # ---------------------------------------------------------------- internals
    def _open(self, what: str) -> tuple[_Trimmer, ChunkSpan]:
        if self._trimmer is None or self._span is None:
            raise DspError(f"{what}() with no open chunk; call start_chunk() first")
        return self._trimmer, self._span

    def _accept(self, y: Audio) -> Audio:
        """Append the current chunk's next output frames; return what leaves the hold."""
        if not len(y):
            return _EMPTY
        if self._fade_in and self.edge and self._chunk_len < self.edge:
            y = y.copy()
            e = min(self.edge - self._chunk_len, len(y))
            y[:e] *= _raised_cosine_in(self.edge)[self._chunk_len : self._chunk_len + e].astype(np.float32)
        if self._chunk_len == 0 and self._mixed:
            assert self._span is not None
            self._span.start = self.frames_out + len(self._pending)
        self._chunk_len += len(y)
        if not self._mixed:
            self._head = np.concatenate((self._head, y)) if len(self._head) else y
            if len(self._head) < self._overlap:
                return _EMPTY
            return self._mix()
        return self._release_excess(np.concatenate((self._pending, y)) if len(self._pending) else y)

    def _mix(self) -> Audio:
        """Crossfade the held tail with the head of the current chunk (as much of it as there is)."""
        assert self._span is not None
        head = self._head
        tail = self._pending
        t = min(len(tail), len(head))
        self._mixed = True
        self._head = _EMPTY
        if t == 0:
            return _EMPTY
        g_out, g_in = equal_power_gains(t)
        mixed = (tail[len(tail) - t :] * g_out + head[:t] * g_in).astype(np.float32)
        self._span.start = self.frames_out + len(tail) - t
        self._span.overlap_in = t
        if self._tail_span >= 0:
            self.spans[self._tail_span].overlap_out = t
        stream = np.concatenate((tail[: len(tail) - t], mixed, head[t:]))
        return self._release_excess(stream)

    def _release_excess(self, stream: Audio) -> Audio:
        """Keep the last `crossfade` frames held, return the rest."""
        keep = self.crossfade
        if len(stream) <= keep:
            self._pending = stream
            return _EMPTY
        out = stream[: len(stream) - keep] if keep else stream
        self._pending = stream[len(stream) - keep :] if keep else _EMPTY
        self.frames_out += len(out)
        return out

    def _fade_recent_out(self) -> None:
        """Fade the chunk's last engine frames to zero before zeros are appended after them."""
        n = min(self.edge, self._chunk_len)
        buf = self._head if not self._mixed else self._pending
        n = min(n, len(buf))
        if n:
            buf = buf.copy()
            buf[-n:] *= _raised_cosine_in(n)[::-1].astype(np.float32)
            if not self._mixed:
                self._head = buf
            else:
                self._pending = buf


def _join(parts: list[Audio]) -> Audio:
    parts = [p for p in parts if len(p)]
    if not parts:
        return _EMPTY
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


# ------------------------------------------------------------------------------------------------
# float32 → int16


class Int16Converter:
    """float32 → int16 for the audio callback, without allocating: scale by 32767, optional TPDF
    dither, round to nearest, clip to [-32768, 32767] (never wrap), NaN → 0.

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
# Resampling (soxr)


def resample(x: npt.ArrayLike, in_rate: int, out_rate: int, quality: str = "HQ") -> Audio:
    """Resample a whole mono signal (soxr, linear phase, delay compensated: output is aligned)."""
    a = to_mono(x)
    rin, rout = _check_any_rate(in_rate, "input rate"), _check_any_rate(out_rate, "output rate")
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
        self.in_rate = _check_any_rate(in_rate, "input rate")
        self.out_rate = _check_any_rate(out_rate, "output rate")
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
            y = _EMPTY
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

    Per block of ``n`` input frames the work is one ``np.matmul`` of a strided
    ``(n, taps_per_phase)`` view of the input history with the ``(taps_per_phase, factor)`` phase
    matrix, written into ``out`` viewed as ``(n, factor)``: output ``n·factor + p`` is phase ``p``
    at input frame ``n``. The last ``taps_per_phase − 1`` input frames are kept for the next call,
    so block-by-block output equals one-shot output (tested). Figures in docs/audio-quality.md.
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
        # One spare frame: a 1-frame block is computed as two rows (see process_into).
        self._xbuf = np.zeros(self._hist + self.max_frames + 1, dtype=np.float32)
        self._pair = np.zeros((2, L), dtype=np.float32)
        self._carry = np.zeros(max(self._hist, 1), dtype=np.float32)
        self._view_n = -1
        self._view: npt.NDArray[np.float32] = self._xbuf[:0].reshape(0, 1)
        self.frames_in = 0

    def delay_s(self, in_rate: float) -> float:
        """The filter's group delay in seconds at input rate ``in_rate``."""
        return self.delay_frames_out / (self.factor * float(in_rate))

    def reset(self) -> None:
        """Forget the input history (the next output starts from silence)."""
        self._xbuf[: self._hist] = 0.0
        self.frames_in = 0

    def _windows(self, n: int) -> npt.NDArray[np.float32]:
        # Row i is xbuf[i : i + T] (a sliding window, no copy). Kept for the next call of the same
        # size (the callback's), so a steady stream makes no new array object either.
        if n != self._view_n:
            step = self._xbuf.strides[0]
            self._view = np.lib.stride_tricks.as_strided(
                self._xbuf, shape=(n, self.taps_per_phase), strides=(step, step), writeable=False
            )
            self._view_n = n
        return self._view

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
            if n > 1:
                np.matmul(self._windows(n), self._phases, out=out[i * L : (i + n) * L].reshape(n, L))
            else:
                # numpy hands a one-row product to BLAS, which sums in another order; two rows
                # keep numpy's own loop, so the result is bit-identical whatever the block sizes.
                np.matmul(self._windows(2), self._phases, out=self._pair)
                np.copyto(out[i * L : (i + 1) * L], self._pair[0])
            # Keep the last T − 1 input frames in front (through _carry: the ranges may overlap).
            if hist:
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

"""The worker side of a seam: DC removal, silence trimming to a natural pause, equal-power crossfade.

One ``ChunkJoiner`` per request, in the TTS worker (see ``actors/audio/__init__.py`` for where
every stage runs). numpy only.

Latency. Nothing here delays speech by more than the crossfade length: the joiner holds back the
last ``crossfade_ms`` of what it was given (any block may be a chunk's last, and that tail must
meet the next chunk's head), and the trimmer holds back only silence that would be cut if the
chunk ended there (silence beyond the natural pause). Leading silence is cut, so the first chunk of
a request starts *earlier* than the raw engine output (Piper: 35–55 ms of lead silence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from actors.audio.pcm import EMPTY, Audio, DspError, to_mono, validate_rate
from actors.text.punctuation import PAUSE_KINDS

if TYPE_CHECKING:
    from config.settings import DspSettings

__all__ = ["DEFAULT_PAUSES_MS", "ChunkJoiner", "ChunkSpan", "DcBlocker", "equal_power_gains"]


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
            return EMPTY
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
        self._buf: Audio = EMPTY
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
            self._buf = EMPTY  # no speech at all: nothing of this chunk is worth hearing
            return EMPTY, 0
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
            return EMPTY
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
            return EMPTY
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
            self._buf = EMPTY  # silence past the post-roll: trimmed
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
        self._pending: Audio = EMPTY  # output frames held back (the last `crossfade` of the stream)
        self._tail_silent = True  # the held tail is post-roll silence (pad the next chunk's lead)
        self._joined = False  # a chunk ended and no release() since: the next chunk is a seam
        self._tail_span = -1  # the span whose last frames are held (-1: none)
        self._trimmer: _Trimmer | None = None
        self._span: ChunkSpan | None = None
        self._overlap = 0  # frames of held tail the current chunk's head will be mixed with
        self._head: Audio = EMPTY  # the current chunk's first frames, until `_overlap` have come
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
            raise DspError(
                f"unknown pause kind {kind!r}; kinds: {', '.join(PAUSE_KINDS)} (see actors.text.punctuation.pause_kind)"
            )
        held = len(self._pending)
        self._overlap = held
        self._mixed = held == 0
        self._fade_in = held == 0
        self._head = EMPTY
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
            return EMPTY
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
        self._pending = EMPTY
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
            return EMPTY
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
                return EMPTY
            return self._mix()
        return self._release_excess(np.concatenate((self._pending, y)) if len(self._pending) else y)

    def _mix(self) -> Audio:
        """Crossfade the held tail with the head of the current chunk (as much of it as there is)."""
        assert self._span is not None
        head = self._head
        tail = self._pending
        t = min(len(tail), len(head))
        self._mixed = True
        self._head = EMPTY
        if t == 0:
            return EMPTY
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
            return EMPTY
        out = stream[: len(stream) - keep] if keep else stream
        self._pending = stream[len(stream) - keep :] if keep else EMPTY
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
        return EMPTY
    return parts[0] if len(parts) == 1 else np.concatenate(parts)

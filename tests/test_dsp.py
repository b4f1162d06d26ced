"""actors/audio: chunk joiner (crossfade, silence trim, DC), int16 conversion, rates, channels, resampling.

Real measurements on real audio: the seam and trim tests use Piper's own output for the chunk plan
of config/samples/crypt.txt (default voice, generator noise off so the audio is the same every
run). The measurement helpers (``sweep_response``, ``speech_step_p999``, ``seam_steps``) are also
what ``scripts/bench quality`` reports, so a figure in docs/audio-quality.md and a red test here
mean the same thing.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.audio.joiner import DEFAULT_PAUSES_MS, ChunkJoiner, ChunkSpan, DcBlocker, equal_power_gains
from actors.audio.output import Int16Converter, IntegerUpsampler, float_to_int16
from actors.audio.pcm import DspError, to_mono, validate_rate
from actors.audio.resample import Resampler, resample
from actors.text.punctuation import pause_kind
from tests.support.untraced import allocations

F32 = npt.NDArray[np.float32]
RATE = 22050
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------
# Measurements (shared with scripts/bench_quality.py)


@dataclass
class SweepResult:
    """What ``sweep_response`` measured; gains per analysis frame for plots."""

    alias_db: float  # worst frame: energy that is not the sweep, re the sweep's own level
    ripple_db: float  # max - min passband gain
    freqs_hz: npt.NDArray[np.float64]  # instantaneous sweep frequency at each analysed frame's centre
    gain_db: npt.NDArray[np.float64]  # passband frames: fitted gain; transition/stop frames: NaN
    other_db: npt.NDArray[np.float64]  # every analysed frame: residual (not-the-sweep) level re A/√2


def sweep_response(
    in_rate: int,
    out_rate: int,
    process: Callable[[F32], F32] | None = None,
    duration_s: float = 8.0,
    amplitude: float = 0.5,
    frame_ms: float = 20.0,
    passband: float = 0.9,
) -> SweepResult:
    """Resampler response to a linear sine sweep, measured against the analytic sweep.

    Input: ``x(t) = A sin φ(t)``, ``A = 0.5`` (-6 dBFS), instantaneous frequency rising linearly
    from 20 Hz to 0.995 × the input Nyquist over ``duration_s``, 20 ms raised-cosine fades at both
    ends; float32 at ``in_rate``. ``process`` (default: one-shot ``resample``) gives ``y`` at
    ``out_rate``. Because the sweep is analytic, the ideal output at every output sample time
    ``t_n = n / out_rate`` is known exactly. ``y`` is cut into ``frame_ms`` frames (no overlap),
    skipping 50 ms at each end (fades, filter edges). Per frame:

    * **passband frames** (sweep frequency ≥ 50 Hz and ≤ ``passband`` × the lower of the two
      Nyquist frequencies all through the frame): least-squares fit
      ``y ≈ a sin φ(t_n) + b cos φ(t_n)`` (the basis is the exact chirp, so a constant filter
      phase is absorbed and the fit is exact for an ideal resampler). ``gain = √(a² + b²) / A``;
      ``other`` = RMS of ``y − fit``.
    * **stopband frames** (sweep frequency above the output Nyquist all through the frame):
      nothing may come out, so ``other`` = RMS of ``y``: it can only be folded (aliased) energy.
    * transition-band frames (between the two) are not scored: the filter rolls off there by
      design, so the sweep is attenuated, not wrong (and going down, a frequency below the output
      Nyquist does not fold; everything that does fold comes from the stopband frames).

    ``alias_db = 20 log10(max other / (A / √2))`` over passband and stopband frames: the loudest
    non-sweep energy anywhere, aliasing and imaging and distortion alike, relative to the sweep.
    ``ripple_db = max gain_dB − min gain_dB`` over the passband frames.
    """
    n_in = int(duration_s * in_rate)
    f0, f1 = 20.0, 0.995 * in_rate / 2.0
    k = (f1 - f0) / duration_s

    def phase(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return 2.0 * np.pi * (f0 * t + 0.5 * k * t * t)

    t_in = np.arange(n_in, dtype=np.float64) / in_rate
    x = amplitude * np.sin(phase(t_in))
    ramp = int(0.02 * in_rate)
    fade = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
    x[:ramp] *= fade
    x[n_in - ramp :] *= fade[::-1]
    y = (process or (lambda a: resample(a, in_rate, out_rate)))(x.astype(np.float32)).astype(np.float64)
    flen = int(frame_ms * out_rate / 1000)
    skip = int(0.05 * out_rate)
    nyq_out = out_rate / 2.0
    pb_edge = passband * min(in_rate, out_rate) / 2.0
    freqs: list[float] = []
    gains: list[float] = []
    others: list[float] = []
    ref = amplitude / math.sqrt(2.0)
    for start in range(skip, min(len(y), int(duration_s * out_rate)) - skip - flen, flen):
        t = np.arange(start, start + flen, dtype=np.float64) / out_rate
        f_lo, f_hi = f0 + k * t[0], f0 + k * t[-1]
        seg = y[start : start + flen]
        if f_lo >= 50.0 and f_hi <= pb_edge:
            basis = np.stack((np.sin(phase(t)), np.cos(phase(t))), axis=1)
            coef, *_ = np.linalg.lstsq(basis, seg, rcond=None)
            resid = seg - basis @ coef
            gains.append(20.0 * math.log10(math.hypot(coef[0], coef[1]) / amplitude))
            others.append(20.0 * math.log10(max(float(np.sqrt(np.mean(resid**2))), 1e-12) / ref))
        elif f_lo > nyq_out:
            gains.append(float("nan"))
            others.append(20.0 * math.log10(max(float(np.sqrt(np.mean(seg**2))), 1e-12) / ref))
        else:
            continue
        freqs.append(0.5 * (f_lo + f_hi))
    g = np.array(gains)
    o = np.array(others)
    pb = g[~np.isnan(g)]
    return SweepResult(
        alias_db=float(o.max()),
        ripple_db=float(pb.max() - pb.min()),
        freqs_hz=np.array(freqs),
        gain_db=g,
        other_db=o,
    )


def speech_step_p999(chunks: Sequence[F32], frame: int = 110, floor_db: float = -50.0) -> float:
    """99.9th percentile of |x[n+1] − x[n]| inside the speech of ``chunks`` (5 ms frames above ``floor_db``)."""
    steps = []
    for a in chunks:
        n = len(a) // frame
        fr = np.asarray(a[: n * frame], dtype=np.float64).reshape(n, frame)
        loud = np.mean(fr**2, axis=1) > 10.0 ** (floor_db / 10.0)
        steps.append(np.abs(np.diff(fr[loud], axis=1)).reshape(-1))
    return float(np.percentile(np.concatenate(steps), 99.9))


def seam_steps(y: F32, seams: Sequence[tuple[int, int]], margin: int = 44) -> list[float]:
    """Largest |y[n+1] − y[n]| around each seam ``(start, overlap)``: from ``margin`` frames before
    the seam (or its crossfade) starts to ``margin`` frames after it ends (44 frames = 2 ms)."""
    out = []
    for start, overlap in seams:
        lo, hi = max(0, start - margin), min(len(y), start + max(overlap, 1) + margin)
        out.append(float(np.abs(np.diff(y[lo:hi].astype(np.float64))).max()))
    return out


def joiner_seams(spans: Sequence[ChunkSpan]) -> list[tuple[int, int]]:
    return [(s.start, s.overlap_in) for s in spans[1:] if s.end > s.start]


# ------------------------------------------------------------------------------------------------
# Real Piper audio


@dataclass
class PiperChunks:
    texts: list[str]
    kinds: list[str]
    blocks: list[list[F32]]  # the engine's own blocks, per chunk

    @property
    def audio(self) -> list[F32]:
        return [np.concatenate(b) for b in self.blocks]


@cache
def crypt_chunks() -> PiperChunks:
    """The crypt.txt chunk plan, synthesized by Piper with generator noise off (deterministic)."""
    from actors.text.chunker import SpeakingRate, plan_chunks
    from actors.tts.base import CancelToken
    from actors.tts.piper import PiperEngine

    engine = PiperEngine(noise_scale=0.0, noise_w_scale=0.0)
    info = engine.load_voice("")
    assert info.sample_rate == RATE
    text = (ROOT / "config" / "samples" / "crypt.txt").read_text(encoding="utf-8")
    plans = plan_chunks(text, SpeakingRate(chars_per_s=info.chars_per_s))
    blocks = [list(engine.synthesize(p.text, "", CancelToken())) for p in plans]
    engine.close()
    return PiperChunks([p.text for p in plans], [pause_kind(p.boundary, p.text) for p in plans], blocks)


@pytest.fixture(scope="module")
def piper() -> PiperChunks:
    return crypt_chunks()


def run_joiner(
    joiner: ChunkJoiner,
    chunks: Sequence[Sequence[F32]],
    kinds: Sequence[str],
    release_after: Sequence[bool] = (),
) -> F32:
    """Feed chunks (each a list of blocks) through ``joiner``; release after the last and where asked."""
    out: list[F32] = []
    for i, (blocks, kind) in enumerate(zip(chunks, kinds, strict=True)):
        joiner.start_chunk(kind)
        out.extend(joiner.feed(b) for b in blocks)
        out.append(joiner.end_chunk())
        if i == len(chunks) - 1 or (i < len(release_after) and release_after[i]):
            out.append(joiner.release())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def split(a: F32, cuts: Sequence[int]) -> list[F32]:
    edges = sorted({0, len(a), *(c % (len(a) + 1) for c in cuts)})
    return [a[lo:hi] for lo, hi in itertools.pairwise(edges)]


HEAVY = ("soxr", "torch", "onnxruntime", "piper", "TTS")


def heavy_modules(module: str) -> list[str]:
    """The heavy modules importing ``module`` brings into a fresh interpreter."""
    import subprocess
    import sys

    code = f"import json, sys, {module}; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


@pytest.mark.parametrize("module", ["actors.audio.output", "actors.audio_consumer"])
def test_callback_side_imports_no_soxr_and_no_engine(module: str) -> None:
    """The audio consumer process imports the callback side: no soxr (the worker resamples), no
    engine, no torch, no onnxruntime may come with it."""
    assert heavy_modules(module) == []


def test_worker_side_imports_no_engine_and_the_check_sees_soxr() -> None:
    """The joiner and the resampler run in the worker: soxr is theirs, engines are not. (That the
    check reports soxr here shows it would catch soxr on the callback side.)"""
    assert heavy_modules("actors.audio.joiner") == []
    assert heavy_modules("actors.audio.resample") == ["soxr"]


# ------------------------------------------------------------------------------------------------
# Crossfade


def test_equal_power_gains_sum_of_squares_is_one() -> None:
    for n in (1, 2, 220, 662, 1102):
        g_out, g_in = equal_power_gains(n)
        np.testing.assert_allclose(g_out**2 + g_in**2, 1.0, atol=1e-12)
        assert np.all(np.diff(g_out) < 0) and np.all(np.diff(g_in) > 0)
        np.testing.assert_allclose(g_out, g_in[::-1], atol=1e-12)  # symmetric: the seam's centre is at n/2


def test_overlap_is_the_equal_power_mix_and_nothing_else_changes() -> None:
    """Trim and DC off: the output is the chunks laid end to end with the last F frames of each
    overlapped with the first F of the next: exactly tail·cos + head·sin there, untouched elsewhere
    (except the edge fades at the start and at release)."""
    rng = np.random.default_rng(7)
    chunks = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (5000, 3001, 7777)]
    joiner = ChunkJoiner(RATE, 30.0, trim=False, dc_block=False)
    y = run_joiner(joiner, [[c] for c in chunks], ["sentence"] * 3)
    f = joiner.crossfade
    assert f == 662
    assert len(y) == sum(map(len, chunks)) - 2 * f
    g_out, g_in = equal_power_gains(f)
    pos = 0
    for i, c in enumerate(chunks):
        span = joiner.spans[i]
        assert span.start == pos and span.end == pos + len(c)
        body_lo = f if i else joiner.edge
        body_hi = len(c) - f if i < 2 else len(c) - joiner.edge
        np.testing.assert_array_equal(y[pos + body_lo : pos + body_hi], c[body_lo:body_hi])
        if i:
            mixed = (chunks[i - 1][-f:].astype(np.float64) * g_out + c[:f].astype(np.float64) * g_in).astype(np.float32)
            np.testing.assert_allclose(y[pos : pos + f], mixed, atol=1e-7)
            assert span.overlap_in == f and joiner.spans[i - 1].overlap_out == f
        pos += len(c) - f


def test_late_next_chunk_loses_nothing() -> None:
    """N+1 late (release() after N): N's held tail comes out with a short fade-out, N+1 starts
    with a short fade-in, no overlap: every frame of both chunks is there, in order."""
    rng = np.random.default_rng(8)
    a, b = ((rng.standard_normal(n) * 0.1).astype(np.float32) for n in (4000, 4500))
    joiner = ChunkJoiner(RATE, 30.0, trim=False, dc_block=False)
    joiner.start_chunk("sentence")
    first = np.concatenate([joiner.feed(a), joiner.end_chunk()])
    assert len(first) == len(a) - joiner.crossfade  # the tail is held for the next chunk's head
    assert joiner.held_frames == joiner.crossfade
    tail = joiner.release()
    assert len(tail) == joiner.crossfade and joiner.held_frames == 0
    joiner.start_chunk("end")
    second = np.concatenate([joiner.feed(b), joiner.end_chunk(), joiner.release()])
    y = np.concatenate([first, tail, second])
    assert len(y) == len(a) + len(b)
    e = joiner.edge
    np.testing.assert_array_equal(y[e : len(a) - e], a[e:-e])
    np.testing.assert_array_equal(y[len(a) + e : -e], b[e:-e])
    # The fades are fades of the same samples: no frame replaced, none dropped.
    ratio = y[len(a) - e : len(a)] / a[-e:]
    assert np.all((ratio > 0) & (ratio < 1)) and np.all(np.diff(ratio) < 0)
    assert joiner.spans[0].overlap_out == 0 and joiner.spans[1].overlap_in == 0
    assert joiner.spans[1].start == len(a)


@pytest.mark.parametrize("block", [0, 4096, 37])
def test_joiner_holds_back_no_more_than_the_crossfade(piper: PiperChunks, block: int) -> None:
    """Latency: after each engine block (Piper's own, 4096 or 37 frames), everything but the
    crossfade tail (and silence that the chunk's end may still cut) has come out."""
    joiner = ChunkJoiner(RATE, 30.0)
    got = 0
    for blocks, kind in zip(piper.blocks, piper.kinds, strict=True):
        joiner.start_chunk(kind)
        if block:
            whole = np.concatenate(blocks)
            blocks = [whole[i : i + block] for i in range(0, len(whole), block)]
        for b in blocks:
            got += len(joiner.feed(b))
            assert joiner.held_frames <= joiner.crossfade
            assert got == joiner.frames_out
        got += len(joiner.end_chunk())
    assert got + len(joiner.release()) == joiner.spans[-1].end


def test_short_and_silent_chunks_keep_the_accounting() -> None:
    """A chunk shorter than the crossfade is overlapped as far as it goes (the next seam then
    reaches back into the chunk before it); a chunk with no sound at all adds nothing."""
    rng = np.random.default_rng(4)
    a, short, c = ((rng.standard_normal(n) * 0.1).astype(np.float32) for n in (5000, 100, 5000))
    joiner = ChunkJoiner(RATE, 30.0, trim=False, dc_block=False)
    y = run_joiner(joiner, [[a], [short], [c]], ["word"] * 3)
    _, s1, s2 = joiner.spans
    assert s1.overlap_in == 100 and s1.start == 4900 and s1.end == 5000
    assert s2.overlap_in == 662 and s2.start == 5000 - 662 and s1.overlap_out == 662
    assert len(y) == 5000 + 100 + 5000 - 100 - 662 == s2.end

    speech = ChunkJoiner(RATE, 30.0)
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / RATE)).astype(np.float32)
    silent = np.zeros(3000, np.float32)
    y = run_joiner(speech, [[tone], [silent], [tone]], ["clause", "sentence", "end"])
    t0, t1, t2 = speech.spans
    assert t1.start == t1.end and t1.speech_start == -1 and t1.kept == 0
    assert t2.overlap_in == speech.crossfade and t0.overlap_out == speech.crossfade
    assert len(y) == t2.end == (t0.end - t0.start) + (t2.end - t2.start) - t2.overlap_in


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.lists(st.integers(0, 200_000), max_size=12), min_size=3, max_size=3),
    crossfade_ms=st.sampled_from([0.0, 10.0, 30.0, 50.0]),
    trim=st.booleans(),
    release_after=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_any_block_split_gives_the_same_output(
    cuts: list[list[int]], crossfade_ms: float, trim: bool, release_after: list[bool]
) -> None:
    """Random block sizes give bit-identical output and spans to whole chunks, and the output is
    exactly the sum of the chunks' kept frames and pads minus the overlaps: nothing is duplicated
    or missing."""
    pc = crypt_chunks()
    audio, kinds = pc.audio[:3], pc.kinds[:3]
    whole = ChunkJoiner(RATE, crossfade_ms, trim=trim)
    y_whole = run_joiner(whole, [[a] for a in audio], kinds, release_after)
    pieces = ChunkJoiner(RATE, crossfade_ms, trim=trim)
    y_pieces = run_joiner(pieces, [split(a, c) for a, c in zip(audio, cuts, strict=True)], kinds, release_after)
    assert len(y_pieces) == len(y_whole)
    np.testing.assert_array_equal(y_pieces, y_whole)
    assert pieces.spans == whole.spans
    spans = whole.spans
    assert len(y_whole) == spans[-1].end == whole.frames_out
    assert len(y_whole) == sum(s.end - s.start for s in spans) - sum(s.overlap_in for s in spans)
    for s in spans:
        assert s.end - s.start == s.lead_pad + s.kept + s.trail_pad
        if not trim:
            assert s.kept == s.engine_frames and s.lead_pad == s.trail_pad == 0
    for prev, nxt, released in zip(spans, spans[1:], release_after, strict=False):
        assert nxt.start == prev.end - nxt.overlap_in
        assert prev.overlap_out == nxt.overlap_in
        if released:
            assert nxt.overlap_in == 0


# ------------------------------------------------------------------------------------------------
# Silence trimming and seams, on real Piper audio


def test_trimming_keeps_all_speech_and_changes_nothing_outside_the_fades(piper: PiperChunks) -> None:
    """Independent speech detector: every sample louder than -45 dBFS in a raw chunk must be inside
    the kept range, and the joined output there correlates ≥ 0.999 with the raw engine output
    outside the crossfade windows (only the 10 Hz DC blocker touches it)."""
    joiner = ChunkJoiner(RATE, 30.0)
    y = run_joiner(joiner, piper.blocks, piper.kinds)
    loud_level = 10.0 ** (-45.0 / 20.0)
    for raw, span in zip(piper.audio, joiner.spans, strict=True):
        loud = np.flatnonzero(np.abs(raw) > loud_level)
        assert span.src_start <= loud[0] and loud[-1] < span.src_start + span.kept
        lo = max(span.overlap_in, span.lead_pad)
        hi = span.lead_pad + span.kept - max(0, span.overlap_out - span.trail_pad)
        out = y[span.start + lo : span.start + hi].astype(np.float64)
        ref = raw[span.src_start + lo - span.lead_pad : span.src_start + hi - span.lead_pad].astype(np.float64)
        assert np.corrcoef(out, ref)[0, 1] >= 0.999


def _silence_runs(y: F32, frame: int = 110, floor_db: float = -50.0) -> list[tuple[int, int]]:
    n = len(y) // frame
    quiet = np.mean(y[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1) <= 10.0 ** (floor_db / 10.0)
    runs, i = [], 0
    while i < n:
        if quiet[i]:
            j = i
            while j < n and quiet[j]:
                j += 1
            runs.append((i * frame, j * frame))
            i = j
        else:
            i += 1
    return runs


def test_pause_at_each_seam_is_the_pause_of_its_boundary(piper: PiperChunks) -> None:
    """Measured on the output with its own detector: the silence at each seam lasts the pause of
    the boundary kind that ended the chunk (±1 analysis frame each side), whatever the engine left."""
    joiner = ChunkJoiner(RATE, 30.0)
    y = run_joiner(joiner, piper.blocks, piper.kinds)
    runs = _silence_runs(y)
    for span in joiner.spans[1:]:
        run = next(r for r in runs if r[0] <= span.start + span.overlap_in // 2 < r[1])
        prev_kind = joiner.spans[span.index - 1].kind
        want = joiner.pause_frames(prev_kind)
        assert abs((run[1] - run[0]) - want) <= 2 * 110, (prev_kind, run, want)
    assert piper.kinds == ["conjunction", "clause", "clause", "sentence", "end"]  # the plan this test reads


def test_first_chunk_starts_sooner_than_the_engine(piper: PiperChunks) -> None:
    joiner = ChunkJoiner(RATE, 30.0, lead_ms=10.0)
    y = run_joiner(joiner, piper.blocks[:1], piper.kinds[:1])
    raw = piper.audio[0]
    first_loud = lambda a: int(np.flatnonzero(np.abs(a) > 10.0 ** (-45.0 / 20.0))[0])  # noqa: E731
    assert first_loud(y) < first_loud(raw)
    assert first_loud(y) <= joiner.lead + 2 * joiner.frame


def test_real_seams_have_no_step_larger_than_speech_itself(piper: PiperChunks) -> None:
    """Seam-step metric: the largest sample-to-sample step around each seam is at most the
    speech's own 99.9th-percentile step (plus 10 %)."""
    ref = speech_step_p999(piper.audio)
    for crossfade_ms in (0.0, 10.0, 30.0, 50.0):
        joiner = ChunkJoiner(RATE, crossfade_ms)
        y = run_joiner(joiner, piper.blocks, piper.kinds)
        steps = seam_steps(y, joiner_seams(joiner.spans))
        assert len(steps) == 4
        assert max(steps) <= 1.1 * ref, (crossfade_ms, [s / ref for s in steps])


def _cut_mid_sound(a: F32, rng: np.random.Generator) -> F32:
    """A piece of ``a`` that starts at a positive peak and ends at a negative one, both loud:
    the worst seam an engine that stops mid-waveform can make."""
    loud = np.flatnonzero(np.abs(a) > 0.4)
    lo = int(loud[len(loud) // 6 + int(rng.integers(0, 20))])
    hi = int(loud[-len(loud) // 6 - int(rng.integers(0, 20))])
    lo += int(np.argmax(a[lo : lo + 200]))
    hi -= 200 - int(np.argmin(a[hi - 200 : hi]))
    return a[lo : hi + 1]


def test_crossfade_smooths_seams_cut_mid_sound(piper: PiperChunks) -> None:
    """Chunks that start and end mid-waveform (peak against opposite peak): plain concatenation
    makes steps far above anything in speech (> 2× its 99.9th-percentile step); the crossfade keeps
    them within 1.5× it and below the speech's own largest step. (Not 1.1× as for real seams: two
    loud waveforms summed with equal-power gains can step by up to √2 × either one's local step;
    measured 1.07-1.27× over several cut positions.)"""
    rng = np.random.default_rng(11)
    pieces = [_cut_mid_sound(a, rng) for a in piper.audio]
    ref = speech_step_p999(piper.audio)
    plain = np.concatenate(pieces)
    bounds = np.cumsum([len(p) for p in pieces])[:-1]
    own_max = max(float(np.abs(np.diff(a)).max()) for a in piper.audio)
    plain_steps = seam_steps(plain, [(int(b), 0) for b in bounds])
    assert min(plain_steps) > 2.0 * ref  # the test has teeth: these seams click without a crossfade
    for crossfade_ms in (10.0, 30.0, 50.0):
        joiner = ChunkJoiner(RATE, crossfade_ms)
        y = run_joiner(joiner, [[p] for p in pieces], piper.kinds)
        spans = joiner.spans
        assert all(s.overlap_in == joiner.crossfade for s in spans[1:])  # sound meets sound: no pad
        steps = seam_steps(y, joiner_seams(spans))
        assert max(steps) <= min(1.5 * ref, own_max), (crossfade_ms, [s / ref for s in steps])


def test_dc_offset_is_removed_per_chunk_without_steps(piper: PiperChunks) -> None:
    """Two chunks with opposite DC offsets (+0.05, -0.04): each comes out with no offset, from its
    first sample on, and the seam between them has no step."""
    raw = piper.audio[:3]
    offsets = (0.05, -0.04, 0.02)
    shifted = [(a + np.float32(d)).astype(np.float32) for a, d in zip(raw, offsets, strict=True)]
    clean = ChunkJoiner(RATE, 30.0)
    y_clean = run_joiner(clean, [[a] for a in raw], piper.kinds[:3])
    joiner = ChunkJoiner(RATE, 30.0)
    y = run_joiner(joiner, [[a] for a in shifted], piper.kinds[:3])
    assert len(y) == len(y_clean)
    assert np.abs(y - y_clean).max() < 2e-3
    for span in joiner.spans:
        assert abs(float(np.mean(y[span.start : span.end]))) < 1e-3
    assert max(seam_steps(y, joiner_seams(joiner.spans))) <= 1.1 * speech_step_p999(raw)
    undc = ChunkJoiner(RATE, 30.0, dc_block=False, trim=False)
    y_off = run_joiner(undc, [[a] for a in shifted], piper.kinds[:3])
    assert abs(float(np.mean(y_off[: len(shifted[0]) // 2]))) > 0.04  # without the blocker it is there


def test_dc_blocker_removes_a_constant_from_the_first_sample() -> None:
    blocker = DcBlocker(RATE)
    x = np.full(5000, 0.08, dtype=np.float32)
    assert np.abs(blocker.process(x)).max() < 1e-6
    blocker.reset()
    tone = (0.3 * np.sin(2 * np.pi * 200 * np.arange(RATE) / RATE) + 0.08).astype(np.float32)
    y = blocker.process(tone)
    assert abs(float(np.mean(y))) < 1e-3
    gain = np.sqrt(np.mean(y[2000:].astype(np.float64) ** 2)) / (0.3 / math.sqrt(2))
    assert abs(20 * math.log10(gain)) < 0.02  # the speech band is untouched


def test_pause_kind_from_plan_or_text() -> None:
    assert pause_kind("sentence") == "sentence" and pause_kind("end", "Who?") == "end"
    assert pause_kind("", "It ends here.") == "sentence"
    assert pause_kind("", 'He said "stop!"') == "sentence"
    assert pause_kind("", "and then,") == "clause"
    assert pause_kind("", "a word") == "word"
    assert pause_kind("", "The end.\n\n") == "paragraph"
    assert set(DEFAULT_PAUSES_MS) == {"paragraph", "sentence", "clause", "conjunction", "word", "end"}


def test_joiner_misuse_and_settings_are_reported() -> None:
    joiner = ChunkJoiner(RATE)
    with pytest.raises(DspError, match="start_chunk"):
        joiner.feed(np.zeros(10, np.float32))
    with pytest.raises(DspError, match="unknown pause kind 'pause'"):
        joiner.start_chunk("pause")
    joiner.start_chunk("word")
    with pytest.raises(DspError, match="end_chunk"):
        joiner.release()
    with pytest.raises(DspError, match="end_chunk"):
        joiner.start_chunk("word")
    with pytest.raises(DspError, match="crossfade_ms = 80"):
        ChunkJoiner(RATE, 80.0)
    with pytest.raises(DspError, match="48000 Hz"):
        ChunkJoiner(48000)

    from config.settings import Settings

    configured = ChunkJoiner.from_settings(Settings().dsp, RATE)
    assert configured.crossfade == round(Settings().dsp.crossfade_ms * RATE / 1000)


def test_reset_after_cancel_drops_everything() -> None:
    joiner = ChunkJoiner(RATE, 30.0, trim=False)
    joiner.start_chunk("sentence")
    joiner.feed(np.ones(3000, np.float32) * 0.1)
    joiner.reset()
    assert joiner.held_frames == 0 and joiner.frames_out == 0 and joiner.spans == [] and not joiner.in_chunk
    joiner.start_chunk("sentence")
    out = np.concatenate([joiner.feed(np.full(2000, 0.2, np.float32)), joiner.end_chunk(), joiner.release()])
    assert len(out) == 2000


# ------------------------------------------------------------------------------------------------
# float32 → int16


def test_int16_clips_and_never_wraps() -> None:
    x = np.array([0.0, 1.0, -1.0, 1.0001, -1.0001, 1.5, -1.5, 7.0, -7.0, np.inf, -np.inf, np.nan], dtype=np.float32)
    y = float_to_int16(x)
    assert y.tolist() == [0, 32767, -32767, 32767, -32768, 32767, -32768, 32767, -32768, 32767, -32768, 0]
    ramp = np.linspace(-3.0, 3.0, 200_001, dtype=np.float32)
    r = float_to_int16(ramp)
    assert np.all(np.diff(r.astype(np.int32)) >= 0)  # monotonic: a wrap would jump down
    np.testing.assert_array_equal(r, np.clip(np.rint(ramp * np.float32(32767)), -32768, 32767).astype(np.int16))
    for dither in (False, True):
        full = float_to_int16(np.tile(np.array([1.0, -1.0, 1.2, -1.2], np.float32), 50_000), dither=dither, seed=1)
        assert full.max() == 32767 and full.min() == -32768
        assert np.all(full[0::4] >= 32766) and np.all(full[2::4] == 32767)
        assert np.all(full[1::4] <= -32766) and np.all(full[3::4] == -32768)


def test_nan_becomes_silence_with_and_without_dither() -> None:
    """NaN → 0 (not the -32768 a bare clip-and-cast gives: a full-scale click), on every path,
    its neighbours untouched, and without a cast warning (the callback must never warn)."""
    import warnings

    x = np.array([0.5, np.nan, -0.5, np.nan, np.nan, 0.25], dtype=np.float32)
    for dither in (False, True):
        out = np.full(len(x), 123, np.int16)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Int16Converter(4, dither=dither, seed=5).convert(x, out)  # 4 < len(x): two passes
        assert out[[1, 3, 4]].tolist() == [0, 0, 0], dither
        clean = float_to_int16(np.nan_to_num(x, nan=0.0), dither=dither, seed=5)
        if not dither:
            np.testing.assert_array_equal(out, clean)
        assert np.all(np.abs(out[[0, 2, 5]].astype(np.int32) - [16384, -16384, 8192]) <= 1), dither


def test_tpdf_dither_statistics() -> None:
    """TPDF dither: rounding error e = y − 32767·x has mean 0, variance 1/4 LSB² (1/6 dither + 1/12
    rounding) and |e| ≤ 1.5 LSB, whatever the input's position between two steps."""
    n = 200_000
    for frac in (0.0, 0.25, 0.5, 0.9):
        x = np.full(n, (1000.0 + frac) / 32767.0, dtype=np.float32)
        y = float_to_int16(x, dither=True, seed=3).astype(np.float64)
        err = y - x.astype(np.float64) * 32767.0
        assert abs(err.mean()) < 0.01, frac
        assert abs(err.var() - 0.25) < 0.01, frac
        assert np.abs(err).max() <= 1.5 + 1e-3, frac
    plain = float_to_int16(np.full(1000, 1000.25 / 32767.0, np.float32)).astype(np.float64)
    assert np.all(plain == 1000.0)  # without dither: a constant bias of -0.25 LSB, as expected


def test_int16_converter_does_not_allocate() -> None:
    """The audio-callback path: 1000 conversions of a 4096-frame block raise the traced peak by
    less than one float32 copy of the block would (16 KiB)."""
    x = (np.sin(np.arange(4096) / 10.0) * 0.9).astype(np.float32)
    out = np.empty(4096, np.int16)
    for dither in (False, True):
        conv = Int16Converter(4096, dither=dither, seed=0)
        conv.convert(x, out)
        with allocations() as allocated:
            for _ in range(1000):
                conv.convert(x, out)
        assert allocated.peak < 4096, (dither, allocated.peak)
    np.testing.assert_array_equal(out if not dither else float_to_int16(x), float_to_int16(x))


def test_int16_converter_handles_blocks_longer_than_its_scratch() -> None:
    x = np.linspace(-1.2, 1.2, 10_000, dtype=np.float32)
    out = np.empty(10_000, np.int16)
    Int16Converter(256).convert(x, out)
    np.testing.assert_array_equal(out, float_to_int16(x))
    with pytest.raises(DspError, match="int16"):
        Int16Converter(256).convert(x, np.empty(10, np.int16))


# ------------------------------------------------------------------------------------------------
# Rates and channels


def test_internal_rates_are_16_to_24_khz() -> None:
    for ok in (16000, 22050, 24000, np.int64(22050), 22050.0):
        assert validate_rate(ok) == int(ok)
    for bad in (48000, 44100, 15999, 24001, 8000):
        with pytest.raises(DspError, match=rf"{bad} Hz is outside the internal range 16000-24000 Hz"):
            validate_rate(bad)
    for junk in (22050.5, "22050", None, True, float("nan")):
        with pytest.raises(DspError):
            validate_rate(junk)


def test_mono_enforcement_and_downmix() -> None:
    left = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    right = np.linspace(0.5, -0.3, 1000, dtype=np.float32)
    want = (left + right) / 2
    np.testing.assert_allclose(to_mono(np.stack([left, right], axis=1)), want, atol=1e-7)  # frames first
    np.testing.assert_allclose(to_mono(np.stack([left, right])), want, atol=1e-7)  # channels first
    np.testing.assert_array_equal(to_mono(left[:, None]), left)
    np.testing.assert_array_equal(to_mono(left[None, :]), left)
    assert to_mono(left.astype(np.float64)).dtype == np.float32
    np.testing.assert_allclose(to_mono(np.array([16384, -32768], np.int16)), [0.5, -1.0])
    with pytest.raises(DspError, match=r"shape \(1000, 3\) has more than 2 channels"):
        to_mono(np.zeros((1000, 3), np.float32))
    with pytest.raises(DspError, match=r"shape \(6, 1000\) has more than 2 channels"):
        to_mono(np.zeros((6, 1000), np.float32))
    with pytest.raises(DspError, match=r"shape \(2, 10, 2\) is not audio"):
        to_mono(np.zeros((2, 10, 2), np.float32))
    with pytest.raises(DspError, match=r"shape \(\) is not audio"):
        to_mono(np.float32(0.5))
    with pytest.raises(DspError, match="dtype int32"):
        to_mono(np.zeros(10, np.int32))
    joiner = ChunkJoiner(RATE, 0.0, trim=False, dc_block=False)
    joiner.start_chunk("end")
    out = np.concatenate([joiner.feed(np.stack([left, right], axis=1)), joiner.end_chunk()])
    np.testing.assert_allclose(out, want, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# Resampling


def test_resampler_24k_to_16k_alias_and_ripple() -> None:
    """Swept sine 24 → 16 kHz (measurement defined in ``sweep_response``): every non-sweep
    component ≤ -80 dB re the sweep, passband (50 Hz – 7.2 kHz) ripple ≤ 0.1 dB, for the one-shot
    and the streaming resampler alike."""
    one_shot = sweep_response(24000, 16000)
    assert one_shot.alias_db <= -80.0, one_shot.alias_db
    assert one_shot.ripple_db <= 0.1, one_shot.ripple_db
    assert np.isnan(one_shot.gain_db).sum() > 50  # the stopband was really scored
    rng = np.random.default_rng(5)

    def streamed(x: F32) -> F32:
        rs = Resampler(24000, 16000)
        parts, i = [], 0
        while i < len(x):
            n = int(rng.integers(1, 4000))
            parts.append(rs.process(x[i : i + n]))
            i += n
        parts.append(rs.flush())
        return np.concatenate(parts)

    stream = sweep_response(24000, 16000, process=streamed)
    assert stream.alias_db <= -80.0 and stream.ripple_db <= 0.1
    for in_rate, out_rate in ((22050, 24000), (22050, 48000), (22050, 16000)):
        other = sweep_response(in_rate, out_rate, duration_s=4.0)
        assert other.alias_db <= -80.0 and other.ripple_db <= 0.1, (in_rate, out_rate, other.alias_db)


def test_sweep_measurement_catches_a_bad_resampler() -> None:
    """The measurement has teeth: decimating by plain sample dropping (no anti-alias filter) and a
    linear-interpolating resampler fail it."""
    dropped = sweep_response(24000, 12000, process=lambda x: x[::2].copy(), duration_s=2.0)
    assert dropped.alias_db > -10.0
    linear = sweep_response(
        24000,
        16000,
        process=lambda x: np.interp(np.arange(len(x) * 2 // 3) * 1.5, np.arange(len(x)), x).astype(np.float32),
        duration_s=2.0,
    )
    assert linear.alias_db > -40.0 and linear.ripple_db > 0.1


def test_streaming_resampler_matches_one_shot_and_reports_delay() -> None:
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(RATE) * 0.1).astype(np.float32)
    for out_rate in (24000, 48000, 16000):
        rs = Resampler(RATE, out_rate)
        parts = [rs.process(x[:3000])]
        assert rs.delay_frames > 0 and rs.frames_out == len(parts[0]) < 3000 * out_rate / RATE
        parts += [rs.process(x[3000:])]
        parts.append(rs.flush())
        y = np.concatenate(parts)
        one = resample(x, RATE, out_rate)
        assert abs(len(y) - round(len(x) * out_rate / RATE)) <= 1
        np.testing.assert_array_equal(y, one)
        again = np.concatenate([rs.process(x), rs.flush()])  # flushed: ready for a fresh stream
        np.testing.assert_array_equal(again, one)
    same = Resampler(RATE, RATE)
    np.testing.assert_array_equal(same.process(x), x)
    with pytest.raises(DspError, match="output rate 0 Hz"):
        Resampler(RATE, 0)


# ------------------------------------------------------------------------------------------------
# Whole-factor upsampling (the audio callback's, when the device refuses the ring rate)

UPSAMPLE_CASES = ((22050, 2), (24000, 2), (16000, 3))  # → 44.1, 48, 48 kHz


def tone_fit(y: npt.ArrayLike, freq_hz: float, rate: int, amplitude: float, skip: int) -> tuple[float, float]:
    """``(gain_db, other_db)`` of ``y`` (at ``rate``) against a tone of ``freq_hz``: a least-squares
    fit of sin/cos of the exact tone over ``y[skip:-skip]`` (so any constant delay is absorbed);
    ``other_db`` = RMS of everything else — images, aliases, distortion, noise — re the tone's own
    RMS at the input (``amplitude / √2``)."""
    seg = np.asarray(y, dtype=np.float64)[skip:-skip]
    t = (np.arange(len(seg)) + skip) / rate
    basis = np.stack((np.sin(2 * np.pi * freq_hz * t), np.cos(2 * np.pi * freq_hz * t)), axis=1)
    coef, *_ = np.linalg.lstsq(basis, seg, rcond=None)
    resid = seg - basis @ coef
    gain = 20.0 * math.log10(math.hypot(coef[0], coef[1]) / amplitude)
    other = 20.0 * math.log10(max(float(np.sqrt(np.mean(resid**2))), 1e-12) / (amplitude / math.sqrt(2.0)))
    return gain, other


def upsampler_tone_scan(
    rate: int, factor: int, process: Callable[[F32], F32], amplitude: float = 0.5
) -> tuple[float, float, float]:
    """Tones across the input band through ``process`` (×``factor``): ``(passband ripple dB, worst
    non-tone level dB for tones up to 0.45 × rate, worst for tones in 0.45–0.4975 × rate)``.

    A tone's images lie at k·rate ± f, all above the input Nyquist; a correct interpolator
    passes the tone and nothing else, so the fit's residual is the image (and noise) level.
    Tones in the transition band may themselves be attenuated, but their images must not pass.
    """
    n = int(0.25 * rate)
    gains, pass_other, trans_other = [], [], []
    freqs = [*np.geomspace(50.0, 0.45 * rate, 24), *np.linspace(0.455 * rate, 0.4975 * rate, 8)]
    for f in freqs:
        x = (amplitude * np.sin(2 * np.pi * f * np.arange(n) / rate)).astype(np.float32)
        gain, other = tone_fit(process(x), f, rate * factor, amplitude, skip=int(0.02 * rate * factor))
        if f <= 0.45 * rate:
            gains.append(gain)
            pass_other.append(other)
        else:
            trans_other.append(other)
    return max(gains) - min(gains), max(pass_other), max(trans_other)


def upsampler_response_db(up: IntegerUpsampler, nfft: int = 1 << 17) -> tuple[npt.NDArray[np.float64], ...]:
    """``(freq as a fraction of the input rate, gain dB)`` of the float32 taps the upsampler uses."""
    taps = up.taps.astype(np.float32).astype(np.float64)
    mag = np.abs(np.fft.rfft(taps, nfft)) / up.factor
    return np.arange(len(mag)) * up.factor / nfft, 20.0 * np.log10(np.maximum(mag, 1e-15))


def test_upsampler_design_ripple_stopband_linear_phase() -> None:
    """The filter itself: passband (to 0.45 × the input rate) ripple ≤ 0.1 dB, stopband (from the
    input's Nyquist) ≥ 70 dB down, symmetric taps (linear phase) centred on a whole output sample."""
    for factor in (2, 3, 4):
        up = IntegerUpsampler(factor)
        f, gain = upsampler_response_db(up)
        passband, stopband = gain[f <= 0.45], gain[f >= 0.5]
        assert passband.max() - passband.min() <= 0.1, (factor, passband.max() - passband.min())
        assert abs(passband.mean()) < 0.01  # unit gain
        assert stopband.max() <= -70.0, (factor, stopband.max())
        np.testing.assert_array_equal(up.taps, up.taps[::-1])
        assert len(up.taps) == factor * up.taps_per_phase - 1 and len(up.taps) % 2 == 1
        assert up.delay_frames_out == (len(up.taps) - 1) // 2


def test_upsampler_tones_pass_flat_and_leave_no_images() -> None:
    """Measured through ``process_into`` (float32 arithmetic): tones 50 Hz – 0.45 × rate within
    0.1 dB of each other and nothing else above -70 dB re the tone; tones up to 0.4975 × rate leave
    no image above -70 dB either."""
    for rate, factor in UPSAMPLE_CASES:
        ripple, pass_other, trans_other = upsampler_tone_scan(rate, factor, IntegerUpsampler(factor).process)
        assert ripple <= 0.1, (rate, factor, ripple)
        assert pass_other <= -70.0, (rate, factor, pass_other)
        assert trans_other <= -70.0, (rate, factor, trans_other)


def test_upsampler_sweep_alias_and_ripple() -> None:
    """The resampler sweep (``sweep_response``) through the upsampler: every non-sweep component
    ≤ -70 dB re the sweep, passband ripple ≤ 0.1 dB (50 Hz – 0.45 × the input rate)."""

    def aligned(factor: int) -> Callable[[F32], F32]:
        def process(x: F32) -> F32:  # the sweep is scored against t = n / out_rate: take the delay out
            up = IntegerUpsampler(factor)
            y = up.process(np.concatenate([x, np.zeros(up.taps_per_phase, np.float32)]))
            return y[up.delay_frames_out : up.delay_frames_out + len(x) * factor]

        return process

    for rate, factor in UPSAMPLE_CASES:
        result = sweep_response(rate, rate * factor, process=aligned(factor), duration_s=3.0)
        assert result.alias_db <= -70.0, (rate, factor, result.alias_db)
        assert result.ripple_db <= 0.1, (rate, factor, result.ripple_db)


def test_upsampler_measurement_catches_a_bad_interpolator() -> None:
    """The tone scan has teeth: sample repetition (zero-order hold) and linear interpolation leave
    images far above -70 dB and droop in the passband."""
    hold = upsampler_tone_scan(22050, 2, lambda x: np.repeat(x, 2))
    assert hold[0] > 1.0 and hold[1] > -30.0

    def linear(x: F32) -> F32:
        return np.interp(np.arange(2 * len(x)) / 2.0, np.arange(len(x)), x).astype(np.float32)

    lin = upsampler_tone_scan(22050, 2, linear)
    assert lin[0] > 1.0 and lin[1] > -40.0


def test_upsampler_state_carries_across_blocks() -> None:
    """Block by block (any sizes, 1 frame to more than ``max_frames``) equals one shot, sample for
    sample; ``reset()`` starts from silence again."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(20_000) * 0.2).astype(np.float32)
    for factor in (2, 3):
        one_shot = IntegerUpsampler(factor, max_frames=512).process(x)
        up = IntegerUpsampler(factor, max_frames=512)
        parts, i = [], 0
        for n in itertools.cycle((1, 2, 37, 256, 511, 512, 513, 1500, int(rng.integers(1, 700)))):
            if i >= len(x):
                break
            out = np.full(n * factor + 3, np.nan, dtype=np.float32)
            assert up.process_into(x[i : i + n], out) == len(x[i : i + n]) * factor
            assert np.all(np.isnan(out[len(x[i : i + n]) * factor :]))  # nothing written past the block
            parts.append(out[: len(x[i : i + n]) * factor])
            i += n
        np.testing.assert_array_equal(np.concatenate(parts), one_shot)
        up.reset()
        np.testing.assert_array_equal(up.process(x[:3000]), one_shot[: 3000 * factor])


def test_upsampler_delay_and_gain() -> None:
    """An impulse at input frame i peaks at output i·factor + delay_frames_out; DC passes at unit gain."""
    for factor in (2, 3):
        up = IntegerUpsampler(factor)
        x = np.zeros(400, np.float32)
        x[100] = 1.0
        y = up.process(x)
        assert int(np.argmax(y)) == 100 * factor + up.delay_frames_out
        assert up.delay_s(22050) == pytest.approx(up.delay_frames_out / (factor * 22050))
        dc = IntegerUpsampler(factor).process(np.full(1000, 0.5, np.float32))
        np.testing.assert_allclose(dc[factor * 300 :], 0.5, atol=1e-5)
    assert IntegerUpsampler(2).delay_s(22050) < 0.003  # ~2.3 ms: a tiny addition to the output latency
    same = IntegerUpsampler(1)
    x = np.linspace(-1, 1, 100, dtype=np.float32)
    np.testing.assert_array_equal(same.process(x), x)
    assert same.delay_frames_out == 0


def test_upsampler_does_not_allocate() -> None:
    """1000 calls with a 256-frame block (the callback's size) raise the traced peak by less than
    one float32 copy of the block would (1 KiB), and leave nothing behind."""
    x = (np.sin(np.arange(256) / 7.0) * 0.5).astype(np.float32)
    for factor in (2, 3):
        up = IntegerUpsampler(factor, max_frames=256)
        out = np.empty(256 * factor, np.float32)
        up.process_into(x, out)
        with allocations() as allocated:
            for _ in range(1000):
                up.process_into(x, out)
        assert allocated.peak < 1024, (factor, allocated.peak)
        assert allocated.current < 256, (factor, allocated.current)


def test_upsampler_rejects_bad_arguments() -> None:
    for bad in (0, 17, 2.0, True, "2"):
        with pytest.raises(DspError, match="upsampling factor"):
            IntegerUpsampler(bad)  # type: ignore[arg-type]
    up = IntegerUpsampler(2)
    x = np.zeros(100, np.float32)
    with pytest.raises(DspError, match="at least 200 frames"):
        up.process_into(x, np.zeros(199, np.float32))
    with pytest.raises(DspError, match="float32"):
        up.process_into(x, np.zeros(200, np.int16))
    with pytest.raises(DspError, match="float32"):
        up.process_into(x, np.zeros(400, np.float32)[::2])

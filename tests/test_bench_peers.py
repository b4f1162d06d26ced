"""``scripts/bench peers``: how it finds gaps in a system's recording against what the system
meant to play, and the narration it checks (the benchmark itself runs real peers: see the note
of issue 17 for its figures)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bench_peers

RATE = bench_peers.RATE


def _speech_like(seconds: float, seed: int = 1) -> np.ndarray:
    """Bursts of loud noise (words) between exact-silence pauses of 60-400 ms (breaths)."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    while sum(len(p) for p in parts) < seconds * RATE:
        parts.append((rng.standard_normal(int(rng.uniform(0.2, 0.9) * RATE)) * 6000).astype(np.int16))
        parts.append(np.zeros(int(rng.uniform(0.06, 0.4) * RATE), dtype=np.int16))
    return np.concatenate(parts[:-1])


def _through_the_rig(audio: np.ndarray, seed: int = 2) -> np.ndarray:
    """What a recording adds: a little noise under the silence threshold."""
    noise = np.random.default_rng(seed).integers(-40, 41, len(audio))
    return np.clip(audio.astype(np.int32) + noise, -32768, 32767).astype(np.int16)


def _insert_silence(audio: np.ndarray, at_s: float, ms: float) -> np.ndarray:
    at = int(at_s * RATE)
    return np.concatenate([audio[:at], np.zeros(int(ms * RATE / 1000), dtype=np.int16), audio[at:]])


def test_a_clean_recording_has_no_gaps_however_many_pauses_the_speech_has() -> None:
    reference = _speech_like(30.0)
    assert len(bench_peers.inserted_gaps(reference, reference)) == 0
    assert bench_peers.inserted_gaps(reference, _through_the_rig(reference)) == []


def test_an_underrun_inside_a_word_and_one_that_lengthens_a_pause_are_both_found() -> None:
    reference = _speech_like(30.0)
    pauses = [(s, d) for s, d in bench_peers_pauses(reference) if s > 12.0]
    pause_start, pause_len = pauses[0]
    # 45 ms of zeros inside a word at 5.0 s (find the middle of a loud burst there) ...
    loud = np.flatnonzero(np.abs(reference[int(5.0 * RATE) :].astype(np.int32)) > 1000)
    in_word = 5.0 + (loud[0] + int(0.1 * RATE)) / RATE
    recording = _insert_silence(reference, in_word, 45.0)
    # ... and a pause lengthened by 70 ms later on (the drift of the first gap shifts it).
    recording = _insert_silence(recording, pause_start + 0.045 + pause_len / 2, 70.0)
    gaps = bench_peers.inserted_gaps(reference, _through_the_rig(recording))
    assert len(gaps) == 2, gaps
    assert gaps[0] == pytest.approx(45.0, abs=3.0) and gaps[1] == pytest.approx(70.0, abs=3.0)


def test_a_pause_a_little_longer_than_the_reference_is_not_a_gap() -> None:
    reference = _speech_like(20.0)
    start, length = bench_peers_pauses(reference)[3]
    recording = _insert_silence(reference, start + length / 2, 15.0)  # under GAP_MS
    assert bench_peers.inserted_gaps(reference, recording) == []


def test_a_click_inside_a_pause_that_the_device_path_smooths_away_is_not_a_gap() -> None:
    reference = _speech_like(20.0)
    start, length = bench_peers_pauses(reference)[2]
    mid = int((start + length / 2) * RATE)
    clicked = reference.copy()
    clicked[mid : mid + 3] = 900  # the reference's pause is two pauses to a threshold ...
    recording = _through_the_rig(reference)  # ... the recording's is one
    assert bench_peers.inserted_gaps(clicked, recording) == []


def bench_peers_pauses(audio: np.ndarray) -> list[tuple[float, float]]:
    from tests.audio_rig import find_gaps

    return find_gaps(audio, RATE, min_gap_ms=50.0)


def test_the_narration_is_whole_sentences_of_the_long_sample_up_to_the_word_budget() -> None:
    text = bench_peers.narration_text(150)
    words = len(text.split())
    assert 100 <= words <= 150
    assert text.endswith((".", "!", "?", '."', '!"', '?"'))
    assert (ROOT / "config" / "samples" / "forest-long.txt").read_text().split()[:words] == text.split()
    assert len(bench_peers.narration_text(5).split()) > 0  # a first sentence longer than the budget is kept

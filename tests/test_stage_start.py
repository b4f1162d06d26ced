"""The stage's start threshold: ``prebuffer.streaming_start_s`` when Piper streams within a chunk,
``prebuffer.start_s`` otherwise; the same value reaches the CPU tier, the audio consumer's policy
and the streaming engine's first window."""

from __future__ import annotations

import pytest

from actors.gpu.detect import detect_gpus
from actors.gpu.tiers import resolve_gpu_config, setting_origins
from actors.tts import create_engine
from config.settings import ConfigError, load_settings

STREAMING = {"SKALD_TTS_PIPER_STREAMING": "true"}


def test_whole_chunk_piper_starts_at_start_s() -> None:
    settings = load_settings(env={"SKALD_PREBUFFER_START_S": "0.7"})
    assert settings.stage_start_key == "prebuffer.start_s"
    assert settings.stage_start_s == 0.7


def test_streaming_piper_starts_at_streaming_start_s() -> None:
    settings = load_settings(env={**STREAMING, "SKALD_PREBUFFER_STREAMING_START_S": "0.3"})
    assert settings.stage_start_key == "prebuffer.streaming_start_s"
    assert settings.stage_start_s == 0.3
    assert load_settings(env=STREAMING).stage_start_s == 0.25  # the default


def test_streaming_flag_without_piper_as_the_engine_changes_nothing() -> None:
    settings = load_settings(env={**STREAMING, "SKALD_TTS_ENGINE": "xtts"})
    assert settings.stage_start_key == "prebuffer.start_s" and settings.stage_start_s == 0.5


def test_the_cpu_tier_takes_the_streaming_threshold_and_names_its_key() -> None:
    env = {**STREAMING, "SKALD_PREBUFFER_STREAMING_START_S": "0.2"}
    resolved = resolve_gpu_config(load_settings(env=env), detect_gpus(), setting_origins(env=env))
    assert resolved.config.prebuffer_s == 0.2
    assert resolved.sources["prebuffer_s"].startswith("prebuffer.streaming_start_s (")


def test_low_water_must_stay_below_the_threshold_in_use() -> None:
    with pytest.raises(ConfigError, match=r"prebuffer\.streaming_start_s"):
        load_settings(env={**STREAMING, "SKALD_PREBUFFER_LOW_WATER_S": "0.3"})
    assert load_settings(env={"SKALD_PREBUFFER_LOW_WATER_S": "0.3"}).prebuffer.low_water_s == 0.3


def test_the_streaming_engine_merges_its_first_window_to_the_threshold(tmp_path: object) -> None:
    from actors.tts.piper_streaming import StreamingPiperEngine

    settings = load_settings(env={**STREAMING, "SKALD_TTS_PIPER_CACHE_DIR": str(tmp_path)})
    engine = create_engine("piper", settings)
    try:
        assert isinstance(engine, StreamingPiperEngine)
        assert engine.first_window_s == 0.25
    finally:
        engine.close()

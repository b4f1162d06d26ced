"""Configuration: defaults, precedence and validation messages that name key, value and range."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import ConfigError, Settings, load_settings


def test_defaults_load_and_round_trip() -> None:
    settings = load_settings(env={})
    assert settings.tts.engine == "piper"
    assert settings.audio.blocksize == 128
    assert Settings.from_dict(settings.to_dict()) == settings


def test_precedence_cli_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[audio]\nblocksize = 384\nsink = "null"\nfade_ms = 5.0\n')
    env = {"SKALD_AUDIO_BLOCKSIZE": "512", "SKALD_AUDIO_FADE_MS": "6"}
    settings = load_settings(cfg, env=env, overrides={"audio.fade_ms": 7.0})
    assert settings.audio.sink == "null"  # file beats default
    assert settings.audio.blocksize == 512  # env beats file
    assert settings.audio.fade_ms == 7.0  # command line beats env


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {"SKALD_AUDIO_BLOCKSIZE": "5000"},
            "audio.blocksize = 5000 (from SKALD_AUDIO_BLOCKSIZE): must be between 64 and 1024",
        ),
        ({"SKALD_AUDIO_SINK": "speakers"}, "must be device, null or wav:PATH"),
        ({"SKALD_RING_MAX_FILL_S": "lots"}, "ring.max_fill_s = 'lots' (from SKALD_RING_MAX_FILL_S): must be a number"),
        ({"SKALD_RING_MAX_FILL_S": "120", "SKALD_RING_CAPACITY_S": "60"}, "must not exceed ring.capacity_s"),
        ({"SKALD_PREBUFFER_START_S": "-1"}, "prebuffer.start_s = -1.0"),
        ({"SKALD_AUDIO_WAV_PACED": "maybe"}, "must be true or false"),
        ({"SKALD_AUDIO_BLOKSIZE": "300"}, "unknown setting SKALD_AUDIO_BLOKSIZE"),
        ({"SKALD_CHUNKER_TARGET_MIN_S": "9"}, "hard_min_s <= target_min_s <= target_max_s <= hard_max_s"),
        ({"SKALD_TTS_ENGINE": "sovereign"}, "must be one of: piper"),
        ({"SKALD_SUPERVISOR_MAX_RESTARTS": "2.5"}, "must be an integer"),
    ],
)
def test_bad_values_name_key_value_and_range(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert fragment in str(info.value)


def test_bad_file_is_reported_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[audio\nsink=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "missing.toml", env={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[audio]\nvolume = 3\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'audio.volume'.*known: blocksize"):
        load_settings(unknown, env={})


def test_replace_validates() -> None:
    settings = load_settings(env={})
    assert settings.replace({"audio.sink": "wav:/tmp/x.wav"}).audio.sink == "wav:/tmp/x.wav"
    with pytest.raises(ConfigError, match=r"audio\.blocksize"):
        settings.replace({"audio.blocksize": 32})

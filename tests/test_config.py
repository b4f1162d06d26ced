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


# --------------------------------------------------------------------------- msgspec conversion


def test_every_default_file_key_is_a_setting_and_back() -> None:
    from config.settings import DEFAULT_FILE, _flatten, _read_toml

    assert set(_flatten(_read_toml(DEFAULT_FILE))) == set(_flatten(Settings().to_dict()))


def test_strings_from_the_environment_become_typed_values() -> None:
    env = {
        "SKALD_AUDIO_BLOCKSIZE": "512",
        "SKALD_AUDIO_FADE_MS": "6",
        "SKALD_AUDIO_WAV_PACED": "off",
        "SKALD_DSP_DITHER": "yes",
        "SKALD_DSP_TRIM_SILENCE": "FALSE",
        "SKALD_ACTORS_NARRATIVE_MAX_RETRIES": "0",
    }
    settings = load_settings(env=env)
    assert settings.audio.blocksize == 512 and type(settings.audio.blocksize) is int
    assert settings.audio.fade_ms == 6.0 and type(settings.audio.fade_ms) is float
    assert settings.audio.wav_paced is False and settings.dsp.dither is True and settings.dsp.trim_silence is False
    assert settings.actors.narrative.max_retries == 0


def test_toml_numbers_convert_to_the_field_type(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[audio]\nblocksize = 384.0\nfade_ms = 5\n")
    settings = load_settings(cfg, env={})
    assert settings.audio.blocksize == 384 and type(settings.audio.blocksize) is int
    assert settings.audio.fade_ms == 5.0 and type(settings.audio.fade_ms) is float


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('[audio]\nblocksize = "big"\n', "audio.blocksize = 'big' (from {path}): must be an integer"),
        ("[audio]\nblocksize = 384.5\n", "audio.blocksize = 384.5 (from {path}): must be an integer"),
        ("[audio]\nsink = 3\n", "audio.sink = 3 (from {path}): must be a string"),
        ("[dsp]\ndither = 2\n", "dsp.dither = 2 (from {path}): must be true or false"),
        (
            "[actors.narrative]\ntemperature = 2.5\n",
            "actors.narrative.temperature = 2.5 (from {path}): must be between 0 and 2",
        ),
        (
            '[actors.prelude]\nbackend = "gpt"\n',
            "actors.prelude.backend = 'gpt' (from {path}): must be one of: text, openai, transformers",
        ),
    ],
)
def test_bad_values_from_a_file_name_the_file(tmp_path: Path, toml: str, fragment: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert fragment.format(path=cfg) in str(info.value)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {"SKALD_ACTORS_PRELUDE_MAX_TOKENS": "many"},
            "actors.prelude.max_tokens = 'many' (from SKALD_ACTORS_PRELUDE_MAX_TOKENS): must be an integer",
        ),
        (
            {"SKALD_DSP_CROSSFADE_MS": "nan"},
            "dsp.crossfade_ms = nan (from SKALD_DSP_CROSSFADE_MS): must be between 0 and 50",
        ),
        (
            {"SKALD_DSP_CROSSFADE_MS": "inf"},
            "dsp.crossfade_ms = inf (from SKALD_DSP_CROSSFADE_MS): must be between 0 and 50",
        ),
        ({"SKALD_XTTS_DEVICE": "tpu"}, "xtts.device = 'tpu' (from SKALD_XTTS_DEVICE): must be one of: cuda, cpu"),
        (
            {"SKALD_TTS_FALLBACK_ENGINE": "xtts"},
            "tts.fallback_engine = 'xtts' (from SKALD_TTS_FALLBACK_ENGINE): must be one of: , piper",
        ),
        (
            {"SKALD_ACTORS_NARRATIVE_MAX_RETRIES": "11"},
            "actors.narrative.max_retries = 11 (from SKALD_ACTORS_NARRATIVE_MAX_RETRIES): must be between 0 and 10",
        ),
    ],
)
def test_bad_values_from_the_environment(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert fragment in str(info.value)


def test_bad_values_from_the_command_line() -> None:
    with pytest.raises(ConfigError, match=r"actors\.prelude\.backend = 'gpt' \(from command line\): must be one of"):
        load_settings(env={}, overrides={"actors.prelude.backend": "gpt"})
    with pytest.raises(
        ConfigError, match=r"audio\.wav_paced = 'sometimes' \(from command line\): must be true or false"
    ):
        load_settings(env={}).replace({"audio.wav_paced": "sometimes"})


def test_a_section_that_is_not_a_table_is_reported() -> None:
    data = Settings().to_dict()
    data["audio"] = 3
    with pytest.raises(ConfigError, match=r"\[audio\] must be a table"):
        Settings.from_dict(data)

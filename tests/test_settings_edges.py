"""Configuration's remaining edges (``config/settings.py``): each check that involves a value's
meaning (latency words, HOST:PORT, ICE URLs, endpoints, the pre-buffer's low water), the error
for a dotted key that runs into a value, the live-change rules and the small helpers the CLI and
the server use. Every error must name the key, the value, where it came from and what to change.
"""

from __future__ import annotations

import logging

import msgspec
import pytest

from config.settings import (
    ConfigError,
    Settings,
    _explain,
    check_live_change,
    env_word,
    flat_values,
    load_settings,
    logging_level,
    metrics_address,
)


def refused(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    return str(info.value)


def test_a_skald_variable_of_no_settings_section_is_left_alone() -> None:
    """``SKALD_TESTRUN_ID`` (the test session's tag) and the like are not settings: no error,
    and nothing changes, where ``SKALD_AUDIO_BLOKSIZE`` (a section's name) is an error."""
    assert load_settings(env={"SKALD_TESTRUN_ID": "abc", "SKALD_HOME": "/x"}) == load_settings(env={})


def test_a_dotted_key_that_runs_into_a_value_is_unknown() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, overrides={"audio.sink.path": "x.wav"})
    assert str(info.value) == "config error: unknown setting 'audio.sink.path' (from command line)"


def test_settings_from_a_non_table_are_refused_in_msgspec_s_words() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_dict(["not", "a", "table"])  # type: ignore[arg-type]
    assert str(info.value) == "config error: Expected `object`, got `array`"


def test_a_rejection_our_reading_cannot_explain_keeps_msgspec_s_words() -> None:
    """The value converts and sits inside its range, yet msgspec refused it: its own words stand."""
    exc = msgspec.ValidationError("Expected `int` matching something - at `$.audio.blocksize`")
    error = _explain(exc, {"audio": {"blocksize": 128}}, {"audio.blocksize": "SKALD_AUDIO_BLOCKSIZE"})
    assert str(error) == (
        "config error: audio.blocksize = 128 (from SKALD_AUDIO_BLOCKSIZE): Expected `int` matching something"
    )


@pytest.mark.parametrize("latency", ["low", "high", "0.05", "0.001", "2"])
def test_latency_takes_its_words_or_seconds(latency: str) -> None:
    assert load_settings(env={"SKALD_AUDIO_LATENCY": latency}).audio.latency == latency


@pytest.mark.parametrize("latency", ["fast", "0", "2.5", "-0.1"])
def test_latency_outside_its_words_and_range_is_refused(latency: str) -> None:
    assert refused({"SKALD_AUDIO_LATENCY": latency}) == (
        f"config error: audio.latency = {latency!r} (from SKALD_AUDIO_LATENCY): "
        'must be "low", "high" or seconds between 0.001 and 2'
    )


def test_the_first_chunk_may_not_exceed_its_maximum() -> None:
    assert refused({"SKALD_CHUNKER_FIRST_CHUNK_S": "3"}) == (
        "config error: chunker.first_chunk_s = 3.0 (from SKALD_CHUNKER_FIRST_CHUNK_S): "
        "must not exceed chunker.first_chunk_max_s (2.5)"
    )


def test_low_water_must_sit_below_both_start_thresholds() -> None:
    assert refused({"SKALD_PREBUFFER_LOW_WATER_S": "0.5"}) == (
        "config error: prebuffer.low_water_s = 0.5 (from SKALD_PREBUFFER_LOW_WATER_S): "
        "must be below prebuffer.start_s and prebuffer.resume_s"
    )
    ok = load_settings(env={"SKALD_PREBUFFER_LOW_WATER_S": "0.2"})
    assert ok.prebuffer.low_water_s == 0.2


@pytest.mark.parametrize("http", ["8880", ":8880", "127.0.0.1:web", "127.0.0.1:65536"])
def test_web_http_must_be_host_and_port(http: str) -> None:
    assert refused({"SKALD_WEB_HTTP": http}) == (
        f"config error: web.http = {http!r} (from SKALD_WEB_HTTP): "
        "must be HOST:PORT, e.g. 127.0.0.1:8880 (port 0 = any free port)"
    )


@pytest.mark.parametrize("http", ["127.0.0.1:0", "localhost:8880", "[::1]:8880", "127.8.9.10:8880"])
def test_loopback_gateways_need_no_key(http: str) -> None:
    assert load_settings(env={"SKALD_WEB_HTTP": http}).web.http == http


@pytest.mark.parametrize("http", ["0.0.0.0:8880", "192.168.1.20:8880", "narrator.lan:8880", "[::]:8880"])
def test_a_gateway_off_loopback_needs_an_api_key(http: str) -> None:
    message = refused({"SKALD_WEB_HTTP": http})
    assert message.startswith(f"config error: web.http = {http!r} (from SKALD_WEB_HTTP): binds a non-loopback")
    assert "set web.api_key (SKALD_WEB_API_KEY), or bind 127.0.0.1" in message
    keyed = load_settings(env={"SKALD_WEB_HTTP": http, "SKALD_WEB_API_KEY": "s3cret"})
    assert keyed.web.http == http


def test_metrics_addresses() -> None:
    assert metrics_address("9464") == ("127.0.0.1", 9464)  # a bare port stays on loopback
    assert metrics_address(" :9464 ") == ("127.0.0.1", 9464)
    assert metrics_address("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert metrics_address("[::1]:0") == ("::1", 0)
    assert metrics_address("9464", default_host="::1") == ("::1", 9464)
    for bad in ("metrics", "host:", "127.0.0.1:65536", "-1"):
        with pytest.raises(ValueError, match=r"must be HOST:PORT or PORT, with a port from 0 to 65535"):
            metrics_address(bad)


def test_a_bad_metrics_address_is_a_config_error_naming_the_key() -> None:
    assert refused({"SKALD_SUPERVISOR_METRICS": "everywhere"}) == (
        "config error: supervisor.metrics = 'everywhere' (from SKALD_SUPERVISOR_METRICS): "
        "must be HOST:PORT or PORT, with a port from 0 to 65535 (e.g. 127.0.0.1:9464)"
    )
    assert load_settings(env={"SKALD_SUPERVISOR_METRICS": "9464"}).supervisor.metrics == "9464"


@pytest.mark.parametrize("url", ["http://stun.example.org", "stun:", "stun.example.org:3478"])
def test_ice_servers_must_be_stun_or_turn_urls(url: str) -> None:
    servers = f"stun:stun.l.google.com:19302, {url}"
    assert refused({"SKALD_WEB_ICE_SERVERS": servers}) == (
        f"config error: web.ice_servers = {servers!r} (from SKALD_WEB_ICE_SERVERS): "
        f"{url!r} is not a stun:HOST:PORT or turn[s]:USER:PASS@HOST:PORT URL"
    )


def test_ice_servers_take_stun_turn_and_turns_and_skip_empty_entries() -> None:
    servers = "stun:stun.example.org:3478, turn:u:p@turn.example.org:3478,,turns:u:p@turn.example.org:5349"
    assert load_settings(env={"SKALD_WEB_ICE_SERVERS": servers}).web.ice_servers == servers


def test_a_control_endpoint_must_be_a_zeromq_endpoint() -> None:
    assert refused({"SKALD_SUPERVISOR_CONTROL_ENDPOINT": "/run/skald.sock"}) == (
        "config error: supervisor.control_endpoint = '/run/skald.sock' (from SKALD_SUPERVISOR_CONTROL_ENDPOINT): "
        "must be a ZeroMQ endpoint such as ipc:///path or tcp://127.0.0.1:5555"
    )
    ok = load_settings(env={"SKALD_SUPERVISOR_CONTROL_ENDPOINT": "tcp://127.0.0.1:5555"})
    assert ok.supervisor.control_endpoint == "tcp://127.0.0.1:5555"


def test_live_changes_name_the_keys_of_the_section_or_the_sections() -> None:
    check_live_change("prebuffer.start_s")  # live: no error
    with pytest.raises(ConfigError) as info:
        check_live_change("prebuffer.stat_s")
    assert str(info.value) == (
        "config error: unknown setting 'prebuffer.stat_s'; known: prebuffer.start_s, prebuffer.streaming_start_s, "
        "prebuffer.resume_s, prebuffer.low_water_s, prebuffer.adaptive, prebuffer.adaptive_max_s, "
        "prebuffer.adaptive_calm_s"
    )
    with pytest.raises(ConfigError) as info:
        check_live_change("audoi.sink")
    message = str(info.value)
    assert message.startswith("config error: unknown setting 'audoi.sink'; known: actors, audio, chunker")
    with pytest.raises(ConfigError) as info:
        check_live_change("ring.capacity_s")
    assert "read once at start-up: a restart is needed" in str(info.value)
    assert "SKALD_RING_CAPACITY_S" in str(info.value)


def test_log_level_words_map_to_logging_levels() -> None:
    assert [logging_level(w) for w in ("debug", "info", "warning", "error")] == [
        logging.DEBUG,
        logging.INFO,
        logging.WARNING,
        logging.ERROR,
    ]


def test_flat_values_and_env_words() -> None:
    flat = flat_values(load_settings(env={"SKALD_AUDIO_BLOCKSIZE": "256"}))
    assert flat["audio.blocksize"] == 256 and flat["tts.engine"] == "piper"
    assert "audio" not in flat  # leaves only
    # Booleans also read yes/no/on/off from the environment; other keys take the raw text.
    assert env_word("dsp.trim_silence", " Off ") == "false" and env_word("dsp.trim_silence", "YES") == "true"
    assert env_word("dsp.trim_silence", "1") == "1"
    assert env_word("audio.sink", "on") == "on"
    assert load_settings(env={"SKALD_DSP_TRIM_SILENCE": "off"}).dsp.trim_silence is False


def test_only_skald_variables_are_read() -> None:
    assert load_settings(env={"PATH": "/usr/bin", "AUDIO_BLOCKSIZE": "5000"}) == load_settings(env={})


def test_a_short_gpu_name_and_its_long_name_must_agree() -> None:
    both = {"SKALD_PARALLEL_STREAMS": "2", "SKALD_TTS_PARALLEL_STREAMS": "3"}
    assert refused(both) == (
        "config error: SKALD_PARALLEL_STREAMS='2' and SKALD_TTS_PARALLEL_STREAMS='3' both set "
        "tts.parallel_streams; use one"
    )
    same = {"SKALD_PARALLEL_STREAMS": "2", "SKALD_TTS_PARALLEL_STREAMS": "2"}
    assert load_settings(env=same).tts.parallel_streams == 2
    assert load_settings(env={"SKALD_VRAM_LIMIT_GB": "6"}).gpu.vram_limit_gb == 6.0

"""``LiveSettings`` (``actors.live_config``) in-process, on a real (not started) ``Supervisor`` as
its host: requests that are not config requests, unknown keys, an empty set, a set that changes
nothing, the log level, an unknown voice, a GPU profile against the detection made at start, and
a SIGHUP re-read of a file that is refused or that only changes restart keys."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import wire
from actors.gpu.detect import GpuDetection, GpuInfo
from actors.gpu.tiers import resolve_gpu_config
from actors.live_config import SET_SOURCE, LiveSettings
from config.settings import load_settings
from supervisor import Supervisor

L4 = GpuInfo(0, "NVIDIA L4", 23034, 22000, (8, 9), "GPU-0", 0)  # as tests/test_gpu_control.py's


@pytest.fixture(autouse=True)
def _no_skald_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the defaults and the test's own values only, whatever SKALD_* the shell has
    (SIGHUP re-reads and the CLI read the environment)."""
    for name in [k for k in os.environ if k.startswith("SKALD_") and k != "SKALD_TESTRUN_ID"]:
        monkeypatch.delenv(name)


class Live:
    """A ``LiveSettings`` on a real Supervisor, with what it sent to the actors and published."""

    def __init__(self, tmp_path: Path, config_file: Path | None = None) -> None:
        self.sup = Supervisor(
            load_settings(config_file, env={}, overrides={"supervisor.run_dir": str(tmp_path / "run")})
        )
        self.sent: list[wire.Message] = []
        self.published: list[wire.Message] = []
        self.live = LiveSettings(self.sup, self.sent.append, self.published.append)
        self.live.config_file = str(config_file) if config_file else None
        self.live.overrides = {"supervisor.run_dir": str(tmp_path / "run")}


@pytest.fixture
def live(tmp_path: Path) -> Live:
    return Live(tmp_path)


@pytest.fixture
def root_level() -> Iterator[None]:
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def test_a_request_that_is_not_about_config_is_refused(live: Live) -> None:
    with pytest.raises(wire.WireError, match="status is not a config request") as err:
        live.live.handle(wire.StatusQuery())
    assert err.value.kind == "unknown_kind"


def test_get_one_key_or_an_unknown_key(live: Live) -> None:
    one = live.live.handle(wire.ConfigGet(key="prebuffer.start_s"))
    assert isinstance(one, wire.ConfigValues) and list(one.values) == ["prebuffer.start_s"]
    assert one.live == ["prebuffer.start_s"]
    with pytest.raises(wire.WireError, match=r"unknown setting 'prebuffer\.start'") as err:
        live.live.get("prebuffer.start")
    assert err.value.kind == "bad_request"


def test_an_empty_set_is_refused(live: Live) -> None:
    with pytest.raises(wire.WireError, match="config set: no setting given"):
        live.live.handle(wire.ConfigSet(values={}))


def test_a_set_that_changes_nothing_sends_and_publishes_nothing(live: Live) -> None:
    current = live.sup.settings.prebuffer.start_s
    event = live.live.set({"prebuffer.start_s": str(current)})
    assert (event.changed, event.previous, event.source) == ({}, {}, SET_SOURCE)
    assert live.sent == [] and live.published == []


def test_the_log_level_changes_the_root_logger_and_the_actors(live: Live, root_level: None) -> None:
    event = live.live.set({"log.level": "debug"})
    assert event.changed == {"log.level": "debug"}
    assert live.sup.log_level == logging.DEBUG and logging.getLogger().level == logging.DEBUG
    (update,) = live.sent
    assert isinstance(update, wire.ConfigUpdate) and update.log_level == logging.DEBUG
    assert update.changed == ["log.level"] and update.prebuffer_start_s == live.sup.settings.prebuffer.start_s
    assert live.published == [event] and live.sup.origins["log.level"] == SET_SOURCE


def test_an_unknown_voice_is_refused_with_its_origin_and_nothing_changes(live: Live) -> None:
    before = live.sup.settings
    with pytest.raises(wire.WireError, match=r"tts.voice = 'nobody' \(from skald config set\): unknown Piper voice"):
        live.live.set({"tts.voice": "nobody"})
    assert live.sup.settings is before and live.sent == [] and "tts.voice" not in live.sup.origins


def test_a_gpu_profile_is_resolved_against_the_detection_made_at_start(live: Live) -> None:
    live.sup.gpu = resolve_gpu_config(live.sup.settings, GpuDetection((L4,), via="nvml"))
    assert live.sup.gpu.profile != "modest"
    event = live.live.set({"gpu.profile": "modest"})
    assert event.changed == {"gpu.profile": "modest"}
    assert live.sup.gpu.profile == "modest" and live.sup.gpu.detection.gpus == (L4,)
    (update,) = live.sent
    assert isinstance(update, wire.ConfigUpdate)
    assert update.prebuffer_start_s == live.sup.gpu.config.prebuffer_s  # the tier's, not prebuffer.start_s


def test_a_refused_file_on_sighup_is_an_error_event_and_changes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "skald.toml"
    config.write_text("[prebuffer]\nstart_s = 0.4\n")
    live = Live(tmp_path, config)
    before = live.sup.settings
    config.write_text("[prebuffer]\nstart_s = -3\n")
    live.live.request_reload()
    live.live.poll()
    live.live.poll()  # the flag was taken: one re-read
    assert live.live.reloads == 1 and live.sup.settings is before and live.sent == []
    (error,) = live.published
    assert isinstance(error, wire.Error) and error.kind == "bad_request" and error.actor == "supervisor"
    assert error.message.startswith(f"SIGHUP {config}: config error:") and error.message.endswith("; nothing changed")


def test_a_file_changing_only_a_restart_key_names_it_and_applies_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "skald.toml"
    config.write_text('[tts]\nengine = "piper"\n')
    live = Live(tmp_path, config)
    config.write_text('[tts]\nengine = "xtts"\n')
    with caplog.at_level(logging.WARNING, logger="skald.config"):
        event = live.live.reload()
    assert event is not None and event.changed == {} and event.restart_needed == ["tts.engine"]
    assert live.sup.settings.tts.engine == "piper" and live.sent == [] and live.published == [event]
    assert "tts.engine changed in the file; a restart is needed to apply it" in caplog.text


def test_sighup_without_a_config_file_says_so(live: Live) -> None:
    assert live.live.reload() is not None  # nothing differs: an event with no changes, not published
    assert live.published == []
    live.live.overrides = {"prebuffer.start_s": -1.0}  # as if the command line had been bad
    assert live.live.reload() is None
    (error,) = live.published
    assert isinstance(error, wire.Error) and error.message.startswith("SIGHUP (no --config file): ")

"""The error and output paths of ``skald config get|set`` and ``skald devices``
(``actors/cli/config_cmd.py``, ``actors/cli/devices.py``). ``config`` talks to a real ZeroMQ peer
(``tests/support/wire_peer.py``) standing where ``skald serve`` would; ``devices`` runs as the real
CLI in a child process (PortAudio is initialised once per process, so the listing never runs in
the test process), with no sound server, and in-process where PortAudio is never reached."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import wire
from actors.cli import build_parser
from actors.cli.config_cmd import cmd_config
from actors.cli.devices import cmd_devices, pulse_sinks
from tests.support.wire_peer import WirePeer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_skald_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the defaults and the test's own values only, whatever SKALD_* the shell has
    (SIGHUP re-reads and the CLI read the environment)."""
    for name in [k for k in os.environ if k.startswith("SKALD_") and k != "SKALD_TESTRUN_ID"]:
        monkeypatch.delenv(name)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[WirePeer]:
    p = WirePeer(tmp_path, wire.encode(wire.Subscribed()))
    yield p
    p.close()


def _config(*argv: str) -> int:
    return cmd_config(build_parser().parse_args(["config", *argv]))


VALUES = wire.ConfigValues(
    values={"prebuffer.start_s": 0.3, "tts.engine": "piper"},
    live=["prebuffer.start_s"],
    origins={"tts.engine": "SKALD_TTS_ENGINE"},
)


def test_config_get_prints_live_and_restart_keys_with_origins(
    peer: WirePeer, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = peer.answer_in_background(VALUES, VALUES)
    assert _config("get", "--endpoint", peer.endpoints.control) == 0
    assert capsys.readouterr().out.splitlines() == [
        "prebuffer.start_s = 0.3  [live]",
        'tts.engine        = "piper"  [restart]  (SKALD_TTS_ENGINE)',
    ]
    assert _config("get", "tts.engine", "--json", "--run-dir", peer.run_dir) == 0
    assert json.loads(capsys.readouterr().out) == {
        "values": VALUES.values,
        "live": VALUES.live,
        "origins": VALUES.origins,
    }
    assert asked == [wire.ConfigGet(key=""), wire.ConfigGet(key="tts.engine")]


def test_config_set_prints_the_change_or_that_nothing_changed(
    peer: WirePeer, capsys: pytest.CaptureFixture[str]
) -> None:
    changed = wire.ConfigChanged(changed={"prebuffer.start_s": 0.5}, previous={"prebuffer.start_s": 0.3}, source="cli")
    asked = peer.answer_in_background(changed, wire.ConfigChanged(), changed)
    ep = ("--endpoint", peer.endpoints.control)
    assert _config("set", "prebuffer.start_s", "0.5", *ep) == 0
    assert capsys.readouterr().out == "prebuffer.start_s: 0.3 -> 0.5\n"
    assert _config("set", "prebuffer.start_s", "0.3", *ep) == 0
    assert capsys.readouterr().out == "unchanged (the server already had that value)\n"
    assert _config("set", "prebuffer.start_s", "0.5", "--json", *ep) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["event"] == "config_changed" and printed["changed"] == {"prebuffer.start_s": 0.5}
    assert asked[0] == wire.ConfigSet(values={"prebuffer.start_s": "0.5"})  # the text: the server parses it


def test_a_refused_setting_is_printed_as_start_up_prints_it(peer: WirePeer, capsys: pytest.CaptureFixture[str]) -> None:
    refusal = "config error: tts.engine needs a restart (live keys: prebuffer.start_s, ...)"
    peer.answer_in_background(
        wire.Error(kind="bad_request", message=refusal), wire.Error(kind="bad_request", message="no such key")
    )
    assert _config("set", "tts.engine", "xtts", "--endpoint", peer.endpoints.control) == 2
    assert capsys.readouterr().err == f"skald: {refusal}\n"
    assert _config("get", "nope", "--endpoint", peer.endpoints.control) == 1
    assert capsys.readouterr().err == "skald config get: [bad_request] no such key\n"


def test_no_server_is_an_error_naming_the_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _config("get", "--run-dir", str(tmp_path), "--timeout", "0.2") == 1
    assert f"skald config get: no answer from ipc://{tmp_path}/control.sock within 0.2 s" in capsys.readouterr().err


def test_a_tcp_endpoint_without_keys_says_which_settings_to_set() -> None:
    with pytest.raises(
        SystemExit, match=r"skald: a tcp:// endpoint needs CurveZMQ keys: set supervisor\.curve_client_key"
    ):
        _config("get", "--endpoint", "tcp://127.0.0.1:5999")


def test_a_bad_config_file_stops_config_and_devices_with_the_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[prebuffer]\nstart_s = 'soon'\n")
    with pytest.raises(SystemExit, match=r"skald: config error: .*prebuffer\.start_s"):
        cmd_config(build_parser().parse_args(["--config", str(bad), "config", "get"]))
    assert cmd_devices(argparse.Namespace(config=str(bad), json=False)) == 2
    assert "skald: config error:" in capsys.readouterr().err


def test_devices_without_sounddevice_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # `import sounddevice` fails: PortAudio is never reached
    assert cmd_devices(argparse.Namespace(config=None, json=True)) == 1
    assert "skald devices: the sounddevice package is not installed: pip install sounddevice" in capsys.readouterr().err


def test_pulse_sinks_is_none_without_pactl_a_server_or_a_working_pactl(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no pactl on it
    assert pulse_sinks() is None
    broken = tmp_path / "pactl"
    broken.write_text("#!/nonexistent/interpreter\n")  # installed but cannot run: exec fails (OSError)
    broken.chmod(0o755)
    assert pulse_sinks() is None
    monkeypatch.setenv("PATH", os.environ.get("PATH", "") + os.pathsep + "/usr/bin:/bin")
    broken.unlink()
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/no-server")  # pactl runs, no server answers
    assert pulse_sinks() is None


def _devices(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SKALD_", "PULSE_"))}
    clean.update(PYTHONPATH=str(ROOT), PULSE_SERVER=f"unix:{tmp_path}/no-server", **env)
    return subprocess.run(
        [sys.executable, "-m", "actors.cli", "devices", *argv],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_devices_with_no_sound_server_lists_none_and_says_why_nothing_is_selected(tmp_path: Path) -> None:
    text = _devices(tmp_path, SKALD_AUDIO_DEVICE="no-such-card", SKALD_AUDIO_HOSTAPI="ALSA")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert "(no output device: see docs/troubleshooting.md, 'No sound')" in text.stdout
    assert any(
        line.startswith("audio.device = 'no-such-card', audio.hostapi = 'ALSA' selects nothing: ") for line in lines
    ), text.stdout
    assert "PulseAudio server" not in text.stdout  # pactl found no server
    doc = json.loads(_devices(tmp_path, "--json").stdout)
    assert (doc["devices"], doc["selected"], doc["pulse"]) == ([], None, None)
    assert doc["selection_error"].startswith("no default output device")

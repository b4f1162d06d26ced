"""Tests for output device selection (actors/audio_device.py).

The device tests run against the real PulseAudio null sink from tests/audio_rig.py;
the rest use a stand-in ``sounddevice`` module to reach the cases (several host
APIs, duplicate names, strict rates, PortAudio missing) that the Linux rig cannot
produce.
"""

from __future__ import annotations

import builtins
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from actors import audio_device
from actors.audio_device import (
    AudioDeviceError,
    DeviceInfo,
    list_output_devices,
    negotiate_samplerate,
    select_output_device,
    wasapi_exclusive_settings,
)
from tests.audio_rig import PulseNullSink, pulse_sink  # noqa: F401  # fixture

# --- against the real null sink --------------------------------------------------------------------


@pytest.mark.device
def test_lists_pulse_and_default(pulse_sink: PulseNullSink) -> None:  # noqa: F811
    devices = list_output_devices()
    names = {d.name for d in devices}
    assert {"pulse", "default"} <= names
    for d in devices:
        assert d.max_output_channels > 0
        assert d.hostapi == "ALSA"
        assert d.default_samplerate > 0


@pytest.mark.device
def test_default_device_found(pulse_sink: PulseNullSink) -> None:  # noqa: F811
    import sounddevice as sd

    device = select_output_device(None, None)
    assert device.index == sd.query_devices(kind="output")["index"]
    assert device.name == "default"
    assert select_output_device(None, "ALSA") == device


@pytest.mark.device
def test_select_by_name(pulse_sink: PulseNullSink) -> None:  # noqa: F811
    pulse = select_output_device("pulse", None)
    assert pulse.name == "pulse" and pulse.hostapi == "ALSA"
    assert select_output_device("PULS", None) == pulse  # case-insensitive substring
    assert select_output_device("pulse", "alsa") == pulse


@pytest.mark.device
def test_bad_name_error_lists_devices(pulse_sink: PulseNullSink) -> None:  # noqa: F811
    with pytest.raises(AudioDeviceError) as excinfo:
        select_output_device("no-such-speaker", None)
    message = str(excinfo.value)
    assert "no-such-speaker" in message
    assert "'pulse'" in message and "'default'" in message
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.device
def test_bad_hostapi_error_lists_hostapis(pulse_sink: PulseNullSink) -> None:  # noqa: F811
    with pytest.raises(AudioDeviceError, match=r"host API 'ASIO' matches no host API.*ALSA"):
        select_output_device("pulse", "ASIO")


@pytest.mark.device
def test_ambiguous_substring(pulse_sink: PulseNullSink) -> None:  # noqa: F811
    # "u" is in both "pulse" and "default".
    with pytest.raises(AudioDeviceError, match="ambiguous"):
        select_output_device("u", None)


@pytest.mark.device
def test_negotiate_22050(pulse_sink: PulseNullSink) -> None:  # noqa: F811
    device = select_output_device("pulse", None)
    # PulseAudio resamples, so the synthesiser's native rate is accepted as is.
    assert negotiate_samplerate(device, 22050) == 22050
    assert negotiate_samplerate(device.index, 24000) == 24000


@pytest.mark.device
def test_negotiated_device_really_opens(pulse_sink: PulseNullSink) -> None:  # noqa: F811
    import sounddevice as sd

    device = select_output_device("pulse", None)
    rate = negotiate_samplerate(device, 22050)
    with sd.OutputStream(device=device.index, samplerate=rate, channels=1, dtype="int16") as stream:
        assert stream.samplerate == rate


# --- stand-in sounddevice for the cases the rig cannot produce --------------------------------------


class FakePortAudioError(Exception):
    pass


def make_fake_sd(accepted_rates: dict[int, set[int]] | None = None, default_out: int = 1) -> types.ModuleType:
    """A Windows-like device table: the same speaker under MME and WASAPI, plus an input-only mic."""
    hostapis = [
        {"name": "MME", "devices": [0, 1, 2], "default_output_device": 1},
        {"name": "Windows WASAPI", "devices": [3, 4], "default_output_device": 3},
        {"name": "Windows DirectSound", "devices": [5], "default_output_device": 5},
    ]
    devices = [
        {"name": "Microphone (USB)", "hostapi": 0, "max_output_channels": 0, "default_samplerate": 44100.0},
        {"name": "Speakers (Realtek)", "hostapi": 0, "max_output_channels": 2, "default_samplerate": 44100.0},
        {"name": "Headphones (USB)", "hostapi": 0, "max_output_channels": 2, "default_samplerate": 48000.0},
        {"name": "Speakers (Realtek)", "hostapi": 1, "max_output_channels": 2, "default_samplerate": 48000.0},
        {"name": "Headphones (USB)", "hostapi": 1, "max_output_channels": 2, "default_samplerate": 48000.0},
        {"name": "Speakers (Realtek)", "hostapi": 2, "max_output_channels": 2, "default_samplerate": 44100.0},
    ]
    for i, d in enumerate(devices):
        d["index"] = i
    accepted = accepted_rates if accepted_rates is not None else {}

    sd: Any = types.ModuleType("sounddevice")
    sd.PortAudioError = FakePortAudioError

    def query_hostapis(index: int | None = None) -> Any:
        return hostapis if index is None else hostapis[index]

    def query_devices(device: int | None = None) -> Any:
        return devices if device is None else devices[device]

    def check_output_settings(device: int, samplerate: float, channels: int, dtype: str) -> None:
        if device in accepted and int(samplerate) not in accepted[device]:
            raise FakePortAudioError(f"Invalid sample rate [PaErrorCode -9997] ({samplerate})")

    sd.query_hostapis = query_hostapis
    sd.query_devices = query_devices
    sd.check_output_settings = check_output_settings
    sd.default = types.SimpleNamespace(device=[-1, default_out], hostapi=0)
    sd.WasapiSettings = lambda exclusive=False: ("wasapi", exclusive)
    return sd


@pytest.fixture
def fake_sd(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    sd = make_fake_sd()
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    return sd


def test_fake_lists_outputs_only(fake_sd: Any) -> None:
    devices = list_output_devices()
    assert [d.index for d in devices] == [1, 2, 3, 4, 5]
    assert devices[2] == DeviceInfo(3, "Speakers (Realtek)", "Windows WASAPI", 2, 48000.0)


def test_fake_default_and_hostapi_default(fake_sd: Any) -> None:
    assert select_output_device().index == 1
    assert select_output_device(None, "WASAPI").index == 3
    fake_sd.default.device = [-1, -1]  # "PortAudio's default": the default host API's default device
    assert select_output_device().index == 1


def test_fake_duplicate_name_prefers_default_hostapi(fake_sd: Any) -> None:
    assert select_output_device("Speakers (Realtek)").hostapi == "MME"
    assert select_output_device("speakers").hostapi == "MME"
    assert select_output_device("Speakers (Realtek)", "Windows WASAPI").index == 3


def test_fake_hostapi_ambiguous_substring(fake_sd: Any) -> None:
    with pytest.raises(AudioDeviceError, match="ambiguous") as excinfo:
        select_output_device("Speakers", "Windows")
    assert "Windows WASAPI" in str(excinfo.value) and "Windows DirectSound" in str(excinfo.value)


def test_fake_distinct_names_ambiguous(fake_sd: Any) -> None:
    with pytest.raises(AudioDeviceError, match="ambiguous") as excinfo:
        select_output_device("(", "WASAPI")
    assert "hostapi=" in str(excinfo.value)
    assert "[4] 'Headphones (USB)'" in str(excinfo.value)


def test_fake_input_only_device_not_selectable(fake_sd: Any) -> None:
    with pytest.raises(AudioDeviceError, match="no output device matches 'Microphone'"):
        select_output_device("Microphone")


def test_fake_no_default_output(fake_sd: Any) -> None:
    fake_sd.default.device = [-1, 0]  # the default is the input-only device
    with pytest.raises(AudioDeviceError, match="no default output device"):
        select_output_device()


def test_negotiate_falls_back_to_default_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    sd = make_fake_sd(accepted_rates={3: {48000}})
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    wasapi = select_output_device("Speakers", "WASAPI")
    assert negotiate_samplerate(wasapi, 22050) == 48000
    assert negotiate_samplerate(3, 22050) == 48000
    assert negotiate_samplerate(wasapi, 48000) == 48000


def test_negotiate_fails_when_nothing_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    sd = make_fake_sd(accepted_rates={3: set()})
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    with pytest.raises(AudioDeviceError, match=r"accepts neither 22050 Hz .* nor its default 48000 Hz"):
        negotiate_samplerate(3, 22050)


def test_wasapi_settings_only_on_windows(fake_sd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio_device.sys, "platform", "linux")
    assert wasapi_exclusive_settings() is None
    monkeypatch.setattr(audio_device.sys, "platform", "win32")
    assert wasapi_exclusive_settings() == ("wasapi", True)


def test_portaudio_missing_says_install_libportaudio2(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def failing_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(AudioDeviceError, match="libportaudio2"):
        list_output_devices()
    with pytest.raises(AudioDeviceError, match="libportaudio2"):
        select_output_device("pulse", None)


def test_module_imports_without_sounddevice() -> None:
    # Importing must not load sounddevice (PortAudio may be missing where config is validated).
    import subprocess

    code = "import sys, actors.audio_device; assert 'sounddevice' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])

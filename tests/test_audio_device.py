"""Tests for output device selection (actors/audio_device.py).

The device tests run against the real PulseAudio null sink from tests/audio_rig.py;
the rest use a stand-in ``sounddevice`` module to reach the cases (several host
APIs, duplicate names, strict rates, PortAudio missing) that the Linux rig cannot
produce.
"""

from __future__ import annotations

import builtins
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.audio import device as audio_device
from actors.audio.device import (
    AudioDeviceError,
    DeviceInfo,
    list_output_devices,
    negotiate_samplerate,
    select_output_device,
    wasapi_exclusive_settings,
)
from actors.audio_consumer import choose_upsample
from tests.audio_rig import STEADY_DEVICE, MonitorRecorder, PulseNullSink, align, pulse_sink  # noqa: F401  # fixture

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


@pytest.mark.device
def test_upsampled_device_playback_matches_piper_and_is_gap_free(
    tmp_path: Path,
    pulse_sink: PulseNullSink,  # noqa: F811
) -> None:
    """``audio.device_rate = 44100`` forces the callback's 2× upsampler although pulse takes
    22050 Hz: ``skald speak --sink device`` is recorded at 44.1 kHz and compared with raw Piper
    output (the joiner's reference), upsampled by soxr: same correlation bar as the native-rate
    test, every voiced 100 ms window in place (a gap or slip anywhere collapses the later ones)."""
    from actors.audio.resample import resample
    from tests.conftest import ROOT, server_env
    from tests.test_speech_output import DETERMINISTIC, SHORT, _raw_piper, assert_recording_plays, joined_reference

    device_rate = 44100
    text_file = tmp_path / "text.txt"
    text_file.write_text(SHORT)
    report_file = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "actors.cli", "--log-info", "speak", "--file", str(text_file)]
    cmd += ["--sink", "device", "--report", str(report_file)]
    env = server_env(**DETERMINISTIC, **pulse_sink.env, **STEADY_DEVICE, SKALD_AUDIO_DEVICE_RATE=str(device_rate))
    with MonitorRecorder(rate=device_rate, env=pulse_sink.env) as recorder:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        recording = recorder.stop()
    assert proc.returncode == 0, proc.stderr
    # The supervisor's line, with the actor's READY info (the actor logs its own, bare, too).
    ready = next(line for line in proc.stderr.splitlines() if "audio_consumer ready" in line and "{" in line)
    info = json.loads(ready[ready.index("{") :])
    assert info["sample_rate"] == 22050 and info["device_rate"] == device_rate and info["upsample"] == 2, info
    assert info["heavy_modules"] == []
    report = json.loads(report_file.read_text())
    assert report["underruns"] == 0
    assert report["device_underflows"] == 0, "the device ran dry (callback late): audible gap"
    rate = report["sample_rate"]
    parts = [_raw_piper([c["text"]])[0] for c in report["chunks"]]
    reference = resample(joined_reference(report, parts, rate)[0], rate, device_rate)
    offset, _ = assert_recording_plays(reference, recording, device_rate, min_windows=30)
    # Nothing above 11 kHz but the null sink's own resampling residue: no images of the 22.05 kHz audio.
    played = recording[offset : offset + len(reference)].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(played * np.hanning(len(played)))) ** 2
    freqs = np.fft.rfftfreq(len(played), 1.0 / device_rate)
    images = spectrum[freqs > 0.5 * rate + 200].sum() / spectrum.sum()
    assert 10 * np.log10(max(images, 1e-30)) < -60.0, f"image energy {10 * np.log10(images):.1f} dB"


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


def test_choose_upsample_prefers_the_ring_rate_then_the_device_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer's rate choice: the ring rate if taken; else the device's default rate when it
    is a whole multiple (24 → 48 kHz is 2×, 16 → 48 kHz is 3×); else the smallest multiple taken."""
    sd = make_fake_sd(accepted_rates={3: {48000}, 1: {44100, 88200}})
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    wasapi = select_output_device("Speakers", "WASAPI")  # index 3, default 48000 Hz, takes only that
    assert choose_upsample(wasapi, 48000) == 1
    assert choose_upsample(wasapi, 24000) == 2
    assert choose_upsample(wasapi, 16000) == 3
    mme = select_output_device("Speakers", "MME")  # index 1, default 44100 Hz
    assert choose_upsample(mme, 22050) == 2
    anything = select_output_device("Headphones", "MME")  # index 2: takes every rate
    assert choose_upsample(anything, 22050) == 1
    assert choose_upsample(anything, 22050, device_rate=44100) == 2  # forced (the device tests' hook)
    assert choose_upsample(anything, 16000, device_rate=48000) == 3


def test_choose_upsample_errors_name_the_device_and_the_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    sd = make_fake_sd(accepted_rates={3: {48000}})
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    wasapi = select_output_device("Speakers", "WASAPI")
    with pytest.raises(RuntimeError) as excinfo:
        choose_upsample(wasapi, 22050)  # 48000 is no multiple of 22050
    message = str(excinfo.value)
    assert "'Speakers (Realtek)' refuses 22050 Hz" in message
    assert "22050, 44100, 66150, 88200" in message and "offers 48000 Hz" in message and "audio.device" in message
    with pytest.raises(RuntimeError, match=r"refuses audio.device_rate = 44100 Hz"):
        choose_upsample(wasapi, 22050, device_rate=44100)
    with pytest.raises(RuntimeError, match=r"audio.device_rate = 48000 Hz is not a whole multiple .* 22050 Hz"):
        choose_upsample(wasapi, 22050, device_rate=48000)


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

    code = "import sys, actors.audio.device; assert 'sounddevice' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])

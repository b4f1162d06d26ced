"""Output device selection and sample-rate negotiation on top of ``sounddevice``.

``sounddevice`` loads the PortAudio C library when it is imported, and raises
``OSError('PortAudio library not found')`` when it is absent.  It is therefore
imported lazily inside each function, so that importing this module (and
everything that imports it, such as configuration validation) works on machines
without PortAudio; only actually touching a device raises, and then as an
:class:`AudioDeviceError` that says what to install.

Host APIs per operating system
------------------------------
PortAudio groups devices by *host API*, the OS audio interface it drives them
through.  Which ones exist depends on the OS and on how PortAudio was built:

=========  ===========================================  ==============================
OS         Host API names (as PortAudio reports them)   Notes
=========  ===========================================  ==============================
Linux      ``ALSA``, ``JACK Audio Connection Kit``,     The Debian ``libportaudio2``
           ``OSS`` (``PulseAudio`` in PortAudio >=      exposes PulseAudio/PipeWire
           19.7.1 builds with the native backend)       through ALSA as the devices
                                                        ``pulse`` and ``default``
                                                        (needs
                                                        ``libasound2-plugins``).
Windows    ``MME``, ``Windows DirectSound``,            WASAPI exclusive mode:
           ``Windows WASAPI``, ``Windows WDM-KS``,      :func:`wasapi_exclusive_settings`.
           ``ASIO`` (only with an ASIO-enabled build)   The same physical device is
                                                        listed once per host API.
macOS      ``Core Audio``
=========  ===========================================  ==============================

Only the Linux/ALSA path (through a PulseAudio null sink, see
``tests/audio_rig.py``) is exercised by this project's tests.  WASAPI, ASIO and
Core Audio are only reachable on their own OSes and are untested here; the code
paths for them are the generic PortAudio ones plus
:func:`wasapi_exclusive_settings`.

Selection rules (:func:`select_output_device`)
----------------------------------------------
* ``hostapi`` narrows the candidates to one host API, matched like a name:
  exact (case-insensitive), else a unique case-insensitive substring.
* ``name=None`` picks the default output device (of that host API, if given).
* Otherwise the name is matched exactly, else as a unique case-insensitive
  substring.  If an exact name appears under several host APIs (typical on
  Windows), the one on PortAudio's default host API wins; otherwise the choice
  is ambiguous and an error asks for ``hostapi``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "AudioDeviceError",
    "DeviceInfo",
    "list_output_devices",
    "negotiate_samplerate",
    "select_output_device",
    "wasapi_exclusive_settings",
]

_INSTALL_HINT = (
    "PortAudio library not found: install it (Debian/Ubuntu: `apt-get install libportaudio2`, "
    "or run scripts/install-audio-deps; macOS and Windows wheels of sounddevice bundle it)"
)


class AudioDeviceError(ValueError):
    """No usable output device: bad name, ambiguous match, PortAudio missing, unsupported format."""


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio output device.

    Attributes:
        index: PortAudio device index (valid until PortAudio is re-initialised).
        name: Device name as PortAudio reports it.
        hostapi: Name of the host API the device belongs to, e.g. ``"ALSA"``.
        max_output_channels: Number of output channels the device accepts.
        default_samplerate: The device's default sample rate in Hz.
    """

    index: int
    name: str
    hostapi: str
    max_output_channels: int
    default_samplerate: float

    def describe(self) -> str:
        """One line for error messages and logs."""
        return (
            f"[{self.index}] {self.name!r} ({self.hostapi}, {self.max_output_channels} out, "
            f"{self.default_samplerate:g} Hz)"
        )


def _sounddevice() -> ModuleType:
    """Import ``sounddevice``, turning a missing PortAudio into an actionable error."""
    try:
        import sounddevice
    except OSError as exc:
        # sounddevice raises a bare OSError when ctypes cannot find libportaudio.
        raise AudioDeviceError(f"{_INSTALL_HINT} ({exc})") from exc
    except ImportError as exc:
        raise AudioDeviceError(f"the sounddevice package is not installed: pip install sounddevice ({exc})") from exc
    return sounddevice


def _hostapi_names(sd: Any) -> list[str]:
    return [str(api["name"]) for api in sd.query_hostapis()]


def _to_info(raw: Any, hostapi_names: list[str]) -> DeviceInfo:
    return DeviceInfo(
        index=int(raw["index"]),
        name=str(raw["name"]),
        hostapi=hostapi_names[int(raw["hostapi"])],
        max_output_channels=int(raw["max_output_channels"]),
        default_samplerate=float(raw["default_samplerate"]),
    )


def list_output_devices() -> list[DeviceInfo]:
    """All devices with at least one output channel, in PortAudio index order.

    Raises:
        AudioDeviceError: PortAudio (or sounddevice) is not installed.
    """
    sd = _sounddevice()
    names = _hostapi_names(sd)
    return [_to_info(raw, names) for raw in sd.query_devices() if int(raw["max_output_channels"]) > 0]


def _device_listing(devices: list[DeviceInfo]) -> str:
    if not devices:
        return (
            "  (none: PortAudio sees no output device; on Linux without a sound card start a "
            "PulseAudio null sink and make sure XDG_RUNTIME_DIR/PULSE_SERVER point at it "
            "before the process initialises PortAudio)"
        )
    return "\n".join(f"  {d.describe()}" for d in devices)


def _match_one(wanted: str, candidates: list[str]) -> list[int]:
    """Indices into ``candidates`` matching ``wanted``: exact first, else case-insensitive substring."""
    exact = [i for i, c in enumerate(candidates) if c == wanted]
    if exact:
        return exact
    folded = wanted.casefold()
    exact_ci = [i for i, c in enumerate(candidates) if c.casefold() == folded]
    if exact_ci:
        return exact_ci
    return [i for i, c in enumerate(candidates) if folded in c.casefold()]


def _resolve_hostapi(hostapi: str, names: list[str], devices: list[DeviceInfo]) -> str:
    matches = sorted({names[i] for i in _match_one(hostapi, names)})
    if len(matches) == 1:
        return matches[0]
    problem = "matches no host API" if not matches else f"is ambiguous, it matches {matches}"
    raise AudioDeviceError(
        f"host API {hostapi!r} {problem}; host APIs here: {names}\nOutput devices:\n{_device_listing(devices)}"
    )


def select_output_device(name: str | None = None, hostapi: str | None = None) -> DeviceInfo:
    """Pick the output device to play through.

    Args:
        name: ``None`` for the default output device; otherwise an exact device
            name, or a case-insensitive substring matching exactly one device.
        hostapi: Optional host API filter (``"ALSA"``, ``"PulseAudio"``,
            ``"Windows WASAPI"``, ``"ASIO"``, ``"Core Audio"``...), matched
            exactly or as a unique case-insensitive substring.

    Raises:
        AudioDeviceError: No match, an ambiguous match, no default device, or
            PortAudio missing.  The message lists the available devices.
    """
    sd = _sounddevice()
    names = _hostapi_names(sd)
    devices = list_output_devices()

    candidates = devices
    api_name: str | None = None
    if hostapi is not None:
        api_name = _resolve_hostapi(hostapi, names, devices)
        candidates = [d for d in devices if d.hostapi == api_name]

    if name is None:
        if api_name is not None:
            default_index = int(sd.query_hostapis(names.index(api_name))["default_output_device"])
        else:
            # sd.default.device is (input, output); -1 / None means "PortAudio's default".
            default_index = sd.default.device[1]
            if default_index is None or int(default_index) < 0:
                default_index = int(sd.query_hostapis(sd.default.hostapi)["default_output_device"])
        for d in candidates:
            if d.index == int(default_index):
                return d
        where = f" for host API {api_name!r}" if api_name else ""
        raise AudioDeviceError(f"no default output device{where}. Output devices:\n{_device_listing(devices)}")

    matches = [candidates[i] for i in _match_one(name, [d.name for d in candidates])]
    if len(matches) > 1 and all(m.name == matches[0].name for m in matches):
        # Same device listed under several host APIs (Windows): prefer PortAudio's default host API.
        default_api = names[int(sd.default.hostapi)]
        preferred = [m for m in matches if m.hostapi == default_api]
        if len(preferred) == 1:
            return preferred[0]
    if len(matches) == 1:
        return matches[0]
    scope = f" on host API {api_name!r}" if api_name else ""
    if not matches:
        problem = f"no output device matches {name!r}{scope}"
    else:
        listed = ", ".join(m.describe() for m in matches)
        problem = f"output device name {name!r}{scope} is ambiguous ({listed}); use a longer name or hostapi="
    raise AudioDeviceError(f"{problem}. Output devices:\n{_device_listing(devices)}")


def negotiate_samplerate(
    device: DeviceInfo | int, preferred_rate: int, *, channels: int = 1, dtype: str = "int16"
) -> int:
    """The sample rate to open ``device`` at: ``preferred_rate`` if accepted, else its default.

    When the device rejects the preferred rate the caller must resample to the
    returned rate.  (Through the PulseAudio ALSA plugin every rate is accepted,
    because PulseAudio resamples; hardware ALSA ``hw:`` devices and WASAPI
    exclusive mode are the strict ones.)

    Args:
        device: A :class:`DeviceInfo` or a PortAudio device index.
        preferred_rate: The synthesiser's native rate, e.g. 22050.
        channels: Output channels to check (mono by default).
        dtype: Sample format to check (``int16`` by default, what the engine plays).

    Raises:
        AudioDeviceError: Neither the preferred nor the default rate is accepted
            (usually the channel count or sample format is the real problem).
    """
    sd = _sounddevice()
    index = device.index if isinstance(device, DeviceInfo) else int(device)
    try:
        sd.check_output_settings(device=index, samplerate=preferred_rate, channels=channels, dtype=dtype)
        return int(preferred_rate)
    except (sd.PortAudioError, ValueError) as exc:
        preferred_error = exc
    info = device if isinstance(device, DeviceInfo) else None
    default_rate = info.default_samplerate if info else float(sd.query_devices(index)["default_samplerate"])
    fallback = round(default_rate)
    try:
        sd.check_output_settings(device=index, samplerate=fallback, channels=channels, dtype=dtype)
    except (sd.PortAudioError, ValueError) as exc:
        raise AudioDeviceError(
            f"device {index} accepts neither {preferred_rate} Hz ({preferred_error}) nor its default "
            f"{fallback} Hz ({exc}) with channels={channels}, dtype={dtype}"
        ) from exc
    return fallback


def wasapi_exclusive_settings() -> Any | None:
    """``sd.WasapiSettings(exclusive=True)`` on Windows, ``None`` elsewhere.

    Pass the result as ``extra_settings=`` when opening a stream on a
    ``Windows WASAPI`` device: exclusive mode bypasses the Windows mixer for
    lower latency but takes the device away from other applications and accepts
    only the device's native format, so negotiate the rate first.  ``None`` is
    what ``extra_settings`` expects on other OSes.  Untested here (Linux only).
    """
    if sys.platform != "win32":
        return None
    sd = _sounddevice()
    return sd.WasapiSettings(exclusive=True)

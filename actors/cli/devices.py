"""``skald devices [--json]``: the output devices PortAudio offers, and which one ``audio.device``
(with ``audio.hostapi``) selects now, by the same rule the audio consumer uses
(``actors.audio.device.select_output_device``).

On Linux the Debian PortAudio reaches PulseAudio and PipeWire through ALSA's ``pulse`` and
``default`` devices, so the sink they play into is not a PortAudio device of its own; when a
PulseAudio-compatible server answers ``pactl``, its sinks and default sink are listed too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from typing import Any


def add_devices_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``skald devices [--json]`` on the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "devices", help="list audio output devices and the one audio.device selects"
    )
    parser.add_argument("--json", action="store_true", help="print JSON: devices, selected, pulse")
    parser.set_defaults(func=cmd_devices)
    return parser


def pulse_sinks() -> dict[str, Any] | None:
    """The PulseAudio/PipeWire sinks and default sink, from ``pactl``; None without a server."""
    pactl = shutil.which("pactl")
    if pactl is None:
        return None
    try:
        sinks = subprocess.run([pactl, "list", "short", "sinks"], capture_output=True, text=True, timeout=5)
        info = subprocess.run([pactl, "info"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if sinks.returncode != 0 or info.returncode != 0:
        return None
    fields = dict(line.split(": ", 1) for line in info.stdout.splitlines() if ": " in line)
    return {
        "server": fields.get("Server Name", ""),
        "default_sink": fields.get("Default Sink", ""),
        "sinks": [line.split("\t")[1] for line in sinks.stdout.splitlines() if "\t" in line],
    }


def cmd_devices(args: argparse.Namespace) -> int:
    from actors.audio.device import AudioDeviceError, list_output_devices, select_output_device
    from config.settings import ConfigError, load_settings

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"skald: {exc}", file=sys.stderr)
        return 2
    wanted, hostapi = settings.audio.device, settings.audio.hostapi
    try:
        devices = list_output_devices()
    except AudioDeviceError as exc:
        print(f"skald devices: {exc}", file=sys.stderr)
        return 1
    selected: int | None = None
    problem = ""
    try:
        selected = select_output_device(wanted or None, hostapi or None).index
    except AudioDeviceError as exc:
        problem = str(exc).split("\n", 1)[0]
    pulse = pulse_sinks()
    if args.json:
        rows = [
            {
                "index": d.index,
                "name": d.name,
                "hostapi": d.hostapi,
                "default_samplerate": d.default_samplerate,
                "max_output_channels": d.max_output_channels,
                "selected": d.index == selected,
            }
            for d in devices
        ]
        doc = {
            "devices": rows,
            "selected": selected,
            "audio.device": wanted,
            "audio.hostapi": hostapi,
            "selection_error": problem,
            "pulse": pulse,
        }
        print(json.dumps(doc, indent=2))
        return 0
    rule = f"audio.device = {wanted!r}" + (f", audio.hostapi = {hostapi!r}" if hostapi else "")
    print(f"{'':2}{'index':>5}  {'name':<32} {'host API':<12} {'rate':>8}  {'out ch':>6}")
    for d in devices:
        mark = "*" if d.index == selected else " "
        name = d.name if len(d.name) <= 32 else d.name[:31] + "…"
        rate, channels = d.default_samplerate, d.max_output_channels
        print(f"{mark:2}{d.index:>5}  {name:<32} {d.hostapi:<12} {rate:>8g}  {channels:>6}")
    if not devices:
        print("  (no output device: see docs/troubleshooting.md, 'No sound')")
    print(f"* selected by {rule}" if selected is not None else f"{rule} selects nothing: {problem}")
    if pulse is not None:
        print(
            f"PulseAudio server {pulse['server'] or '?'}: default sink {pulse['default_sink'] or '?'}; "
            f"sinks: {', '.join(pulse['sinks']) or '(none)'}"
        )
    return 0

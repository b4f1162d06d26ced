"""``skald devices``: the real PortAudio device list with the PulseAudio null sink of
tests/audio_rig.py behind it, and the device ``audio.device`` selects."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.audio_rig import PulseNullSink, pulse_sink  # noqa: F401  # fixture
from tests.conftest import ROOT, SKALD, server_env


def _devices(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # server_env() copies os.environ, where the fixture pointed PulseAudio at the test daemon.
    return subprocess.run(
        [*SKALD, "devices", *args], capture_output=True, text=True, cwd=ROOT, env=server_env(**env), timeout=60
    )


@pytest.mark.device
def test_devices_json_lists_the_test_sink_and_the_selected_device(pulse_sink: PulseNullSink) -> None:  # noqa: F811
    out = _devices("--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    by_name = {d["name"]: d for d in doc["devices"]}
    assert {"pulse", "default"} <= by_name.keys()
    for d in doc["devices"]:
        assert d["hostapi"] == "ALSA" and d["max_output_channels"] > 0 and d["default_samplerate"] > 0
    # audio.device = "" selects PortAudio's default output, marked as such.
    assert doc["selected"] == by_name["default"]["index"] and by_name["default"]["selected"]
    assert [d["name"] for d in doc["devices"] if d["selected"]] == ["default"]
    # The sink those ALSA devices play into: the rig's null sink, the PulseAudio default.
    assert doc["pulse"]["default_sink"] == pulse_sink.sink_name
    assert pulse_sink.sink_name in doc["pulse"]["sinks"]

    chosen = json.loads(_devices("--json", SKALD_AUDIO_DEVICE="pulse").stdout)
    assert chosen["selected"] == by_name["pulse"]["index"] and chosen["audio.device"] == "pulse"

    text = _devices(SKALD_AUDIO_DEVICE="pulse").stdout
    marked = [line for line in text.splitlines() if line.startswith("*") and "ALSA" in line]
    assert len(marked) == 1 and " pulse " in marked[0], text
    assert f"default sink {pulse_sink.sink_name}" in text

    missing = json.loads(_devices("--json", SKALD_AUDIO_DEVICE="no-such-card").stdout)
    assert missing["selected"] is None
    assert "no output device matches 'no-such-card'" in missing["selection_error"]

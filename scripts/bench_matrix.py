"""The configuration matrix (seed §2.5.1): ``scripts/bench matrix [--quick] [--json PATH]``.

A real ``skald serve --sink device`` plays on the private PulseAudio null sink (tests/audio_rig.py)
once per ``audio.blocksize`` x ``audio.latency`` (both are read when the device stream opens, so
each pair is its own server). In each server, for every pre-buffer (``prebuffer.start_s`` =
``prebuffer.resume_s``, set live over the control socket), quiet and then beside
``stress-ng --cpu 2``, one cell is:

* a short narration (two sentences, ~11 s of audio) played to its end: time to first audio at
  the DAC, ring underruns (the worker fell behind) and device underflows (the callback was late);
* the same narration again, cancelled 0.5 s after its first sample was heard: cancel -> silence
  (client clock before the cancel -> the end of the fade at the DAC, as ``scripts/bench cancel``).

The ring rate is a dimension of its own: a server at ``audio.rate = 16000`` (the worker resamples
each chunk) runs the default block, latency and pre-buffer beside the native 22.05 kHz one.

The adaptive pre-buffer is off here (``prebuffer.adaptive = false``): each cell measures its own
threshold, not what earlier cells taught it. The reading names the best configuration for the
lowest latency with 0 underruns and 0 underflows under the hog; ``--quick`` sweeps a corner of
the matrix (block 128 and 512, latency low, pre-buffer 0.25/0.5/1 s) in about 5 minutes.

Needs Debian's ``stress-ng`` and PulseAudio (scripts/install-audio-deps installs both).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import ServedSkald, cpu_hog, events_until, machine, of_request, run_folder, write_json  # noqa: E402

from actors import wire  # noqa: E402
from actors.client import SkaldClient  # noqa: E402

BLOCKS = (128, 256, 384, 512)
LATENCIES = ("low", "high")
PREBUFFERS_S = (0.25, 0.5, 1.0, 2.0, 3.0)
FULL: dict[str, Any] = {"blocks": BLOCKS, "latencies": LATENCIES, "prebuffers": PREBUFFERS_S}
QUICK: dict[str, Any] = {"blocks": (128, 512), "latencies": ("low",), "prebuffers": (0.25, 0.5, 1.0)}
DEFAULT: dict[str, Any] = {"block": 128, "latency": "low", "prebuffer_s": 0.5}  # config/settings.py's defaults
HOGS = 2
CANCEL_AFTER_S = 0.5  # after the first audible sample


def narration() -> str:
    """The first two sentences of the crypt sample: long enough to underrun, short enough for 80 cells."""
    text = (ROOT / "config" / "samples" / "crypt.txt").read_text(encoding="utf-8")
    return " ".join(re.split(r"(?<=[.!?])\s+", text.strip())[:2])


def cell(ctl: SkaldClient, text: str, prebuffer_s: float) -> dict[str, Any]:
    reply = ctl.request(wire.ConfigSet(values={"prebuffer.start_s": prebuffer_s, "prebuffer.resume_s": prebuffer_s}))
    if not isinstance(reply, wire.ConfigChanged):
        raise SystemExit(f"bench matrix: the server refused the pre-buffer {prebuffer_s} s: {reply}")
    done, _ = ctl.wait_for(ctl.speak(text), timeout_s=300)
    rid = ctl.speak(text)
    events_until(ctl, of_request(wire.PlaybackStarted, rid), "bench matrix")
    time.sleep(CANCEL_AFTER_S)  # a point in the middle of the playback, not a wait for progress
    t_cancel = time.monotonic()
    ctl.cancel(rid)
    seen = events_until(ctl, of_request(wire.RequestFinished, rid), "bench matrix")
    silenced = next(e for e in seen if isinstance(e, wire.Silenced) and e.request_id == rid)
    return {
        "status": done.status,
        "ttfa_ms": round(done.ttfa_ms, 1),
        "underruns": done.underruns,
        "device_underflows": done.device_underflows,
        "cancel_to_silence_ms": round((silenced.t_silent - t_cancel) * 1000.0, 1),
    }


def serve_cells(
    rig_env: dict[str, str], settings: dict[str, str], prebuffers: tuple[float, ...], text: str, label: str
) -> dict[str, Any]:
    """One server with ``settings``: every pre-buffer quiet, then every pre-buffer with the hog."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    env.update(rig_env)
    env.update({"SKALD_PREBUFFER_ADAPTIVE": "false", **settings})
    out: dict[str, Any] = {"quiet": {}, "hog": {}}
    with (
        run_folder("skm", "bench matrix") as parent,
        ServedSkald(parent, "device", env, "bench matrix"),
        SkaldClient.for_run_dir(str(parent / "run"), timeout_s=10) as ctl,
    ):
        for phase in ("quiet", "hog"):
            with cpu_hog(HOGS if phase == "hog" else 0):
                for pb in prebuffers:
                    out[phase][f"{pb:g}"] = result = cell(ctl, text, pb)
                    print(f"  {label}, pre-buffer {pb:g} s, {phase}: {result}", file=sys.stderr)
    return out


def best(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The lowest TTFA under the hog among the configurations clean under it (0 underruns, 0
    underflows, done); a tie goes to the faster cancel."""
    clean = [
        c for c in cells
        if c["hog"]["status"] == "done" and c["hog"]["underruns"] == 0 and c["hog"]["device_underflows"] == 0
    ]  # fmt: skip
    return min(clean, key=lambda c: (c["hog"]["ttfa_ms"], c["hog"]["cancel_to_silence_ms"])) if clean else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.audio_rig import PulseNullSink

    if shutil.which("stress-ng") is None:
        raise SystemExit("bench matrix: stress-ng is missing (run scripts/install-audio-deps)")
    space = QUICK if args.quick else FULL
    text = narration()
    cells: list[dict[str, Any]] = []
    rates: dict[str, Any] = {}
    started = time.monotonic()
    with PulseNullSink() as rig:
        for block in space["blocks"]:
            for latency in space["latencies"]:
                settings = {"SKALD_AUDIO_BLOCKSIZE": str(block), "SKALD_AUDIO_LATENCY": latency}
                by_pb = serve_cells(rig.env, settings, space["prebuffers"], text, f"block {block}, latency {latency}")
                for pb in space["prebuffers"]:
                    key = f"{pb:g}"
                    cells.append({"block": block, "latency": latency, "prebuffer_s": pb,
                                  "quiet": by_pb["quiet"][key], "hog": by_pb["hog"][key]})  # fmt: skip
        pb = (DEFAULT["prebuffer_s"],)
        settings = {"SKALD_AUDIO_BLOCKSIZE": str(DEFAULT["block"]), "SKALD_AUDIO_LATENCY": str(DEFAULT["latency"])}
        rates["16000"] = serve_cells(rig.env, {**settings, "SKALD_AUDIO_RATE": "16000"}, pb, text, "16 kHz ring")
    native = next((c for c in cells if all(c[key] == DEFAULT[key] for key in DEFAULT)), None)
    if native is not None:
        rates["native"] = {"quiet": {"0.5": native["quiet"]}, "hog": {"0.5": native["hog"]}}
    return {
        "benchmark": "matrix",
        "machine": machine(),
        "device": "PulseAudio null sink (private daemon) via PortAudio/ALSA",
        "mode": "quick" if args.quick else "full",
        "text": text,
        "hogs": HOGS,
        "adaptive_prebuffer": False,
        "cells": cells,
        "rates": rates,
        "default": DEFAULT,
        "best": best(cells),
        "minutes": round((time.monotonic() - started) / 60.0, 1),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench matrix", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a corner of the matrix: about 5 minutes")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    top = result["best"]
    if top is None:
        print("matrix: no configuration played without underruns beside the hog", file=sys.stderr)
    else:
        print(
            f"matrix: best for latency with 0 underruns under stress-ng --cpu {HOGS}: block {top['block']}, "
            f"latency {top['latency']}, pre-buffer {top['prebuffer_s']:g} s (TTFA {top['hog']['ttfa_ms']} ms, "
            f"cancel -> silence {top['hog']['cancel_to_silence_ms']} ms); defaults: block {DEFAULT['block']}, "
            f"latency {DEFAULT['latency']}, pre-buffer {DEFAULT['prebuffer_s']:g} s",
            file=sys.stderr,
        )
    write_json(args.json, result)
    all_done = all(c[phase]["status"] == "done" for c in result["cells"] for phase in ("quiet", "hog"))
    return 0 if all_done else 1

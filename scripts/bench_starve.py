"""Narration beside a CPU hog: ``scripts/bench starve [--requests N] [--hogs H] [--json PATH]``.

A real ``skald serve --sink device`` (``--server-env SKALD_AUDIO_LATENCY=high`` etc. to try
settings) plays on the private PulseAudio null sink (tests/audio_rig.py)
N narrations (default 2, ~30 s each) on a quiet machine, then N more while ``stress-ng --cpu H``
(default 2: every core of the CI machine) runs beside it at the same priority as any user's
program. Per phase: time to first audio (p50, max), ring underruns (the worker fell behind) and
device underflows (the callback was late). Target (issue 14): 0 underruns and 0 underflows with
the hog, and TTFA close to the quiet figure.

Needs Debian's ``stress-ng`` and PulseAudio (scripts/install-audio-deps installs both).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import ServedSkald, cpu_hog, run_folder, server_env  # noqa: E402

from actors import wire  # noqa: E402
from actors.client import SkaldClient  # noqa: E402


def phase(run_dir: Path, text: str, requests: int) -> dict[str, Any]:
    finished: list[wire.RequestFinished] = []
    with SkaldClient.for_run_dir(str(run_dir), timeout_s=10) as ctl:
        for _ in range(requests):
            done, _ = ctl.wait_for(ctl.speak(text), timeout_s=300)
            finished.append(done)
    ttfa = [f.ttfa_ms for f in finished if f.ttfa_ms > 0]
    return {
        "requests": len(finished),
        "not_done": sum(1 for f in finished if f.status != "done"),
        "audio_s": round(sum(f.audio_s for f in finished), 1),
        "ttfa_ms_p50": round(statistics.median(ttfa), 1) if ttfa else None,
        "ttfa_ms_max": round(max(ttfa), 1) if ttfa else None,
        "underruns": sum(f.underruns for f in finished),
        "device_underflows": sum(f.device_underflows for f in finished),
        "device_underflows_by_request": [f.device_underflows for f in finished],
    }


def bench_starve(args: argparse.Namespace) -> dict[str, Any]:
    from bench import machine

    from tests.audio_rig import PulseNullSink

    if shutil.which("stress-ng") is None:
        raise SystemExit("bench starve: stress-ng is missing (run scripts/install-audio-deps)")
    text = (ROOT / "config" / "samples" / "crypt.txt").read_text(encoding="utf-8")
    results: dict[str, Any] = {}
    with run_folder("skv", "bench starve") as parent, PulseNullSink() as rig:
        run_dir = parent / "run"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
        env.update(rig.env)
        env.update(server_env(args.server_env))
        with ServedSkald(parent, "device", env, "bench starve"):
            results["quiet"] = phase(run_dir, text, args.requests)
            print(f"  quiet: {results['quiet']}", file=sys.stderr)
            with cpu_hog(args.hogs):
                results["hog"] = phase(run_dir, text, args.requests)
            print(f"  with stress-ng --cpu {args.hogs}: {results['hog']}", file=sys.stderr)
    return {"benchmark": "starve", "machine": machine(), "hogs": args.hogs, "device": "PulseAudio null sink", **results}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench starve")
    parser.add_argument("--requests", type=int, default=2, help="narrations per phase (~30 s each)")
    parser.add_argument("--hogs", type=int, default=2, help="stress-ng --cpu workers in the second phase")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--server-env", action="append", metavar="SKALD_KEY=VALUE", help="a setting for the server (repeatable)"
    )
    args = parser.parse_args(argv)
    result = bench_starve(args)
    print(json.dumps(result, indent=2))
    quiet, hog = result["quiet"], result["hog"]
    print(
        f"starve: TTFA p50 {quiet['ttfa_ms_p50']} ms quiet, {hog['ttfa_ms_p50']} ms beside stress-ng --cpu "
        f"{args.hogs}; underruns {quiet['underruns']} / {hog['underruns']}, device underflows "
        f"{quiet['device_underflows']} / {hog['device_underflows']}",
        file=sys.stderr,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if hog["underruns"] == 0 and hog["device_underflows"] == 0 and hog["not_done"] == 0 else 1

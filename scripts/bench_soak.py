"""Continuous narration for a long time: ``scripts/bench soak [--minutes M] [--sink null|device] [--json PATH]``.

A real ``skald serve`` narrates the sample texts back to back (the next request is sent the
moment one finishes: a queued request's TTFA would count its wait behind the one playing) for
M minutes (default 60). Every 5 s the resident
memory and open file descriptors of every process of the server (supervisor and actors, found
from the supervisor's process tree, so a restarted actor is seen too) are sampled; each minute
reports the median of its 12 samples per process (and the fewest fds), with the underruns and the time
to first audio of the requests that finished in that minute. Why 12 samples, not one: the TTS
worker gives its freed heap back once a minute (``actors.runtime.HeapTrimmer``), so its RSS saws
between the trimmed level and one chunk's working set within each minute, and one sample a
minute aliases with that cycle: its phase drifts slowly, and the level seemed to move by 20 %
between the minutes of one soak (441-533 MB) with no growth at all.

Targets (issue 14): RSS growth <= 5 % after the first 5 minutes (the warm-up: onnxruntime's
arenas, caches), file descriptors flat, 0 underruns, no TTFA drift.

RSS growth is judged by two figures over windows of 5 minutes (60 samples), the last window
against the first after warm-up: the **floor** (the smallest sample: what the process holds
right after the worker hands its freed heap back, its live memory; a leak raises it) and the
**envelope** (the largest sample: the trimmed level plus the largest chunk's working set; memory
that is not bounded raises it). The median of the per-minute medians is reported beside them,
but with the worker's once-a-minute trim the samples are two-valued (trimmed or holding a
working set), and a median of a two-valued set flips between the two levels by chance. Why medians:
the TTS worker runs onnxruntime without its arena (``actors.tts.piper.session_options``), so a
chunk's working set (10-30 MB) is allocated and freed within each chunk, and a sample that
lands in a chunk reads that much more than one between chunks, with no growth at all. A leak
moves the median; one sample's phase does not. With ``--sink null`` (the
default) the stage runs on the null sink's real-time clock, so no sound card is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import ServedSkald, run_folder  # noqa: E402

from actors import wire  # noqa: E402
from actors.client import SkaldClient  # noqa: E402

TEXTS = ("forest-long.txt", "crypt.txt")
WARM_UP_MIN = 5  # growth is measured from the sample after this many minutes
WINDOW = 5  # minutes per median (the window after warm-up, and the last one)
SAMPLE_S = 5.0  # seconds between samples inside a minute


def sample_texts() -> list[str]:
    base = ROOT.parent / "shared" / "texts"
    found = [(base / name).read_text() for name in TEXTS if (base / name).is_file()]
    return found or ["The torch gutters, and somewhere below a door slams. " * 20]


def processes(server_pid: int) -> dict[str, tuple[float, int]]:
    """{name: (rss MB, open fds)} for the supervisor and each actor (named by its process title)."""
    import psutil

    root = psutil.Process(server_pid)
    found: dict[str, tuple[float, int]] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = "supervisor" if proc.pid == server_pid else proc.name().removeprefix("skald::")
            found[name] = (proc.memory_info().rss / 1e6, proc.num_fds())
        except psutil.Error:
            continue  # an actor that just exited: the next sample sees its successor
    return found


class Narrator(threading.Thread):
    """Sends the next request when one finishes; records every RequestFinished."""

    def __init__(self, run_dir: Path, texts: list[str], stop: threading.Event) -> None:
        super().__init__(name="soak-narrator", daemon=True)
        self.run_dir, self.texts, self.stop = run_dir, texts, stop
        self.finished: list[tuple[float, wire.RequestFinished]] = []
        self.lock = threading.Lock()
        self.error = ""

    def run(self) -> None:
        try:
            with SkaldClient.for_run_dir(str(self.run_dir), timeout_s=10) as ctl:
                outstanding: set[str] = set()
                n = 0
                while not self.stop.is_set():
                    while not outstanding:
                        outstanding.add(ctl.speak(self.texts[n % len(self.texts)]))
                        n += 1
                    for event in ctl.events(timeout_s=1.0):
                        if isinstance(event, wire.RequestFinished) and event.request_id in outstanding:
                            outstanding.discard(event.request_id)
                            with self.lock:
                                self.finished.append((time.monotonic(), event))
                            break
                ctl.cancel(all=True)
        except Exception as exc:  # reported in the figures; the soak then stops early
            self.error = f"{type(exc).__name__}: {exc}"
            self.stop.set()


def bench_soak(args: argparse.Namespace, parent: Path) -> dict[str, Any]:
    run_dir = parent / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    stop = threading.Event()
    minutes: list[dict[str, Any]] = []
    with ServedSkald(parent, args.sink, env, "bench soak") as server:
        narrator = Narrator(run_dir, sample_texts(), stop)
        try:
            t0 = time.monotonic()
            narrator.start()
            taken = 0
            for minute in range(1, args.minutes + 1):
                samples: list[dict[str, tuple[float, int]]] = []
                ticks = int(60.0 / SAMPLE_S)
                for tick in range(1, ticks + 1):
                    if stop.wait(max(0.0, t0 + 60.0 * (minute - 1) + SAMPLE_S * tick - time.monotonic())):
                        break
                    samples.append(processes(server.pid))
                if len(samples) < ticks:
                    break
                with narrator.lock:
                    done = narrator.finished[taken:]
                    taken = len(narrator.finished)
                names = sorted({name for sample in samples for name in sample})
                ttfas = [e.ttfa_ms for _, e in done if e.ttfa_ms is not None and e.ttfa_ms > 0]
                row = {
                    "minute": minute,
                    "rss_mb": {k: round(statistics.median(x[k][0] for x in samples if k in x), 1) for k in names},
                    "rss_mb_min": {k: round(min(x[k][0] for x in samples if k in x), 1) for k in names},
                    "rss_mb_max": {k: round(max(x[k][0] for x in samples if k in x), 1) for k in names},
                    # Fewest open in the minute: a leaked fd stays open, so it raises this; one that is
                    # open for an instant (the ring's /proc read of its peer, every 10 ms in a wait)
                    # shows only in the most, and 12 samples a minute catch such instants.
                    "fds": {k: min(x[k][1] for x in samples if k in x) for k in names},
                    "fds_max": {k: max(x[k][1] for x in samples if k in x) for k in names},
                    "requests": len(done),
                    "not_done": sum(1 for _, e in done if e.status != "done"),
                    "underruns": sum(e.underruns for _, e in done),
                    "audio_s": round(sum(e.audio_s for _, e in done), 1),
                    "ttfa_ms_p50": round(statistics.median(ttfas), 1) if ttfas else None,
                }
                minutes.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        finally:  # also on an error or ^C: the narrator stops before the server does
            stop.set()
            narrator.join(30)
    return summarize(minutes, narrator.error, args)


def summarize(minutes: list[dict[str, Any]], error: str, args: argparse.Namespace) -> dict[str, Any]:
    from bench import machine

    base = minutes[min(WARM_UP_MIN, len(minutes)) - 1] if minutes else None
    growth: dict[str, float] = {}
    peak: dict[str, float] = {}
    floor: dict[str, float] = {}
    envelope: dict[str, float] = {}
    fd_range: dict[str, int] = {}

    def pct(last: float, first: float) -> float:
        return round(100.0 * (last / first - 1.0), 2) if first > 0 else 0.0

    if base is not None:
        for name, rss in base["rss_mb"].items():
            rows = [m for m in minutes if m["minute"] >= base["minute"] and name in m["rss_mb"]]
            later = [m["rss_mb"][name] for m in rows]
            growth[name] = pct(statistics.median(later[-WINDOW:]), statistics.median(later[:WINDOW]))
            peak[name] = pct(max(later), rss)
            lows = [m.get("rss_mb_min", m["rss_mb"])[name] for m in rows]  # one sample a minute: itself
            highs = [m.get("rss_mb_max", m["rss_mb"])[name] for m in rows]
            floor[name] = pct(min(lows[-WINDOW:]), min(lows[:WINDOW]))
            envelope[name] = pct(max(highs[-WINDOW:]), max(highs[:WINDOW]))
            fds = [m["fds"][name] for m in minutes if m["minute"] >= base["minute"] and name in m["fds"]]
            fd_range[name] = max(fds) - min(fds)
    ttfa = [m["ttfa_ms_p50"] for m in minutes if m["ttfa_ms_p50"] is not None]
    head, tail = ttfa[:WARM_UP_MIN], ttfa[-WARM_UP_MIN:]
    return {
        "benchmark": "soak",
        "machine": machine(),
        "sink": args.sink,
        "minutes_run": len(minutes),
        "minutes_asked": args.minutes,
        "narrator_error": error,
        "requests": sum(m["requests"] for m in minutes),
        "requests_not_done": sum(m["not_done"] for m in minutes),
        "audio_s": round(sum(m["audio_s"] for m in minutes), 1),
        "underruns": sum(m["underruns"] for m in minutes),
        "rss_floor_growth_pct_after_warm_up": floor,
        "rss_envelope_growth_pct_after_warm_up": envelope,
        "rss_growth_pct_after_warm_up": growth,
        "rss_peak_growth_pct_after_warm_up": peak,
        "fd_range_after_warm_up": fd_range,
        "ttfa_ms_p50_first": round(statistics.median(head), 1) if head else None,
        "ttfa_ms_p50_last": round(statistics.median(tail), 1) if tail else None,
        "per_minute": minutes,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench soak")
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--sink", choices=("null", "device"), default="null")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.minutes < 1:
        parser.error("--minutes must be at least 1")
    with run_folder("sks", "bench soak") as parent:  # kept, server.log and all, when the soak fails
        result = bench_soak(args, parent)
        print(json.dumps({k: v for k, v in result.items() if k != "per_minute"}, indent=2))
        worst = max(result["rss_growth_pct_after_warm_up"].values(), default=0.0)
        worst_floor = max(result["rss_floor_growth_pct_after_warm_up"].values(), default=0.0)
        worst_envelope = max(result["rss_envelope_growth_pct_after_warm_up"].values(), default=0.0)
        fds = max(result["fd_range_after_warm_up"].values(), default=0)
        print(
            f"soak: {result['minutes_run']} min, {result['requests']} requests ({result['audio_s']} s of audio), "
            f"{result['underruns']} underruns, {result['requests_not_done']} not done; worst RSS growth after "
            f"warm-up: floor {worst_floor:+.2f} %, envelope {worst_envelope:+.2f} % (median {worst:+.2f} %), "
            f"fd range {fds}; TTFA p50 {result['ttfa_ms_p50_first']} -> "
            f"{result['ttfa_ms_p50_last']} ms",
            file=sys.stderr,
        )
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        ok = (
            not result["narrator_error"]
            and result["underruns"] == 0
            and worst_floor <= 5.0
            and worst_envelope <= 5.0
            and fds == 0
        )
        if not ok:
            raise SystemExit(1)
    return 0

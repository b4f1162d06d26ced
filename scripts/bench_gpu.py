"""GPU adaptive control on a real GPU: ``scripts/bench gpu [--json PATH] [--model-dir DIR] [--audio-s S]``.

Needs a CUDA GPU; without one it exits 2 and prints the CPU tier configuration instead of numbers.
The engine is XTTS v2 (``create_engine("xtts", settings)``) on a model directory with the real
architecture and random weights (``python -m tests.support.xtts_random --size full DIR``, built
here unless ``--model-dir`` is given): timings are real, the audio is noise.

Each measurement runs in its own process, so the per-process VRAM limit and peak counters start
clean and the profile really comes from the environment (``SKALD_GPU_PROFILE``):

``profile``  for high_performance and modest: synthesize ~``--audio-s`` seconds of narration the
    way the TTS worker does (``VramManager`` limit + OOM recovery around each chunk, pressure
    check after it, ``UtilizationController`` deciding streams and the pause before the next),
    against a playback clock that drains the queued audio in real time from the moment the
    tier's pre-buffer is reached, and an overfill guard at ``ring.max_fill_s``.
    * ``util_mean``: mean NVML utilization (10 Hz) while the worker had work to do (not held by
      the overfill guard); ``util_mean_all`` over the whole run.
    * ``vram_peak_mb``: the torch allocator's peak reservation; must stay under ``vram_limit_mb``.
    * ``underruns``: times the playback clock caught up with the synthesized audio.
``stress``   on high_performance: (1) a provoked memory-pressure event: after a few chunks the
    limit is lowered to 1/0.93 of the observed per-chunk peak, so the next check enters pressure
    and parallelism drops; the limit is then restored until pressure is left; (2) a provoked
    OOM: the cache is emptied and the limit set to what is allocated + 16 MiB, so a chunk runs
    out of memory, is retried at half size, and degrades to Piper; the limit is restored and
    XTTS must synthesize again (``oom_recovered``).

Output keys: ``gpu``, ``profiles`` {name: {``util_mean``, ``util_band``, ``vram_peak_mb``,
``vram_limit_mb``, ``underruns``, ...}}, ``pressure_events``, ``oom_recovered``, ``checks``.
Exit 0 when every check holds, 1 when one does not, 2 when it cannot run here.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import machine  # noqa: E402  (scripts/ is on sys.path: run through scripts/bench)

PROFILES = ("high_performance", "modest")
RESULT_MARK = "BENCH_GPU_RESULT "
CHILD_TIMEOUT_S = 420
WEIGHTS = "random (xtts_random --size full): timing only"


# ============================================================================ the parent


def _no_gpu(reason: str) -> int:
    from actors.gpu.tiers import detect_gpus, resolve_gpu_config
    from config.settings import load_settings

    resolved = resolve_gpu_config(load_settings(), detect_gpus())
    print(
        f"no CUDA GPU: this benchmark needs one ({reason}); CPU tier config is: "
        + json.dumps(resolved.config.to_dict()),
        file=sys.stderr,
    )
    return 2


def _run_child(mode: str, profile: str, model_dir: str, audio_s: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    env.update(SKALD_GPU_PROFILE=profile, SKALD_XTTS_MODEL_DIR=model_dir, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", mode, "--audio-s", str(audio_s)]
    print(f"bench gpu: {mode} {profile} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=CHILD_TIMEOUT_S)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            result["wall_s"] = round(time.monotonic() - started, 1)
            return result
    raise RuntimeError(f"{mode} {profile} child exited {done.returncode} without a result:\n{done.stdout[-2000:]}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["_child"]:
        return _child(argv[1:])
    parser = argparse.ArgumentParser(prog="scripts/bench gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--model-dir", help="an XTTS model directory (default: build random full weights)")
    parser.add_argument("--audio-s", type=float, default=60.0, help="seconds of narration per profile")
    args = parser.parse_args(argv)

    from actors.gpu.tiers import detect_gpus

    detection = detect_gpus(use_torch=True)
    if not detection.usable:
        return _no_gpu(detection.fallback_reason)
    primary = detection.primary
    assert primary is not None

    tmp: tempfile.TemporaryDirectory[str] | None = None
    model_dir = args.model_dir
    if not model_dir:
        tmp = tempfile.TemporaryDirectory(prefix="skald-xtts-full-")
        model_dir = tmp.name
        print(f"bench gpu: building random full XTTS v2 in {model_dir} ...", file=sys.stderr, flush=True)
        build = [sys.executable, "-m", "tests.support.xtts_random", "--size", "full", model_dir]
        if subprocess.run(build, cwd=ROOT).returncode != 0:
            print("bench gpu: building the random XTTS model failed", file=sys.stderr)
            return 2
    try:
        profiles = {p: _run_child("profile", p, model_dir, args.audio_s) for p in PROFILES}
        stress = _run_child("stress", "high_performance", model_dir, args.audio_s)
    finally:
        if tmp is not None:
            tmp.cleanup()

    checks: dict[str, bool] = {}
    for name, res in profiles.items():
        lo, hi = res["util_band"]
        checks[f"{name}_util_in_band"] = res["util_mean"] is not None and lo <= res["util_mean"] <= hi
        checks[f"{name}_vram_under_limit"] = res["vram_peak_mb"] <= res["vram_limit_mb"]
        checks[f"{name}_no_underruns"] = res["underruns"] == 0
    entered = [e for e in stress["pressure_events"] if e["event"] in ("enter", "deeper")]
    checks["pressure_lowered_parallelism"] = any(e["max_streams"] < stress["base_streams"] for e in entered)
    checks["oom_recovered"] = bool(stress["oom_recovered"])

    result = {
        "benchmark": "gpu",
        "machine": machine(),
        "gpu": {
            **primary.to_dict(),
            "driver": detection.driver_version,
            "cuda_driver": detection.cuda_driver_version,
            "torch": detection.torch_version,
            "count": detection.count,
        },
        "engine": "xtts",
        "weights": WEIGHTS,
        "profiles": profiles,
        "pressure_events": stress["pressure_events"],
        "oom_recovered": stress["oom_recovered"],
        "stress": stress,
        "checks": checks,
    }
    print(json.dumps(result, indent=2))
    print(
        f"\nskald gpu on {primary.name} ({primary.vram_total_mb} MiB, CC {primary.to_dict()['compute_capability']}), "
        f"engine xtts, weights {WEIGHTS}",
        file=sys.stderr,
    )
    for name, res in profiles.items():
        print(
            f"  {name:<17} tier {res['tier']:<9} util {res['util_mean']} % (band {res['util_band']}), "
            f"VRAM peak {res['vram_peak_mb']:.0f} / limit {res['vram_limit_mb']:.0f} MiB, "
            f"underruns {res['underruns']}, RTF {res['rtf']}",
            file=sys.stderr,
        )
    print(
        f"  pressure events {[(e['event'], e['max_streams']) for e in stress['pressure_events']]}, "
        f"OOM recovered {stress['oom_recovered']}",
        file=sys.stderr,
    )
    failed = [name for name, ok in checks.items() if not ok]
    print("  checks: " + ("all hold" if not failed else "FAILED " + ", ".join(failed)), file=sys.stderr)
    from bench import write_json

    write_json(args.json, result)
    return 1 if failed else 0


# ============================================================================ the children


class PlaybackClock:
    """Queued audio drained in real time once the pre-buffer is reached; counts underruns."""

    def __init__(self, prebuffer_s: float) -> None:
        self.prebuffer_s = prebuffer_s
        self.produced_s = 0.0
        self.played_s = 0.0
        self.playing = False
        self.finished = False
        self.underruns = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def _advance(self) -> None:
        now = time.monotonic()
        if self.playing:
            self.played_s += now - self._last
            if self.played_s >= self.produced_s:
                self.played_s = self.produced_s
                self.playing = False
                if not self.finished:
                    self.underruns += 1
        self._last = now

    def add(self, seconds: float) -> None:
        with self._lock:
            self._advance()
            self.produced_s += seconds
            if not self.playing and self.produced_s - self.played_s >= self.prebuffer_s:
                self.playing = True

    def fill_s(self) -> float:
        with self._lock:
            self._advance()
            return self.produced_s - self.played_s

    def finish(self) -> None:
        with self._lock:
            self._advance()
            self.finished = True
            self.playing = True  # the rest plays out: no underrun at the end


@dataclass
class _Chunk:
    index: int
    text: str
    blocks_s: list[float] = field(default_factory=list)
    committed: int = 0
    done: bool = False


class UtilRecorder:
    """NVML utilization at 10 Hz, each reading tagged with whether the worker had work: a run in
    progress and the overfill guard not holding it (a GPU yield counts as having work)."""

    def __init__(self, nvml_index: int) -> None:
        from actors.gpu.control import NvmlSampler

        self.sampler = NvmlSampler(nvml_index)
        self.busy: Any = lambda: False
        self.samples: list[tuple[float, bool]] = []
        self.process_peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="util-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            sample = self.sampler.sample()
            if sample is None or sample.util_pct is None:
                continue
            self.samples.append((sample.util_pct, bool(self.busy())))
            if sample.process_used_mb is not None:
                self.process_peak_mb = max(self.process_peak_mb, sample.process_used_mb)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sampler.close()

    def mean(self, producing_only: bool) -> float | None:
        values = [u for u, busy in self.samples if busy or not producing_only]
        return round(sum(values) / len(values), 1) if values else None


class Runner:
    """The TTS worker's per-chunk loop around a real engine, with N parallel streams."""

    def __init__(self, engine: Any, voice: str, vram: Any, util: Any, clock: PlaybackClock, max_fill_s: float) -> None:
        self.engine, self.voice = engine, voice
        self.vram, self.util, self.clock = vram, util, clock
        self.max_fill_s = max_fill_s
        self.allowed = vram.config.concurrency
        self.yield_s = 0.0
        self.actions: dict[str, int] = {}
        self.streams_seen: dict[int, int] = {}
        self.degraded = 0
        self.synth_s = 0.0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._chunks: list[_Chunk] = []
        self._next_commit = 0
        self.on_check: Any = None  # stress hook, called after each chunk's pressure check
        self.fallback: tuple[Any, str] | None = None  # (Piper engine, voice) for degraded chunks
        self.running = False

    def has_work(self) -> bool:
        return self.running and self.clock.fill_s() <= self.max_fill_s

    def _commit(self) -> None:  # with self._lock held
        while self._next_commit < len(self._chunks):
            chunk = self._chunks[self._next_commit]
            while chunk.committed < len(chunk.blocks_s):
                self.clock.add(chunk.blocks_s[chunk.committed])
                chunk.committed += 1
            if not chunk.done:
                return
            self._next_commit += 1

    def _synthesize(self, chunk: _Chunk) -> None:
        from actors.tts.base import CancelToken

        def attempt_fn(attempt: Any) -> float:
            # Retry smaller: the chunk in pieces of at most attempt.shrink of its text.
            # A retry after an OOM mid-chunk speaks the chunk again (its first blocks are already
            # queued); the worker would retry only the unspoken text. Rare here, and counted in audio_s.
            words = chunk.text.split()
            size = max(1, int(len(words) * attempt.shrink))
            pieces = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
            total = 0.0
            for piece in pieces:
                for block in self.engine.synthesize(piece, self.voice, CancelToken()):
                    seconds = len(block) / 24000.0
                    total += seconds
                    with self._lock:
                        chunk.blocks_s.append(seconds)
                        self._commit()
            return total

        started = time.monotonic()
        outcome = self.vram.run_with_oom_recovery(attempt_fn, label=f"chunk {chunk.index}")
        if outcome.degrade:
            self.degraded += 1
            if self.fallback is not None:
                piper, piper_voice = self.fallback
                for block in piper.synthesize(chunk.text, piper_voice, CancelToken()):
                    with self._lock:
                        chunk.blocks_s.append(len(block) / 22050.0)
        elapsed = time.monotonic() - started
        with self._lock:
            chunk.done = True
            self._commit()
            self.synth_s += elapsed
        pressure = self.vram.check()
        if self.on_check is not None:
            self.on_check(pressure)
        with self._cond:
            decision = self.util.decide(self.clock.fill_s(), synth_s=elapsed, streams_cap=pressure.max_streams)
            self.allowed = decision.parallel_streams
            self.yield_s = decision.yield_s
            self.actions[decision.action] = self.actions.get(decision.action, 0) + 1
            self._cond.notify_all()

    def run(self, texts: list[str], recorder: UtilRecorder | None) -> None:
        todo: queue.Queue[_Chunk] = queue.Queue()
        for i, text in enumerate(texts):
            chunk = _Chunk(i, text)
            self._chunks.append(chunk)
            todo.put(chunk)
        errors: list[BaseException] = []

        def stream() -> None:
            while True:
                try:
                    chunk = todo.get_nowait()
                except queue.Empty:
                    return
                with self._cond:
                    while self._active >= self.allowed:
                        self._cond.wait(0.05)
                    self._active += 1
                    self.streams_seen[self._active] = self.streams_seen.get(self._active, 0) + 1
                    pause = self.yield_s
                try:
                    if pause > 0 and self.clock.fill_s() - pause >= self.util.low_water_s:
                        time.sleep(pause)  # the GPU yield (the real worker waits on its cancel token)
                    while self.clock.fill_s() > self.max_fill_s:  # the ring's overfill guard
                        time.sleep(0.05)
                    self._synthesize(chunk)
                except BaseException as exc:
                    errors.append(exc)
                    return
                finally:
                    with self._cond:
                        self._active -= 1
                        self._cond.notify_all()

        if recorder is not None:
            recorder.busy = self.has_work
        self.running = True
        threads = [threading.Thread(target=stream, name=f"stream-{i}") for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.running = False
        self.clock.finish()
        if errors:
            raise errors[0]


def _setup(audio_s: float) -> tuple[Any, ...]:
    from actors.gpu.control import UtilizationController, VramManager
    from actors.gpu.tiers import biased_chunk_targets, detect_gpus, resolve_gpu_config, setting_origins
    from actors.text.chunker import ChunkerConfig, SemanticChunker, SpeakingRate
    from actors.tts import create_engine
    from config.settings import load_settings

    settings = load_settings()
    resolved = resolve_gpu_config(settings, detect_gpus(use_torch=True), setting_origins())
    if not resolved.on_gpu:
        raise SystemExit(f"no CUDA GPU in the child: {resolved.fallback_reason}")
    vram = VramManager.for_worker(resolved)
    if not vram.active:
        raise SystemExit(f"VRAM manager inactive: {vram.reason}")
    vram.apply_limit()  # before the model loads: the weights count against the limit, as in the worker
    util = UtilizationController.for_worker(resolved)
    engine = create_engine("xtts", settings)
    info = engine.load_voice("")
    lo, hi = biased_chunk_targets(settings, resolved.config.chunk_bias)
    c = settings.chunker
    chunker = SemanticChunker(
        SpeakingRate(chars_per_s=info.chars_per_s),
        ChunkerConfig(lo, hi, c.hard_min_s, c.hard_max_s, c.first_chunk_s, c.first_chunk_max_s),
    )
    text = (ROOT / "config" / "samples" / "forest-long.txt").read_text(encoding="utf-8")
    plans = chunker.feed(text * 4) + chunker.finish()
    texts: list[str] = []
    total = 0.0
    for plan in plans:
        texts.append(plan.text)
        total += plan.est_s
        if total >= audio_s:
            break
    return settings, resolved, vram, util, engine, info, texts


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("profile", "stress"))
    parser.add_argument("--audio-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    settings, resolved, vram, util, engine, info, texts = _setup(args.audio_s)
    primary = resolved.detection.primary
    recorder = UtilRecorder(primary.nvml_index) if primary is not None and primary.nvml_index >= 0 else None
    clock = PlaybackClock(resolved.config.prebuffer_s)
    runner = Runner(engine, info.name, vram, util, clock, settings.ring.max_fill_s)
    from actors.tts import create_engine

    piper = create_engine("piper")
    runner.fallback = (piper, piper.load_voice("").name)
    result: dict[str, Any] = {
        "mode": args.mode,
        "profile": resolved.profile,
        "tier": resolved.tier.value,
        "config": resolved.config.to_dict(),
        "util_band": list(resolved.config.util_band),
        "vram_limit_mb": vram.limit_mb,
        "base_streams": resolved.config.concurrency,
        "chunks": len(texts),
    }
    try:
        if args.mode == "profile":
            runner.run(texts, recorder)
        else:
            result.update(_stress(runner, vram, engine, info.name, texts, recorder))
    finally:
        if recorder is not None:
            recorder.stop()
    audio_s = clock.produced_s
    result.update(
        util_mean=recorder.mean(producing_only=True) if recorder else None,
        util_mean_all=recorder.mean(producing_only=False) if recorder else None,
        util_samples=len(recorder.samples) if recorder else 0,
        vram_peak_mb=round(vram.run_peak_reserved_mb, 1),
        vram_peak_allocated_mb=round(vram.run_peak_allocated_mb, 1),
        process_peak_mb=round(recorder.process_peak_mb, 1) if recorder else None,
        underruns=clock.underruns,
        audio_s=round(audio_s, 2),
        rtf=round(runner.synth_s / audio_s, 4) if audio_s else None,
        actions=runner.actions,
        streams_seen=runner.streams_seen,
        degraded_chunks=runner.degraded,
        pressure_events=vram.events,
        oom_count=vram.oom_count,
        cache_clears=vram.cache_clears,
        status=vram.status(),
    )
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def _stress(runner: Runner, vram: Any, engine: Any, voice: str, texts: list[str], recorder: Any) -> dict[str, Any]:
    """Pressure provoked by a lowered limit, then an OOM provoked by a tiny one."""
    from actors.tts.base import CancelToken

    tier_limit = vram.limit_mb
    peaks: list[float] = []
    phase = {"name": "observe", "entered": False, "left": False}

    def on_check(pressure: Any) -> None:
        peaks.append(pressure.ratio * vram.limit_mb)
        if phase["name"] == "observe" and len(peaks) >= 3:
            vram.apply_limit(max(peaks) / 0.93)  # a chunk like those seen peaks at ~93 % of the limit
            phase["name"] = "squeeze"
        elif phase["name"] == "squeeze" and pressure.event in ("enter", "deeper"):
            phase["entered"] = True
            vram.apply_limit(tier_limit)
            phase["name"] = "relieve"
        elif phase["name"] == "squeeze":
            vram.apply_limit(min(vram.limit_mb, peaks[-1] / 0.93))  # that chunk peaked lower: tighten
        elif phase["name"] == "relieve" and pressure.event == "leave":
            phase["left"] = True

    runner.on_check = on_check
    runner.run(texts, recorder)
    pressure = {"pressure_entered": phase["entered"], "pressure_left": phase["left"], "chunk_peaks_mb": peaks}

    # OOM: nothing cached, and only 16 MiB of room above what is allocated now.
    import torch

    torch.cuda.synchronize()
    vram.release("bench")
    ooms_before = vram.oom_count
    vram.apply_limit(vram.memory.allocated_mb() + 16)

    def synth(attempt: Any) -> int:
        words = texts[1].split()
        piece = " ".join(words[: max(1, int(len(words) * attempt.shrink))])
        return sum(len(b) for b in engine.synthesize(piece, voice, CancelToken()))

    outcome = vram.run_with_oom_recovery(synth, label="provoked OOM")
    degraded_ok = False
    if outcome.degrade and runner.fallback is not None:
        piper, piper_voice = runner.fallback
        degraded_ok = sum(len(b) for b in piper.synthesize(texts[1], piper_voice, CancelToken())) > 0
    vram.apply_limit(tier_limit)
    after = sum(len(b) for b in engine.synthesize(texts[1], voice, CancelToken()))
    provoked = vram.oom_count > ooms_before
    return {
        **pressure,
        "oom_provoked": provoked,
        "oom_attempts": outcome.attempts,
        "oom_errors": list(outcome.errors),
        "oom_degraded_to_piper": degraded_ok,
        "xtts_after_oom_frames": after,
        "oom_recovered": provoked and (degraded_ok or not outcome.degrade) and after > 0,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""GPU adaptive control on a real GPU: ``scripts/bench gpu [--json PATH] [--model-dir DIR] [--audio-s S]``.

Needs a CUDA GPU; without one it exits 2 and prints the CPU tier configuration instead of numbers.
The engine is XTTS v2 (``create_engine("xtts", settings)``) on a model directory with the real
architecture and random weights (``python -m tests.support.xtts_random --size full DIR``, built
here unless ``--model-dir`` is given): timings are real, the audio is noise.

Each measurement runs in its own process, so the per-process VRAM limit and peak counters start
clean and the profile really comes from the environment (``SKALD_GPU_PROFILE``):

The GPU control measured is the worker's own: ``GpuControlHooks`` (``actors.gpu.hooks``), the
class the TTS worker runs, built the way the worker builds it (VRAM limit set before the model
loads). Every failure goes to ``hooks.on_error``, which is ``VramManager.recover_from_oom``, the
one OOM path; nothing here frees memory or changes the pressure level on its own.

``profile``  for high_performance and modest: synthesize ~``--audio-s`` seconds of narration with
    the worker's dispatch rules (at most ``hooks.streams()`` chunks at once, the pause from
    ``hooks.pause_before_dispatch`` asked before each dispatch while audio is queued, each chunk
    tried on XTTS twice and then on Piper), against a playback clock that drains the queued
    audio in real time from the moment the tier's pre-buffer is reached, and an overfill guard
    at ``ring.max_fill_s``.
    * ``util_mean``: mean NVML utilization (10 Hz) while the worker had work to do (not held by
      the overfill guard); ``util_mean_all`` over the whole run.
    * ``vram_peak_mb``: the torch allocator's peak reservation; must stay under ``vram_limit_mb``.
    * ``underruns``: times the playback clock caught up with the synthesized audio.
``stress``   on high_performance: (1) a provoked memory-pressure event: after a few chunks the
    limit is lowered to 1/0.93 of the observed per-chunk peak, so the next check enters pressure
    and parallelism drops; the limit is then restored until pressure is left; (2) a provoked
    OOM: the cache is emptied and the limit set to what is allocated + 16 MiB, so the chunk runs
    out of memory on both XTTS tries and Piper speaks it, as in the worker; the limit is
    restored and XTTS must synthesize again (``oom_recovered``).

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
        from actors.gpu.sensors import NvmlSampler

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
    """The TTS worker's dispatch rules around a real engine, through the worker's GPU hooks.

    ``hooks`` is a ``GpuControlHooks``: the streams allowed and the pause before a dispatch come
    from it, and every failed try goes to ``hooks.on_error`` (the one OOM path). A chunk gets
    the worker's tries: the main engine twice, then ``fallback`` (Piper). Each of ``engine`` and
    ``fallback`` is ``(engine, voice, sample_rate)``."""

    def __init__(
        self,
        engine: tuple[Any, str, int],
        hooks: Any,
        clock: PlaybackClock,
        max_fill_s: float,
        *,
        configured_streams: int,
        fallback: tuple[Any, str, int] | None = None,
    ) -> None:
        self.engine, self.fallback = engine, fallback
        self.hooks, self.clock = hooks, clock
        self.max_fill_s = max_fill_s
        self.configured = max(1, configured_streams)  # as TtsWorker: 0 and 1 are both sequential
        self.streams_seen: dict[int, int] = {}
        self.degraded = 0
        self.errors: list[str] = []
        self.synth_s = 0.0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._next_dispatch = 0.0
        self._chunks: list[_Chunk] = []
        self._next_commit = 0
        self.on_chunk: Any = None  # stress hook, called after each chunk
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

    def synthesize_chunk(self, chunk: _Chunk) -> str:
        """One chunk with the worker's tries; returns the name of the engine that spoke it ("" if none)."""
        from actors.tts.base import CancelToken

        tries = [self.engine, self.engine] + ([self.fallback] if self.fallback is not None else [])
        used = ""
        started = time.monotonic()
        for engine, voice, rate in tries:
            # A retry after a failure mid-chunk speaks the chunk again, as the worker does; its
            # first blocks stay counted (rare, and visible in audio_s).
            try:
                for block in engine.synthesize(chunk.text, voice, CancelToken()):
                    with self._lock:
                        chunk.blocks_s.append(len(block) / rate)
                        self._commit()
                used = engine.name
                break
            except Exception as exc:  # as the worker: any failure is reported and the next try runs
                self.errors.append(f"chunk {chunk.index} on {engine.name}: {type(exc).__name__}: {exc}"[:300])
                self.hooks.on_error(exc)
        if used != self.engine[0].name:
            self.degraded += 1
        elapsed = time.monotonic() - started
        with self._lock:
            chunk.done = True
            self._commit()
            self.synth_s += elapsed
        return used

    def _admit(self) -> None:
        """Wait until the worker's ``_dispatch`` would start one more chunk, and count it in."""
        from actors.tts_worker import RELEASE_AHEAD_S

        with self._cond:
            while True:
                if self._active >= max(1, self.hooks.streams(self.configured)):
                    self._cond.wait()
                    continue
                now = time.monotonic()
                if now < self._next_dispatch:
                    self._cond.wait(self._next_dispatch - now)  # the GPU yield
                    continue
                fill = self.clock.fill_s()
                if self._active or fill > RELEASE_AHEAD_S * 4:
                    pause = self.hooks.pause_before_dispatch(fill)
                    if pause > 0:
                        self._next_dispatch = now + pause
                        continue
                self._active += 1
                self.streams_seen[self._active] = self.streams_seen.get(self._active, 0) + 1
                return

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
                try:
                    while self.clock.fill_s() > self.max_fill_s:  # the ring's overfill guard
                        time.sleep(0.05)
                    self._admit()
                except BaseException as exc:
                    errors.append(exc)
                    return
                try:
                    self.synthesize_chunk(chunk)
                    if self.on_chunk is not None:
                        self.on_chunk()
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
    from actors.gpu.hooks import GpuControlHooks
    from actors.gpu.tiers import biased_chunk_targets, detect_gpus, resolve_gpu_config, setting_origins
    from actors.text.chunker import ChunkerConfig, SemanticChunker, SpeakingRate
    from actors.tts import create_engine
    from config.settings import load_settings

    settings = load_settings()
    resolved = resolve_gpu_config(settings, detect_gpus(use_torch=True), setting_origins())
    if not resolved.on_gpu:
        raise SystemExit(f"no CUDA GPU in the child: {resolved.fallback_reason}")
    hooks = GpuControlHooks(resolved)  # as the worker: the VRAM limit is set before the model loads
    if not hooks.vram.active:
        raise SystemExit(f"VRAM manager inactive: {hooks.vram.reason}")
    engine = create_engine("xtts", settings)
    info = engine.load_voice("")
    lo, hi = biased_chunk_targets(settings, hooks.chunk_bias())
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
    return settings, resolved, hooks, engine, info, texts


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("profile", "stress"))
    parser.add_argument("--audio-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    settings, resolved, hooks, engine, info, texts = _setup(args.audio_s)
    vram = hooks.vram
    primary = resolved.detection.primary
    recorder = UtilRecorder(primary.nvml_index) if primary is not None and primary.nvml_index >= 0 else None
    clock = PlaybackClock(resolved.config.prebuffer_s)
    from actors.tts import create_engine

    piper = create_engine("piper")
    piper_info = piper.load_voice("")
    # The worker's parallel_streams: tts.parallel_streams, or the tier's when it is -1.
    streams = settings.tts.parallel_streams if settings.tts.parallel_streams >= 0 else resolved.config.parallel_streams
    runner = Runner(
        (engine, info.name, info.sample_rate),
        hooks,
        clock,
        settings.ring.max_fill_s,
        configured_streams=streams,
        fallback=(piper, piper_info.name, piper_info.sample_rate),
    )
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
            result.update(_stress(runner, texts, recorder))
    finally:
        if recorder is not None:
            recorder.stop()
    audio_s = clock.produced_s
    util_status = hooks.util.status()
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
        last_action=util_status["action"],
        streams_seen=runner.streams_seen,
        degraded_chunks=runner.degraded,
        errors=runner.errors[:20],
        pressure_events=vram.events,
        oom_count=vram.oom_count,
        cache_clears=vram.cache_clears,
        status=hooks.status(),
    )
    hooks.close()
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def _stress(runner: Runner, texts: list[str], recorder: Any) -> dict[str, Any]:
    """Pressure provoked by a lowered limit, then an OOM provoked by a tiny one; both handled by
    the worker's hooks (``runner.hooks``), the OOM through its one recovery path."""
    from actors.tts.base import CancelToken

    vram = runner.hooks.vram
    engine, voice, _rate = runner.engine
    tier_limit = vram.limit_mb
    peaks: list[float] = []
    phase = {"name": "observe", "entered": False, "left": False}
    lock = threading.Lock()  # chunks finish on several stream threads

    def on_chunk() -> None:
        with lock:
            pressure = vram.pressure  # the latest check: the worker checks before each dispatch
            peaks.append(pressure.ratio * vram.limit_mb)
            if phase["name"] == "observe" and len(peaks) >= 3:
                vram.apply_limit(max(peaks) / 0.93)  # a chunk like those seen peaks at ~93 % of the limit
                phase["name"] = "squeeze"
            elif phase["name"] == "squeeze" and pressure.event in ("enter", "deeper"):
                phase["entered"] = True
                vram.apply_limit(tier_limit)
                phase["name"] = "relieve"
            elif phase["name"] == "squeeze" and peaks[-1] > 0:
                vram.apply_limit(min(vram.limit_mb, peaks[-1] / 0.93))  # that chunk peaked lower: tighten
            elif phase["name"] == "relieve" and pressure.event == "leave":
                phase["left"] = True

    runner.on_chunk = on_chunk
    runner.run(texts, recorder)
    pressure = {"pressure_entered": phase["entered"], "pressure_left": phase["left"], "chunk_peaks_mb": peaks}

    # OOM: nothing cached, and only 16 MiB of room above what is allocated now. The chunk gets the
    # worker's tries: XTTS runs out of memory twice (each time hooks.on_error recovers), Piper speaks.
    import torch

    torch.cuda.synchronize()
    vram.release("bench")
    ooms_before = vram.oom_count
    vram.apply_limit(vram.memory.allocated_mb() + 16)
    used = runner.synthesize_chunk(_Chunk(-1, texts[1]))
    vram.apply_limit(tier_limit)
    after = sum(len(b) for b in engine.synthesize(texts[1], voice, CancelToken()))
    provoked = vram.oom_count > ooms_before
    fallback_name = runner.fallback[0].name if runner.fallback is not None else ""
    return {
        **pressure,
        "oom_provoked": provoked,
        "oom_count_provoked": vram.oom_count - ooms_before,
        "oom_spoken_by": used,
        "oom_degraded_to_piper": bool(fallback_name) and used == fallback_name,
        "xtts_after_oom_frames": after,
        "oom_recovered": provoked and used != "" and after > 0,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

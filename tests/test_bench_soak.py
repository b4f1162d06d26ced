"""scripts/bench soak's verdict on per-minute samples: a leak moves the RSS median, the phase of one
sample (inside a chunk's synthesis or between chunks) does not."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from bench_soak import summarize  # scripts/ is not a package: on sys.path above


def _minutes(worker_rss: list[float]) -> list[dict[str, Any]]:
    return [
        {"minute": i + 1, "rss_mb": {"tts_worker": rss, "supervisor": 60.0},
         "fds": {"tts_worker": 21, "supervisor": 30}, "requests": 1, "not_done": 0,
         "underruns": 0, "audio_s": 60.0, "ttfa_ms_p50": 150.0}
        for i, rss in enumerate(worker_rss)
    ]  # fmt: skip


def _summary(worker_rss: list[float]) -> dict[str, Any]:
    return summarize(_minutes(worker_rss), "", argparse.Namespace(sink="null", minutes=len(worker_rss)))


def test_a_sample_inside_a_chunk_is_not_growth() -> None:
    # Minute 5 falls between chunks (193 MB), others inside one (up to 205 MB): a flat worker.
    rss = [380.0, 200.0, 203.0, 202.0, 193.0] + [202.0, 205.0, 194.0, 203.0, 196.0] * 11
    result = _summary(rss)
    assert abs(result["rss_growth_pct_after_warm_up"]["tts_worker"]) < 1.0
    assert result["rss_peak_growth_pct_after_warm_up"]["tts_worker"] == 6.22  # 205 / 193: reported beside it
    assert result["rss_growth_pct_after_warm_up"]["supervisor"] == 0.0


def test_a_leak_moves_the_median() -> None:
    rss = [380.0, 200.0, 200.0, 200.0, 200.0] + [200.0 + 0.5 * i for i in range(55)]  # +0.5 MB a minute
    result = _summary(rss)
    assert result["rss_growth_pct_after_warm_up"]["tts_worker"] > 10.0
    assert result["fd_range_after_warm_up"] == {"tts_worker": 0, "supervisor": 0}


def _sawing(minutes: int, leak_mb_per_min: float = 0.0, seed: int = 3) -> list[dict[str, Any]]:
    """The worker as its once-a-minute heap trim makes it: each minute's samples between the
    trimmed level (~190 MB) and a chunk's working set (~530 MB), the median of the 12 landing on
    either at random; ``leak_mb_per_min`` raises both."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(minutes):
        leak = leak_mb_per_min * i
        low, high = 188.0 + rng.uniform(0, 6) + leak, 522.0 + rng.uniform(0, 14) + leak
        rows.append({
            "minute": i + 1, "rss_mb": {"tts_worker": rng.choice([low + 5, high - 20])},
            "rss_mb_min": {"tts_worker": low}, "rss_mb_max": {"tts_worker": high},
            "fds": {"tts_worker": 21}, "requests": 1, "not_done": 0, "underruns": 0, "audio_s": 60.0,
            "ttfa_ms_p50": 150.0,
        })  # fmt: skip
    return rows


def test_the_trims_saw_is_not_growth_but_a_leak_under_it_is() -> None:
    flat = summarize(_sawing(60), "", argparse.Namespace(sink="null", minutes=60))
    assert abs(flat["rss_floor_growth_pct_after_warm_up"]["tts_worker"]) < 5.0
    assert abs(flat["rss_envelope_growth_pct_after_warm_up"]["tts_worker"]) < 5.0
    leaking = summarize(_sawing(60, leak_mb_per_min=0.5), "", argparse.Namespace(sink="null", minutes=60))
    assert leaking["rss_floor_growth_pct_after_warm_up"]["tts_worker"] > 10.0  # 25 MB over ~190
    assert leaking["rss_envelope_growth_pct_after_warm_up"]["tts_worker"] > 3.0

"""``scripts/bench matrix``: which configuration it names as the best, and its report section drawn
from a real quick run (tests/data/bench-matrix-sample.json: ``scripts/bench matrix --quick``)."""

from __future__ import annotations

import base64
import io
import json
import sys
from typing import Any

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bench_matrix
import bench_report


def _cell(
    block: int, pb: float, ttfa: float, underruns: int = 0, underflows: int = 0, cancel: float = 20.0
) -> dict[str, Any]:
    hog = {"status": "done", "ttfa_ms": ttfa, "underruns": underruns, "device_underflows": underflows,
           "cancel_to_silence_ms": cancel}  # fmt: skip
    return {"block": block, "latency": "low", "prebuffer_s": pb, "quiet": dict(hog), "hog": hog}


def test_the_best_configuration_is_the_fastest_start_that_never_underran_under_load() -> None:
    cells = [
        _cell(128, 0.25, 90.0, underruns=2),  # fastest, but it underran beside the hog
        _cell(512, 0.25, 95.0, underflows=1),  # the callback was late once
        _cell(128, 0.5, 140.0, cancel=30.0),
        _cell(256, 0.5, 140.0, cancel=25.0),  # the same start: the faster cancel wins
        _cell(128, 1.0, 260.0),
    ]
    top = bench_matrix.best(cells)
    assert top is not None and (top["block"], top["prebuffer_s"]) == (256, 0.5)
    assert bench_matrix.best(cells[:2]) is None  # nothing clean under load: no best, said so


def test_the_matrix_section_draws_a_heat_map_and_names_the_best_from_a_real_run() -> None:
    figures = json.loads((ROOT / "tests" / "data" / "bench-matrix-sample.json").read_text())
    rows, reading, plots = bench_report._matrix_section(figures)
    assert len(rows) == len(figures["cells"]) + len(figures["rates"])  # a row per cell, one per ring rate
    top = figures["best"]
    if top is None:
        assert "No configuration" in reading
    else:
        assert f"block {top['block']}, latency {top['latency']}, pre-buffer {top['prebuffer_s']:g} s" in reading
    import matplotlib.image

    assert len(plots) == 2
    for png in plots:
        image = matplotlib.image.imread(io.BytesIO(base64.b64decode(png)), format="png")
        assert image.shape[0] > 100 and image.shape[1] > 300

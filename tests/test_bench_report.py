"""``scripts/bench report``: a tiny report (``--tiny``: one run of each benchmark, on the real
pipeline, real Piper and the PulseAudio rig) is written, its page holds every section with a
reading, a table or the reason it is missing, and every plot decodes, in Python and in Chromium."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, server_env

SECTIONS = ("core", "rate16k", "cancel", "starve", "peers", "matrix", "adaptive")


class Page(HTMLParser):
    """The parts of the report page the test checks: sections, their headings, images, tables."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: dict[str, list[str]] = {}
        self.tables = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id") or "")
        elif tag == "img":
            self.images.setdefault(self.sections[-1] if self.sections else "", []).append(a.get("src") or "")
        elif tag == "table":
            self.tables += 1
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-report")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "report", "--tiny", "--out", str(out)],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _decoded(src: str) -> Any:
    import matplotlib.image

    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def test_a_tiny_report_holds_every_section_with_figures_from_real_runs(tiny_report: Path) -> None:
    report = json.loads((tiny_report / "report.json").read_text())
    assert list(report["sections"]) == list(SECTIONS)
    status = {name: s["status"] for name, s in report["sections"].items()}
    assert status == {"core": "ran", "rate16k": "skipped", "cancel": "ran", "starve": "skipped",
                      "peers": "skipped", "matrix": "skipped", "adaptive": "ran"}  # fmt: skip
    assert report["sections"]["rate16k"]["error"] == "not part of --tiny"
    core = report["sections"]["core"]["figures"]
    assert core["ttfa_ms_p50"] > 0 and core["floor_ms"] > 0 and core["rtf"] > 0
    assert report["sections"]["cancel"]["figures"]["cancels"] == 3
    adaptive = report["sections"]["adaptive"]["figures"]
    assert adaptive["adaptive"]["underruns"] < adaptive["fixed"]["underruns"]
    assert report["versions"]["piper-tts"] != "not installed" and report["commit"]
    assert {"cpu", "cores", "memory_gb"} <= set(report["machine"])


def test_the_report_page_is_whole_and_every_plot_decodes(tiny_report: Path) -> None:
    page = Page()
    page.feed((tiny_report / "index.html").read_text(encoding="utf-8"))
    assert page.title == "skald benchmark report"
    assert page.sections == list(SECTIONS)
    # One plot per ran section at least (two for the adaptive one), none for a skipped one.
    assert {name: len(srcs) for name, srcs in page.images.items()} == {"core": 1, "cancel": 1, "adaptive": 2}
    for srcs in page.images.values():
        for src in srcs:
            image = _decoded(src)
            assert image.shape[0] > 100 and image.shape[1] > 300
    assert page.tables == 4  # the meta table and one per ran section (core, cancel, adaptive)


def _render_only(out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "report", "--render-only", "--out", str(out)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_render_only_redraws_the_page_from_the_json(tiny_report: Path) -> None:
    page = tiny_report / "index.html"
    page.unlink()
    proc = _render_only(tiny_report)
    assert proc.returncode == 0, proc.stderr
    assert page.is_file() and "id='adaptive'" in page.read_text(encoding="utf-8")


def test_render_only_without_a_report_says_what_to_run(tmp_path: Path) -> None:
    proc = _render_only(tmp_path)
    assert proc.returncode == 2
    assert "report.json: no such file (run without --render-only first)" in proc.stderr


def test_the_page_opens_in_chromium_with_every_plot_drawn(tiny_report: Path) -> None:
    from tests.browser_rig import Chromium

    async def check() -> dict[str, Any]:
        browser = await Chromium((tiny_report / "index.html").as_uri(), env=server_env(), name="report").start()
        try:
            # The page, not the about:blank the browser starts on, has loaded.
            await browser.wait_for("location.protocol === 'file:' && document.readyState === 'complete'")
            # Loaded again with errors reported: nothing on the console.
            await browser.call("Runtime.enable")
            await browser.call("Log.enable")
            await browser.evaluate("window.loadedBefore = true")
            await browser.call("Page.reload")
            await browser.wait_for("window.loadedBefore === undefined && document.readyState === 'complete'")
            assert browser.console_errors == [], browser.console_errors
            return dict(
                await browser.evaluate(
                    "({images: document.images.length, "
                    "drawn: Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length, "
                    "sections: document.querySelectorAll('section').length})"
                )
            )
        finally:
            await browser.close()

    seen = asyncio.run(check())
    assert seen == {"images": 4, "drawn": 4, "sections": len(SECTIONS)}  # core 1, cancel 1, adaptive 2


def test_the_peers_section_renders_every_system_from_a_real_run() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_report  # scripts/ is not a package: on sys.path above

    figures = json.loads((ROOT / "tests" / "data" / "bench-peers-sample.json").read_text())
    rows, reading, plots = bench_report._peers_section(figures)
    names = [name for name, _ in rows]
    assert names[:4] == ["skald", "floor", "piper-http", "piper-tts-server"]
    assert "RealtimeTTS (PiperEngine)" in names and "versions" in names
    assert "x floor" in dict(rows)["piper-http"] and "skald starts speaking in" in reading
    by_name = dict(rows)
    assert "0 gaps > 20 ms in 13 s of narration" in by_name["skald"]
    assert "1 gaps > 20 ms in 12 s of narration (266 ms)" in by_name["floor"]
    assert "cancel -> silence p50 28 ms" in by_name["skald"] and "no cancel in its API" in by_name["piper-http"]
    assert all("peak RSS" in by_name[n] and "% of a core" in by_name[n] for n in names[:4])
    assert "Gaps over 20 ms in one narration: skald 0, floor 1, piper-http 0, piper-tts-server 0" in reading
    assert len(plots) == 2 and all(_decoded("data:image/png;base64," + p).shape[1] > 300 for p in plots)
    failed = {**figures, "systems": {**figures["systems"], "piper-http": {"error": "did not start: boom"}}}
    assert dict(bench_report._peers_section(failed)[0])["piper-http"] == "not measured: did not start: boom"

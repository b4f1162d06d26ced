"""Scenarios of the WebRTC listener tests and benchmark, run inside a private network namespace.

``python -m tests.webrtc_scenario SCENARIO OUT_DIR`` must run under ``unshare -n`` (the tests
and ``scripts/bench webrtc`` start it that way): it brings up loopback, starts a private
PulseAudio with one null sink for skald's device (``vsink``) and one per browser (``b1``...), a
real ``skald serve --http`` on the device sink, ``parec`` recorders on every monitor and headless
Chromiums on the player page, drives the page over CDP, and writes what it saw to ``OUT_DIR``:
``result.json`` (times on the wall clock, getStats series, events) and ``audio.npz``
(recordings at 22.05 kHz and the reference narration built from the server's events). The
asserting is left to the caller (``tests/test_webrtc.py``, ``scripts/bench_webrtc.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from actors import wire
from tests import conftest
from tests.audio_rig import STEADY_DEVICE, MonitorRecorder, PulseNullSink
from tests.browser_rig import STATS_PROBE, Chromium
from tests.event_log import EventLog
from tests.test_speech_output import DETERMINISTIC, joined_from_events

RATE = 22050  # recordings and references, at the voice's rate
LONG = (
    "The door creaks open. Cold air spills over the broken steps, and somewhere below, water drips. "
    "Torchlight wavers on the walls, and the carvings there seem to move when you are not looking at them. "
    "At the bottom of the stair, a figure waits in the dark, patient as stone."
)
#: A pre-buffer that rides out a busy shared test machine: the stage itself must not gap, so that
#: every gap a browser recording shows is the WebRTC path's.
ROBUST_STAGE = {"SKALD_PREBUFFER_START_S": "1.5", "SKALD_PREBUFFER_RESUME_S": "1.5"}
SHORT = "The door creaks open. Cold air spills over the broken steps, and somewhere below, water drips."

# The test process's run id, so the leak check of the caller's conftest sees this server as its own.
if os.environ.get(conftest.SESSION_VAR):
    conftest.SESSION_ID = os.environ[conftest.SESSION_VAR]


def wall() -> float:
    """Wall-clock seconds: the page's ``performance.timeOrigin + now()`` is on the same clock."""
    return time.time()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Recorder:
    """A ``MonitorRecorder`` whose sample 0 is placed on the wall clock."""

    def __init__(self, source: str, env: dict[str, str]) -> None:
        self.source = source
        self.rec = MonitorRecorder(rate=RATE, source=source, env=env)
        self.t0 = 0.0

    def start(self) -> Recorder:
        self.rec.start()
        assert self.rec.first_bytes_at is not None
        self.t0 = self.rec.first_bytes_at + (time.time() - time.monotonic())
        return self

    def now_index(self) -> int:
        return self.rec.samples_recorded

    async def wait_seconds(self, seconds: float) -> None:
        """Until ``seconds`` more of audio are recorded (the sink's real-time clock, not a guess)."""
        target = self.rec.samples_recorded + int(seconds * RATE)
        await asyncio.to_thread(self.rec.wait_for_samples, target, seconds + 10.0)

    def stop(self) -> np.ndarray:
        return self.rec.stop()


#: A listener's jitter buffer has settled: over a second of the stage received, and no sample
#: inserted or removed by NetEq in the last 0.5 s of getStats (STATS_PROBE samples every 100 ms).
SETTLED = """(() => {
  const s = window.__stats;
  if (s.length < 6) return false;
  const a = s.at(-6), b = s.at(-1);
  return b.totalSamplesReceived > 48000 && a.inserted === b.inserted && a.removed === b.removed;
})()"""


class Stage:
    """PulseAudio, the server, recorders and browsers of one scenario (all inside the namespace)."""

    def __init__(self, out: Path, n_browsers: int) -> None:
        self.out = out
        self.n = n_browsers
        # Its log tells when this machine did not run a player (a browser, the device) in time:
        # the tests tell such stalls from skald's own gaps (tests/test_webrtc.py, machine_stalls).
        self.pulse = PulseNullSink(log_underruns=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: conftest.Server | None = None
        self.events: EventLog | None = None
        self.recorders: dict[str, Recorder] = {}
        self.browsers: dict[str, Chromium] = {}
        self.result: dict[str, Any] = {"port": self.port, "marks": {}}
        self.audio: dict[str, np.ndarray] = {}
        self._run_parent = Path(tempfile.mkdtemp(prefix="skw", dir="/tmp"))

    def mark(self, name: str, value: Any = None) -> None:
        self.result["marks"][name] = wall() if value is None else value

    async def start(self, extra_env: dict[str, str] | None = None) -> None:
        self.pulse.start()
        for i in range(1, self.n + 1):
            self.pulse.pactl("load-module", "module-null-sink", f"sink_name=b{i}", "rate=48000", "norewinds=1")
        env = {**self.pulse.env, **STEADY_DEVICE, **DETERMINISTIC, **ROBUST_STAGE, **(extra_env or {})}
        # Settings to try: a JSON object of SKALD_* variables (docs/webrtc.md, scripts/bench_webrtc.py).
        env.update(json.loads(os.environ.get("SCENARIO_SERVER_ENV", "{}")))
        self.server = await asyncio.to_thread(
            conftest.Server,
            self._run_parent / "run",
            conftest.server_env(**env),
            ["--sink", "device", "--http", f"127.0.0.1:{self.port}"],
        )
        self.events = EventLog(self.server.client())
        self.recorders["device"] = Recorder("vsink.monitor", self.pulse.env).start()
        for i in range(1, self.n + 1):
            self.recorders[f"b{i}"] = Recorder(f"b{i}.monitor", self.pulse.env).start()

    def actor_pid(self, role: str) -> int:
        assert self.server is not None
        return self.server.actor_pids()[role]

    async def open_browser(self, name: str) -> Chromium:
        """A browser on the player page, its audio on sink ``name``, connected and receiving."""
        env = {**os.environ, **self.pulse.env, "PULSE_SINK": name}
        browser = await Chromium(self.url + "/", env, name=name).start()
        self.browsers[name] = browser
        await browser.wait_for("document.readyState === 'complete' && !!window.skaldPlayer")
        await browser.evaluate(STATS_PROBE)
        await browser.evaluate("document.getElementById('connect').click(), true")
        await browser.wait_for("window.skaldPlayer.pc && window.skaldPlayer.pc.connectionState === 'connected'")
        # Audio flows from the start (the stage sends silence between narrations). Wait until the
        # browser's jitter buffer has settled: for its first ~1 s NetEq stretches what it plays
        # while it finds its target delay (inserted, then removed samples), and a narration started
        # then is heard time-stretched -- Chromium's start-up, not skald's timing (a listener that
        # connected 0.2 s before the click failed the three-listener test's first-second check).
        await browser.wait_for(SETTLED)
        self.mark(f"{name}_connected", await browser.evaluate("window.__stats[0].t / 1000"))
        self.mark(f"{name}_settled", await browser.evaluate("window.__stats.at(-1).t / 1000"))
        return browser

    async def speak_from(self, browser: Chromium, text: str, barge_in: bool = False) -> tuple[str, float]:
        """Type ``text`` into the page and press Speak; (request id, wall time of the click)."""
        await browser.evaluate(
            f"document.getElementById('text').value = {json.dumps(text)};"
            f"document.getElementById('bargein').checked = {json.dumps(barge_in)}; true"
        )
        t_click = wall()
        await browser.evaluate("document.getElementById('speak').click(), true")
        request_id = await browser.wait_for("window.skaldPlayer.lastRequest")
        await browser.evaluate("window.skaldPlayer.lastRequest = null, true")
        return str(request_id), t_click

    async def finished(self, request_id: str, timeout_s: float = 120.0) -> wire.RequestFinished:
        assert self.events is not None
        _, event = await asyncio.to_thread(self.events.finished, request_id, timeout_s)
        return event

    def reference(self, request_id: str) -> np.ndarray:
        assert self.events is not None
        return joined_from_events(self.events.messages(), request_id, RATE).astype(np.float32)

    def event_times(self, request_id: str) -> dict[str, float]:
        """Wall times of a request's playback_started / request_finished as seen here."""
        assert self.events is not None
        offset = time.time() - time.monotonic()
        found: dict[str, float] = {}
        for kind, name in ((wire.PlaybackStarted, "playback_started"), (wire.RequestFinished, "request_finished")):
            seen = self.events.of(request_id, kind)
            if seen:
                found[name] = seen[0][0] + offset
        return found

    async def stats(self, name: str) -> list[dict[str, Any]]:
        return list(await self.browsers[name].evaluate("window.__stats"))

    async def close(self) -> None:
        for name, browser in list(self.browsers.items()):
            with contextlib.suppress(Exception):
                self.result.setdefault("stats", {})[name] = await self.stats(name)
            await browser.close()
        for name, rec in self.recorders.items():
            self.audio[f"rec_{name}"] = rec.stop()
            self.result.setdefault("rec_t0", {})[name] = rec.t0
        if self.events is not None:
            self.events.close()
        if self.server is not None:
            self.result["server_exit"] = await asyncio.to_thread(self.server.stop)
            self.result["server_log_tail"] = self.server.log()[-3000:]
        self.result["pulse_underruns"] = self.pulse.stream_underruns()
        self.pulse.stop()
        with contextlib.suppress(OSError):
            for p in self._run_parent.iterdir():
                p.unlink() if p.is_file() else None
            self._run_parent.rmdir()

    def save(self) -> None:
        (self.out / "result.json").write_text(json.dumps(self.result, indent=1, default=str))
        np.savez(self.out / "audio.npz", **self.audio)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- scenarios
async def listen(stage: Stage) -> None:
    """One browser: a narration played whole, then a second one stopped with the page's Stop."""
    await stage.start()
    browser = await stage.open_browser("b1")
    rid, t_click = await stage.speak_from(browser, SHORT)
    finished = await stage.finished(rid)
    await stage.recorders["b1"].wait_seconds(0.6)
    stage.result["narration"] = {"request_id": rid, "t_click": t_click, "status": finished.status,
                                 "underruns": finished.underruns, **stage.event_times(rid)}  # fmt: skip
    stage.audio["ref_narration"] = stage.reference(rid)
    # Stop: a long narration, cut by the page's Stop button once a second of it was heard.
    rid2, t_click2 = await stage.speak_from(browser, LONG)
    assert stage.events is not None
    await asyncio.to_thread(stage.events.wait, lambda e: isinstance(e, wire.PlaybackStarted) and e.request_id == rid2)
    await stage.recorders["b1"].wait_seconds(1.5)
    await browser.evaluate("document.getElementById('stop').click(), true")
    t_stop = await browser.wait_for(
        "(window.skaldPlayer.log.filter(e => e.what === 'stop').at(-1) || {t: 0}).t + performance.timeOrigin"
    )
    finished2 = await stage.finished(rid2)
    await stage.recorders["b1"].wait_seconds(1.5)
    stage.result["stop"] = {"request_id": rid2, "t_click": t_click2, "t_stop": t_stop / 1000.0,
                            "status": finished2.status, **stage.event_times(rid2)}  # fmt: skip
    stage.audio["ref_stopped"] = stage.reference(rid2)


async def started(stage: Stage, request_id: str) -> None:
    assert stage.events is not None
    await asyncio.to_thread(
        stage.events.wait, lambda e: isinstance(e, wire.PlaybackStarted) and e.request_id == request_id
    )


async def crowd(stage: Stage) -> None:
    """Three browsers hear one narration together; during a second one a fourth joins mid-way and
    then one of the first three is killed."""
    await stage.start()
    b1 = await stage.open_browser("b1")
    await stage.open_browser("b2")
    await stage.open_browser("b3")
    rid, t_click = await stage.speak_from(b1, SHORT)
    await stage.finished(rid)
    await stage.recorders["device"].wait_seconds(0.6)
    stage.result["narration"] = {"request_id": rid, "t_click": t_click, **stage.event_times(rid)}
    stage.audio["ref_narration"] = stage.reference(rid)
    rid2, t_click2 = await stage.speak_from(b1, LONG)
    await started(stage, rid2)
    await stage.recorders["device"].wait_seconds(2.0)
    stage.mark("join_requested")
    await stage.open_browser("b4")  # mid-narration
    await stage.recorders["device"].wait_seconds(1.0)
    stage.result.setdefault("stats", {})["b2"] = await stage.stats("b2")
    stage.mark("kill_b2")
    killed = stage.browsers.pop("b2")
    killed.kill()
    await killed.close()
    finished2 = await stage.finished(rid2)
    await stage.recorders["device"].wait_seconds(0.6)
    stage.result["long"] = {"request_id": rid2, "t_click": t_click2, "status": finished2.status,
                            "underruns": finished2.underruns, **stage.event_times(rid2)}  # fmt: skip
    stage.audio["ref_long"] = stage.reference(rid2)


async def stall(stage: Stage) -> None:
    """The web actor is SIGSTOPped for 2 s mid-narration: the device never notices; the browser
    resumes at the live point after SIGCONT."""
    await stage.start()
    b1 = await stage.open_browser("b1")
    rid, t_click = await stage.speak_from(b1, LONG)
    await started(stage, rid)
    await stage.recorders["device"].wait_seconds(1.5)
    web = stage.actor_pid(wire.Role.WEB)
    stage.mark("sigstop")
    os.kill(web, signal.SIGSTOP)
    try:
        await stage.recorders["device"].wait_seconds(2.0)
    finally:
        os.kill(web, signal.SIGCONT)
    stage.mark("sigcont")
    finished = await stage.finished(rid)
    await stage.recorders["device"].wait_seconds(0.6)
    stage.result["long"] = {"request_id": rid, "t_click": t_click, "status": finished.status,
                            "underruns": finished.underruns, "device_underflows": finished.device_underflows,
                            **stage.event_times(rid)}  # fmt: skip
    stage.audio["ref_long"] = stage.reference(rid)


def nft(*args: str) -> None:
    subprocess.run(["nft", *args], check=True, capture_output=True, text=True)


async def loss(stage: Stage) -> None:
    """5 % UDP loss for 5 s inside the namespace mid-narration, then a clean narration."""
    await stage.start()
    b1 = await stage.open_browser("b1")
    await stage.open_browser("b2")
    rid, t_click = await stage.speak_from(b1, LONG)
    await started(stage, rid)
    await stage.recorders["device"].wait_seconds(1.0)
    nft("add", "table", "inet", "t")
    nft("add", "chain", "inet", "t", "c", "{ type filter hook input priority 0; }")
    nft("add", "rule", "inet", "t", "c", "meta", "l4proto", "udp", "numgen", "random", "mod", "100", "<", "5", "drop")
    stage.mark("loss_on")
    try:
        await stage.recorders["device"].wait_seconds(5.0)
    finally:
        nft("delete", "table", "inet", "t")
    stage.mark("loss_off")
    finished = await stage.finished(rid)
    await stage.recorders["device"].wait_seconds(0.6)
    stage.result["long"] = {"request_id": rid, "t_click": t_click, "status": finished.status,
                            "underruns": finished.underruns, **stage.event_times(rid)}  # fmt: skip
    stage.audio["ref_long"] = stage.reference(rid)
    stage.mark("clean_start")
    rid2, t_click2 = await stage.speak_from(b1, SHORT)
    await stage.finished(rid2)
    await stage.recorders["device"].wait_seconds(0.6)
    stage.mark("clean_end")
    stage.result["narration"] = {"request_id": rid2, "t_click": t_click2, **stage.event_times(rid2)}
    stage.audio["ref_narration"] = stage.reference(rid2)


BENCH_TEXT = "The door creaks open, and cold air spills over the broken steps."


async def bench(stage: Stage) -> None:
    """``scripts/bench webrtc``: N listeners (``BENCH_LISTENERS``), ``BENCH_REQUESTS`` narrations
    sent over HTTP and heard to the end, then as many again cancelled 0.8 s after their audio
    starts; the web actor's CPU time over the run."""
    import aiohttp
    import psutil

    requests = int(os.environ.get("BENCH_REQUESTS", "10"))
    await stage.start({"SKALD_PREBUFFER_START_S": "0.5", "SKALD_PREBUFFER_RESUME_S": "0.5"})
    for i in range(1, stage.n + 1):
        await stage.open_browser(f"b{i}")
    web = psutil.Process(stage.actor_pid(wire.Role.WEB))
    cpu0, t0 = web.cpu_times(), time.monotonic()
    stage.mark("measure_start")
    played: list[dict[str, Any]] = []
    cancelled: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        for i in range(2 * requests):
            cancel = i >= requests
            t_send = wall()
            async with http.post(f"{stage.url}/v1/narration", json={"text": BENCH_TEXT}) as resp:
                rid = (await resp.json())["request_id"]
            item: dict[str, Any] = {"request_id": rid, "t_send": t_send}
            if cancel:
                await started(stage, rid)
                await stage.recorders["device"].wait_seconds(0.8)
                item["t_cancel"] = wall()
                async with http.post(f"{stage.url}/v1/narration/cancel", json={"all": True}) as resp:
                    await resp.read()
            finished = await stage.finished(rid)
            item.update(status=finished.status, ttfa_ms=finished.ttfa_ms, underruns=finished.underruns)
            await stage.recorders["device"].wait_seconds(0.8)  # the tail reaches every browser
            (cancelled if cancel else played).append(item)
    cpu1, t1 = web.cpu_times(), time.monotonic()
    stage.mark("measure_end")
    assert stage.server is not None
    with stage.server.client() as client:  # the stage feed's pacing and drops, from the web actor
        web_metrics = client.status()["actors"][wire.Role.WEB]["metrics"]
    stage.result["bench"] = {
        "listeners": stage.n, "played": played, "cancelled": cancelled,
        "web_cpu_pct": 100.0 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0),
        "web_metrics": web_metrics,
    }  # fmt: skip


SCENARIOS = {
    "listen": (listen, 1),
    "crowd": (crowd, 4),
    "stall": (stall, 1),
    "loss": (loss, 2),
    "bench1": (bench, 1),
    "bench3": (bench, 3),
}


async def main(name: str, out: Path) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    run, n = SCENARIOS[name]
    stage = Stage(out, n)
    code = 0
    try:
        await run(stage)
    except BaseException as exc:
        stage.result["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    finally:
        if stage.server is not None:  # the web actor's own view (frames late, skipped, dropped), for failures
            with contextlib.suppress(Exception), stage.server.client() as client:
                stage.result["web_metrics"] = client.status()["actors"][wire.Role.WEB]["metrics"]
        await stage.close()
        stage.save()
    return code


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(asyncio.run(main(sys.argv[1], Path(sys.argv[2]))))

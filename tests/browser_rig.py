"""A real browser for tests: Debian's headless Chromium, driven over the DevTools protocol.

Why a small CDP client on ``aiohttp`` (already installed) and not playwright or selenium: the
tests need four calls (open a page, evaluate an expression and await its promise, read the
result, close), all of which are one JSON message each over the page's DevTools websocket;
playwright-core would add node and npm to the CI image, selenium the chromedriver version dance.

Recipe (``../shared/test-rigs.md``): loopback only, inside a private network namespace (the
caller runs under ``unshare -n``); ``--allow-loopback-in-peer-connection`` and no mDNS hiding so
ICE connects on 127.0.0.1 with no STUN; a fresh profile per browser; audio goes to PulseAudio
(``PULSE_SINK`` picks the null sink whose monitor the test records).

Every browser runs in its own session (process group): ``close``/``kill`` take the whole tree
(zygote, renderer, audio and network services) down, so nothing outlives a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # A hidden headless page must keep its timers and audio at full rate.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
)
INSTALL_HINT = "install Debian's chromium (scripts/install-audio-deps installs it)"


class BrowserError(RuntimeError):
    """The browser failed to start, or a page expression threw."""


class Chromium:
    """One headless Chromium with one page, opened on ``url``."""

    def __init__(self, url: str, env: dict[str, str], name: str = "chromium") -> None:
        self.url = url
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix="skald-chromium-"))
        # Chromium's temp files go in this browser's own folder, removed with it: in the system's,
        # each browser left a /tmp/org.chromium.Chromium.* folder (its profile's SingletonSocket)
        # behind, which a killed browser never removes.
        (self.dir / "tmp").mkdir()
        self.env = {**env, "PULSE_LATENCY_MSEC": "40", "TMPDIR": str(self.dir / "tmp")}
        self.proc: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        #: What the page reported as an error once ``Runtime``/``Log`` are enabled: uncaught
        #: exceptions, ``console.error`` calls, error-level log entries (a failed load included).
        self.console_errors: list[str] = []

    async def start(self, timeout_s: float = 60.0) -> Chromium:
        if not os.path.exists(CHROMIUM):
            raise BrowserError(f"no chromium at {CHROMIUM}: {INSTALL_HINT}")
        profile = self.dir / "profile"
        # A listener's browser runs on the listener's own machine, which skald's inference does not
        # load; here it shares two cores with the server. Like the null sink standing in for a sound
        # card (tests/audio_rig.py), it runs at a raised priority where allowed (nice -8, as the web
        # actor; the audio consumer stays above at -10; `nice` warns and runs it as is where not),
        # with a 40 ms PulseAudio buffer, so the test measures skald's stream, not this machine's
        # scheduling of the browser's audio thread.
        cmd = ["nice", "-n", "-8", CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
               self.url]  # fmt: skip
        log = (self.dir / "chromium.log").open("wb")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log, start_new_session=True)
        log.close()
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None:
                raise BrowserError(f"{self.name} exited ({self.proc.returncode}) at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BrowserError(f"{self.name} opened no DevTools port within {timeout_s} s:\n{self.log_tail()}")
            await asyncio.sleep(0.02)  # a file appearing sends no notice
        port = int(port_file.read_text().splitlines()[0])
        self._session = aiohttp.ClientSession()
        page_ws = ""
        while not page_ws:
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                pages = [t for t in await resp.json() if t.get("type") == "page"]
            if pages:
                page_ws = pages[0]["webSocketDebuggerUrl"]
            elif time.monotonic() > deadline:
                raise BrowserError(f"{self.name} shows no page")
            else:
                await asyncio.sleep(0.05)
        self._ws = await self._session.ws_connect(page_ws, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        return self

    def log_tail(self, n: int = 30) -> str:
        path = self.dir / "chromium.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            self._note_error(data)
            fut = self._waiting.pop(data.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(data)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(BrowserError(f"{self.name}: DevTools connection closed"))

    def _note_error(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.console_errors.append(str(params.get("exceptionDetails", {}).get("text", "exception")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.console_errors.append(str(params["entry"].get("text", "")))

    async def call(self, method: str, params: dict[str, Any] | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        assert self._ws is not None
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = fut
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        reply = await asyncio.wait_for(fut, timeout_s)
        if "error" in reply:
            raise BrowserError(f"{self.name}: {method}: {reply['error']}")
        return dict(reply.get("result") or {})

    async def evaluate(self, expression: str, timeout_s: float = 30.0) -> Any:
        """The value of ``expression`` in the page (a promise is awaited)."""
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout_s,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{self.name}: {expression[:80]!r} threw: {text}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout_s: float = 30.0) -> Any:
        """Poll ``expression`` until it is truthy (page state sends no notice to this side)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{self.name}: {expression!r} still false after {timeout_s} s")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole browser (a crash, as far as the server can tell)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 5.0)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None:
            # The renderer and utility processes share the group: none may outlive the browser.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


#: Collects the page's inbound-rtp audio stats every 100 ms into ``window.__stats``.
STATS_PROBE = """
(() => {
  if (window.__statsTimer) return true;
  window.__stats = [];
  window.__statsTimer = setInterval(async () => {
    const pc = window.skaldPlayer && window.skaldPlayer.pc;
    if (!pc) return;
    const report = await pc.getStats();
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        // Chromium's audio output path after the jitter buffer (media-playout: its delay summed
        // over the samples played), to split the browser's latency into its parts.
        const playout = s.playoutId ? report.get(s.playoutId) : null;
        window.__stats.push({
          t: performance.timeOrigin + performance.now(),
          packetsReceived: s.packetsReceived || 0, packetsLost: s.packetsLost || 0,
          concealedSamples: s.concealedSamples || 0, concealmentEvents: s.concealmentEvents || 0,
          totalSamplesReceived: s.totalSamplesReceived || 0, jitter: s.jitter || 0,
          jitterBufferDelay: s.jitterBufferDelay || 0, jitterBufferEmittedCount: s.jitterBufferEmittedCount || 0,
          inserted: s.insertedSamplesForDeceleration || 0, removed: s.removedSamplesForAcceleration || 0,
          jitterBufferTargetDelay: s.jitterBufferTargetDelay || 0,
          playoutDelay: (playout && playout.totalPlayoutDelay) || 0,
          playoutSamples: (playout && playout.totalSamplesCount) || 0,
        });
      }
    });
  }, 100);
  return true;
})()
"""


#: PulseAudio underruns less than this apart are one stall of the machine.
STALL_GAP_S = 0.2
#: The null sink mixes in blocks: a stream starved at all may lose up to about one block more.
SINK_BLOCK_S = 0.02
#: Chromium's own stream and skald's device stream (through PortAudio's ALSA plug-in), as PulseAudio names them.
BROWSER_STREAM, DEVICE_STREAM = "Playback", "ALSA Playback"


def machine_stalls(underruns: list[Any], stream: str | None = None) -> list[tuple[float, float]]:
    """(wall start, end) of each stall of this machine that PulseAudio saw starve a player's stream
    (``stream``'s, or any), from the underruns in its log (``PulseNullSink.stream_underruns``,
    kept by the scenarios as ``pulse_underruns``).

    A player whose stream runs dry was not run in time to fill its buffer (Chromium's is 40 ms,
    raised in priority: tests/browser_rig.py); the sink plays silence for it meanwhile and its
    recording slides by as long. On the 2-vCPU test VM the machine stalls all its processes at
    once now and then (all three browsers' and the device's streams ran dry within 80 ms of each
    other, 2026-12-02), which skald cannot prevent on a machine it shares with four browsers. The
    daemon names a stream when its underrun starts, not when it ends, and the three browsers'
    streams share one name, so a stall is measured whole: underruns less than ``STALL_GAP_S``
    apart, from the first start to the last end + ``SINK_BLOCK_S``."""
    stalls: list[tuple[float, float, set[str]]] = []
    for start, end, name in sorted(tuple(u) for u in underruns):
        if stalls and start <= stalls[-1][1] + STALL_GAP_S:
            first, last, names = stalls[-1]
            stalls[-1] = (first, max(last, end), names | {name})
        else:
            stalls.append((start, end, {name}))
    return [(first, last + SINK_BLOCK_S) for first, last, names in stalls if stream is None or stream in names]


def near_a_stall(t: float, stalls: list[tuple[float, float]]) -> tuple[float, float] | None:
    """The stall (``machine_stalls``) that a browser's concealment at wall time ``t`` follows, if
    any: from 0.1 s before it to 1 s after (a machine that did not run the players in time did
    not run the web actor's sends or the browser's decoder in time either)."""
    return next(((first, last) for first, last in stalls if first - 0.1 <= t <= last + 1.0), None)


def neteq_hold_s(series: list[dict[str, Any]], before: float) -> float | None:
    """How long a browser's NetEq held each sample over the second before ``before`` (wall s):
    the growth of STATS_PROBE's ``jitterBufferDelay`` per emitted sample, in s; its share of when
    it plays what arrived. None when the probe has no samples there or nothing was emitted."""
    window = [x for x in series if (before - 1.0) * 1000 <= x["t"] <= before * 1000]
    if len(window) < 2:
        return None
    emitted = window[-1]["jitterBufferEmittedCount"] - window[0]["jitterBufferEmittedCount"]
    if emitted <= 0:
        return None
    return float((window[-1]["jitterBufferDelay"] - window[0]["jitterBufferDelay"]) / emitted)

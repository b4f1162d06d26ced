"""``skald top``: a live terminal view of a running server, over its control and events sockets.

Every ``REFRESH_S`` it asks the server for ``status`` (actors with pid, state, restarts, RSS and
CPU from their metrics tick; requests in flight with chunk progress; ring fill; TTFA p50/p95,
underruns and RTF over the last minutes, kept by the supervisor's metrics; the GPU) and drains
the events published meanwhile (the last few finished requests and errors). Drawn with ``rich``
on the terminal's alternate screen; ``q`` quits (Ctrl-C too). No port of its own: the same
sockets as ``skald status`` and ``skald events``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from actors import wire

#: Seconds between two frames: 2.5 frames a second.
REFRESH_S = 0.4
RECENT_EVENTS = 6


def add_top_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``top`` subcommand; the caller adds the client options (endpoint, run dir, timeout)."""
    return sub.add_parser("top", help="live view of a running server (actors, requests, ring, latency); q quits")


class TopView:
    """What one frame shows: the last status and the recent events, rendered with rich."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.status: dict[str, Any] | None = None
        self.problem = ""
        self.events: deque[str] = deque(maxlen=RECENT_EVENTS)

    def note(self, event: wire.Message) -> None:
        """Keep a line for the events a person watching wants to see go by."""
        stamp = time.strftime("%H:%M:%S")
        if isinstance(event, wire.RequestFinished):
            self.events.append(
                f"{stamp} {event.request_id} {event.status}: {event.audio_s:.1f} s of audio, "
                f"TTFA {event.ttfa_ms:.0f} ms, {event.underruns} underruns"
            )
        elif isinstance(event, wire.Error):
            self.events.append(f"{stamp} error [{event.kind}] {event.actor}: {event.message[:90]}")
        elif isinstance(event, wire.Underrun):
            self.events.append(f"{stamp} {event.request_id} underrun #{event.count}")

    def render(self) -> Group:
        status = self.status or {}
        uptime = float(status.get("uptime_s", 0.0))
        head = Text.assemble(
            ("skald top", "bold"),
            f"  {self.endpoint}  up {_duration(uptime)}  ",
            (self.problem, "bold red"),
        )
        parts: list[Any] = [head, self._actors(status), self._requests(status), self._ring_and_latency(status)]
        gpu = self._gpu(status)
        if gpu is not None:
            parts.append(gpu)
        if self.events:
            parts.append(Panel("\n".join(self.events), title="recent events", title_align="left"))
        parts.append(Text("q quits", style="dim"))
        return Group(*parts)

    @staticmethod
    def _actors(status: dict[str, Any]) -> Table:
        table = Table(title="actors", title_justify="left", expand=True)
        for column in ("actor", "pid", "state", "restarts", "RSS MB", "CPU %", "doing"):
            table.add_column(column, justify="right" if column in ("pid", "restarts", "RSS MB", "CPU %") else "left")
        for role, actor in status.get("actors", {}).items():
            metrics = actor.get("metrics") or {}
            state = actor.get("state") or ("running" if actor.get("ready") else "starting")
            table.add_row(
                role,
                str(actor.get("pid") or "-"),
                Text(state, style="green" if state == "running" else "bold red"),
                str(actor.get("restarts", 0)),
                _number(metrics.get("rss_mb"), "{:.0f}"),
                _number(metrics.get("cpu_percent"), "{:.0f}"),
                _doing(role, metrics),
            )
        return table

    @staticmethod
    def _requests(status: dict[str, Any]) -> Table:
        requests = status.get("requests", [])
        table = Table(title=f"requests in flight: {len(requests)}", title_justify="left", expand=True)
        for column in ("request", "age", "chunks", "progress", "audio s", "TTFA ms", "RTF"):
            table.add_column(column, justify="left" if column in ("request", "progress") else "right")
        for req in requests:
            planned = int(req.get("chunks", 0))
            done = int(req.get("chunks_synthesized", 0))
            audio_s = float(req.get("audio_s", 0.0))
            ttfa = float(req.get("ttfa_ms", -1.0))
            table.add_row(
                str(req.get("request_id", "")),
                _duration(float(req.get("age_s", 0.0))),
                f"{done}/{planned}" + ("+" if req.get("text_open") else ""),
                ProgressBar(total=max(planned, 1), completed=done, width=24),
                f"{audio_s:.1f}",
                f"{ttfa:.0f}" if ttfa >= 0 else "-",
                f"{float(req.get('synth_ms', 0.0)) / 1000 / audio_s:.3f}" if audio_s > 0 else "-",
            )
        return table

    @staticmethod
    def _ring_and_latency(status: dict[str, Any]) -> Table:
        ring = status.get("ring", {})
        recent = status.get("recent", {})
        buffered = float(ring.get("buffered_s", 0.0))
        limit = float(ring.get("max_fill_s") or 0.0) or (
            ring.get("capacity_frames", 0) / max(1, ring.get("sample_rate", 1))
        )
        grid = Table.grid(padding=(0, 2))
        grid.add_column()
        grid.add_column()
        grid.add_row(
            "ring fill",
            Text.assemble(f"{buffered:5.2f} s / {limit:.0f} s  "),
        )
        grid.add_row("", ProgressBar(total=max(limit, 0.001), completed=min(buffered, limit), width=48))
        window = _duration(float(recent.get("window_s", 300.0)))
        grid.add_row(
            f"last {window}",
            f"TTFA p50 {_number(recent.get('ttfa_ms_p50'), '{:.0f}')} ms  "
            f"p95 {_number(recent.get('ttfa_ms_p95'), '{:.0f}')} ms  "
            f"({recent.get('playbacks', 0)} playbacks)  underruns {recent.get('underruns', 0)}  "
            f"RTF (last minute) {_number(recent.get('rtf_last_minute'), '{:.3f}')}",
        )
        return grid

    @staticmethod
    def _gpu(status: dict[str, Any]) -> Text | None:
        report = status.get("gpu") or {}
        worker = (status.get("actors", {}).get("tts_worker") or {}).get("metrics") or {}
        live = worker.get("gpu") or {}
        if not report:
            return None
        gpus = report.get("gpus") or []
        line = f"GPU tier {report.get('tier', '?')} (profile {report.get('profile', '?')})"
        if gpus:
            line += f"  {gpus[0].get('name', '')}"
        util = (live.get("util") or {}).get("util_pct")
        vram = live.get("vram") or {}
        used = vram.get("process_used_mb") or vram.get("reserved_mb")
        if util is not None:
            line += f"  util {util:.0f} %"
        if used is not None:
            line += f"  VRAM {used:.0f} MB" + (f" of {vram['total_mb']:.0f}" if vram.get("total_mb") else "")
        if not gpus:
            line += "  (no GPU: Piper on CPU)"
        return Text(line)


def _doing(role: str, metrics: dict[str, Any]) -> str:
    if role == wire.Role.TTS_WORKER:
        return (
            f"{metrics.get('inflight_chunks', 0)} synthesizing, {metrics.get('queued_chunks', 0)} queued, "
            f"{metrics.get('chunks_synthesized', 0)} done"
        )
    if role == wire.Role.AUDIO_CONSUMER:
        return f"{metrics.get('state', '?')}, {metrics.get('underruns', 0)} underruns"
    generating = metrics.get("generating")
    return f"writing {generating}" if generating else f"{metrics.get('turns_done', 0)} turns"


def _number(value: Any, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and value >= 0 else "-"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """``read(timeout)``: one key pressed within ``timeout`` seconds, or ""; the terminal is in
    cbreak mode (keys arrive unbuffered, Ctrl-C still works) until the block ends."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):

        def wait_only(timeout: float) -> str:
            time.sleep(timeout)
            return ""

        yield wait_only
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:

        def read(timeout: float) -> str:
            ready, _, _ = select.select([fd], [], [], timeout)
            return os.read(fd, 32).decode(errors="replace") if ready else ""

        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_top(args: argparse.Namespace, make_client: Callable[[], Any]) -> int:
    """Draw frames until ``q`` (or Ctrl-C). ``make_client`` gives a ``SkaldClient`` with events."""
    from actors.client import SkaldClientError

    try:
        client = make_client()
    except SkaldClientError as exc:
        print(f"skald top: {exc}", file=sys.stderr)
        return 1
    view = TopView(client.control_endpoint)
    console = Console()
    try:
        with _keys() as read_key, Live(view.render(), console=console, screen=True, auto_refresh=False) as live:
            while True:
                try:
                    view.status = client.status()
                    view.problem = ""
                except SkaldClientError as exc:
                    view.problem = f"no answer: {exc}"
                for event in client.events(timeout_s=0):
                    view.note(event)
                live.update(view.render(), refresh=True)
                if "q" in read_key(REFRESH_S).lower():
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()

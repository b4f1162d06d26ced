"""Progress on the terminal for the commands that take a while: start-up (which actor loads
what), an offline render (``skald speak --unpaced``) and a voice profile (``skald voice add``).

Bars and spinners are drawn with ``rich`` on stderr and only when stderr is a terminal; ``--quiet``
silences them. Elsewhere (a pipe, a log file) ``speak`` keeps its one line per chunk, which
``--quiet`` also silences, so scripts read the same output as before.

The render bar counts chunks done of chunks planned (the whole text is chunked as soon as it
arrives, so the total is known from the start), the audio seconds rendered, the speed in
multiples of real time (audio seconds per wall-clock second since the request was accepted)
and an ETA: the planned audio not yet rendered (the chunker's estimates) at the speed so far.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from actors import wire

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from config.settings import Settings
    from supervisor import Supervisor


def interactive(quiet: bool = False) -> bool:
    """Whether to draw bars and spinners: stderr is a terminal and ``--quiet`` was not given."""
    return not quiet and sys.stderr.isatty()


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def loading_description(role: str, settings: Settings) -> str:
    """What ``role`` loads at start-up, from the settings it is started with."""
    if role == wire.Role.WEB:
        return f"HTTP gateway on {settings.web.http}"
    if role in (wire.Role.TTS_WORKER, wire.Role.TTS_RENDER):
        tts = settings.tts
        if tts.engine == "xtts":
            where = settings.xtts.model_dir or "(xtts.model_dir unset)"
            return f"loading XTTS v2 model from {where} on {settings.xtts.device}"
        return f"loading Piper voice {tts.voice}"
    if role == wire.Role.AUDIO_CONSUMER:
        sink = settings.audio.sink
        if sink == "device":
            return f"opening audio device {settings.audio.device or '(default output)'}"
        return f"opening the {sink} sink" if sink == "null" else f"opening {sink[4:]}"
    actor = getattr(settings.actors, str(role), None)
    if actor is None:
        return "starting"
    if actor.backend == "transformers":
        return f"loading language model {actor.model or '(model unset)'} on {actor.device}"
    if actor.backend == "openai":
        return f"language model {actor.model or '(server default)'} at {actor.endpoint}"
    return "text pass-through (nothing to load)"


class StartupProgress:
    """One spinner per actor while the supervisor starts them, ticked off as each says READY
    (with its load time from the ``Ready`` info). A no-op when ``enabled`` is false."""

    def __init__(self, sup: Supervisor, enabled: bool) -> None:
        self.sup = sup
        self.enabled = enabled
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._what: dict[str, str] = {}

    def __enter__(self) -> StartupProgress:
        if not self.enabled:
            return self
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=_console(),
        )
        for role in self.sup.children:
            self._what[role] = loading_description(role, self.sup.settings)
            self._tasks[role] = self._progress.add_task(f"{role}: {self._what[role]}", total=1)
        self.sup.ready_listeners.append(self._on_ready)
        self._progress.start()
        return self

    def _on_ready(self, role: str, info: dict[str, Any]) -> None:
        if self._progress is None or role not in self._tasks:
            return
        trouble = info.get("degraded") or info.get("load_error")
        note = f" [yellow]({trouble})[/]" if trouble else ""
        # The elapsed column stops here: spawn, imports and loading, as the user waited for them.
        self._progress.update(self._tasks[role], completed=1, description=f"{role}: {self._what[role]}: ready{note}")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._on_ready in self.sup.ready_listeners:
            self.sup.ready_listeners.remove(self._on_ready)
        if self._progress is not None:
            self._progress.stop()


class RenderProgress:
    """A supervisor event listener for ``skald speak``: the render bar (``bar``) or one line per
    chunk (``lines``), or nothing. Use as a context manager around the run."""

    def __init__(self, sup: Supervisor, *, bar: bool, lines: bool) -> None:
        self.sup = sup
        self.bar = bar
        self.lines = lines
        self.planned: dict[int, float] = {}  # chunk index -> estimated seconds
        self.done: dict[int, float] = {}  # chunk index -> real seconds
        self.t_start = time.monotonic()
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> RenderProgress:
        if self.bar:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            self._progress = Progress(
                TextColumn("rendering"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"),
                console=_console(),
            )
            self._task = self._progress.add_task("render", total=None, detail="chunking the text")
            self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, msg: wire.Message) -> None:
        if isinstance(msg, wire.Accepted):
            self.t_start = time.monotonic()
        elif isinstance(msg, wire.ChunkPlanned):
            self.planned[msg.index] = msg.est_s
        elif isinstance(msg, wire.ChunkSynthesized):
            self.done[msg.index] = msg.dur_s
            if self.lines and not self.bar:
                print(
                    f"  chunk {msg.index + 1}/{len(self.planned) or '?'}: {msg.dur_s:5.2f} s of audio "
                    f"in {msg.synth_ms:6.1f} ms",
                    file=sys.stderr,
                )
        elif isinstance(msg, (wire.PlaybackStarted, wire.Underrun, wire.Error, wire.AudioOutputRestored)):
            self._note(msg)
        elif isinstance(msg, wire.RequestFinished) and msg.status == "done":
            self.planned.update({i: d for i, d in self.done.items() if i not in self.planned})
        self._draw()

    def _note(self, msg: wire.Message) -> None:
        if isinstance(msg, wire.PlaybackStarted):
            line = f"  playback started, TTFA {msg.ttfa_ms:.0f} ms"
        elif isinstance(msg, wire.Underrun):
            line = f"  underrun #{msg.count}"
        elif isinstance(msg, wire.AudioOutputRestored):
            line = f"  output device {msg.device!r} is back after {msg.down_s:.2f} s ({msg.replayed_s:.2f} s again)"
        else:
            assert isinstance(msg, wire.Error)
            line = f"  error [{msg.kind}] {msg.actor}: {msg.message}"
        if self._progress is not None:
            if not isinstance(msg, wire.PlaybackStarted):  # an offline render's TTFA means nothing
                self._progress.console.print(line, markup=False, highlight=False)
        elif self.lines:
            print(line, file=sys.stderr)

    def figures(self) -> dict[str, float]:
        """Chunks done/total, audio rendered, speed (× real time) and ETA (s; -1 while unknown)."""
        rendered = sum(self.done.values())
        elapsed = max(time.monotonic() - self.t_start, 1e-6)
        speed = rendered / elapsed
        left = sum(est for i, est in self.planned.items() if i not in self.done)
        eta = left / speed if speed > 0 else -1.0
        return {
            "done": len(self.done),
            "total": max(len(self.planned), len(self.done)),
            "audio_s": rendered,
            "speed": speed,
            "eta_s": eta,
        }

    def _draw(self) -> None:
        if self._progress is None or self._task is None:
            return
        f = self.figures()
        if not f["total"]:
            return
        eta = f"ETA {f['eta_s']:.0f} s" if f["eta_s"] >= 0 and f["done"] < f["total"] else ""
        detail = (
            f"{f['done']:.0f}/{f['total']:.0f} chunks  {f['audio_s']:.1f} s audio  {f['speed']:.1f}× real time  {eta}"
        )
        self._progress.update(self._task, total=f["total"], completed=f["done"], detail=detail.rstrip())


@contextmanager
def spinner(text: str, enabled: bool) -> Iterator[None]:
    """A spinner with elapsed seconds beside ``text`` while the block runs (a step whose length
    nothing can measure from inside, such as computing a voice's latents); nothing when disabled."""
    if not enabled:
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=_console(),
    ) as progress:
        task = progress.add_task(text, total=1)
        yield
        progress.update(task, completed=1)

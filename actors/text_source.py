"""The prelude and narrative actors: where a request's text comes from.

Backends:
- ``text``: forward the orchestrator's own text, in order (``Speak.text`` / ``Append`` /
  ``End`` for the narrative actor, ``Speak.prelude`` for the prelude actor). This is a real
  mode: speaking text the orchestrator already has.

Language-model backends (a small fast model for the prelude, a large one for the narrative)
plug in here later behind the same ``TextBackend`` interface; the TTS worker only ever sees
``TextPiece`` messages, in order, ending with one ``final=True`` per source.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from actors import wire
from actors.runtime import ActorIO, ActorSpec, process_rss_mb, run_actor

PRELUDE = "prelude"
NARRATIVE = "narrative"


class TextSourceActor:
    """Turns requests into ``TextPiece`` streams for one source (prelude or narrative)."""

    def __init__(self, role: str, backend: str, send: Any) -> None:
        if role not in (PRELUDE, NARRATIVE):
            raise ValueError(f"unknown text source role {role!r}")
        if backend != "text":
            raise ValueError(f"{role}: unknown backend {backend!r}; available: text")
        self.role = role
        self.backend = backend
        self._send = send
        self._open: set[str] = set()  # streaming narrative requests still expecting text
        self.pieces_sent = 0

    def ready_info(self) -> dict[str, Any]:
        return {"backend": self.backend}

    def handle(self, msg: wire.Message) -> None:
        """Process one message from the supervisor (also called directly by in-process tests)."""
        if isinstance(msg, wire.Speak):
            self._on_speak(msg)
        elif isinstance(msg, wire.Append):
            if msg.request_id in self._open:
                self._piece(msg.request_id, msg.text, final=False)
        elif isinstance(msg, wire.End):
            if msg.request_id in self._open:
                self._open.discard(msg.request_id)
                self._piece(msg.request_id, "", final=True)
        elif isinstance(msg, wire.Cancel):
            # Nothing buffered here with the text backend; forget open streams so late
            # Append/End for a cancelled request produce no text.
            if msg.all:
                self._open.clear()
            else:
                self._open.discard(msg.request_id)

    def _on_speak(self, msg: wire.Speak) -> None:
        if self.role == PRELUDE:
            self._piece(msg.request_id, msg.prelude, final=True)
            return
        if msg.streaming:
            self._open.add(msg.request_id)
            if msg.text:
                self._piece(msg.request_id, msg.text, final=False)
        else:
            self._piece(msg.request_id, msg.text, final=True)

    def _piece(self, request_id: str, text: str, final: bool) -> None:
        self.pieces_sent += 1
        self._send(wire.TextPiece(request_id=request_id, source=self.role, text=text, final=final))

    def metrics(self) -> dict[str, Any]:
        return {"pieces_sent": self.pieces_sent, "open_streams": len(self._open), "rss_mb": process_rss_mb()}

    def run(self, stop: threading.Event, inbox: queue.Queue[wire.Message]) -> None:
        last_metrics = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now - last_metrics > 1.0:
                last_metrics = now
                self._send(wire.Metrics(role=self.role, values=self.metrics()))
            try:
                msg = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(msg, wire.Shutdown):
                return
            self.handle(msg)


class _TextSourceProcess:
    def __init__(self, spec: ActorSpec, io: ActorIO) -> None:
        settings = spec.config
        backend = getattr(settings.actors, spec.role).backend
        self.actor = TextSourceActor(spec.role, backend, io.send)
        self.io = io

    def ready_info(self) -> dict[str, Any]:
        return self.actor.ready_info()

    def run(self, stop: threading.Event) -> None:
        self.actor.run(stop, self.io.inbox)

    def close(self) -> None:
        pass


def run_prelude_process(spec: ActorSpec) -> None:
    """Entry point of the prelude actor process."""
    run_actor(spec, _TextSourceProcess)


def run_narrative_process(spec: ActorSpec) -> None:
    """Entry point of the narrative actor process."""
    run_actor(spec, _TextSourceProcess)

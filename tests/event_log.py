"""What a server said, as the tests and the chaos script read it: every event with the monotonic
time it arrived, read on a thread (``EventLog``), and the chunk plans a request's text makes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from actors import wire
from actors.client import SkaldClient


class EventLog:
    """Every event of a server, with the monotonic time it arrived here, read on a thread.
    Owns ``client`` (closed by ``close``)."""

    def __init__(self, client: SkaldClient) -> None:
        self.client = client
        self.seen: list[tuple[float, wire.Message]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            for event in self.client.events(timeout_s=0.1):
                with self._cond:
                    self.seen.append((time.monotonic(), event))
                    self._cond.notify_all()

    def wait(self, match: Callable[[wire.Message], bool], timeout: float = 60.0) -> tuple[float, wire.Message]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, event in self.seen:
                    if match(event):
                        return t, event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching event within {timeout} s")
                self._cond.wait(left)

    def finished(self, request_id: str, timeout: float = 60.0) -> tuple[float, wire.RequestFinished]:
        t, event = self.wait(lambda e: isinstance(e, wire.RequestFinished) and e.request_id == request_id, timeout)
        assert isinstance(event, wire.RequestFinished)
        return t, event

    def finished_now(self, request_id: str) -> wire.RequestFinished | None:
        """The request's ``request_finished`` if it has arrived; None otherwise (no wait)."""
        found = self.of(request_id, wire.RequestFinished)
        return found[0][1] if found else None

    def of(self, request_id: str, kind: type[wire.Message] = wire.Message) -> list[tuple[float, Any]]:
        with self._cond:
            return [(t, e) for t, e in self.seen if isinstance(e, kind) and getattr(e, "request_id", "") == request_id]

    def messages(self) -> list[wire.Message]:
        with self._cond:
            return [e for _, e in self.seen]

    def stop(self) -> None:
        """Stop reading (what was seen stays readable); the client stays open."""
        self._stop.set()
        self._thread.join(2.0)

    def close(self) -> None:
        self.stop()
        self.client.close()


def alnum(texts: list[str]) -> str:
    """The letters and digits of ``texts`` joined: chunk plans compare equal whatever the cuts."""
    return "".join(c for c in "".join(texts) if c.isalnum())


def planned_sources(text: str) -> list[str]:
    """The source text of each chunk the default-sized chunker makes of ``text``."""
    from actors.text.chunker import ChunkerConfig, SemanticChunker, SpeakingRate

    chunker = SemanticChunker(SpeakingRate(15.0), ChunkerConfig(3, 7, 2.4, 8, 1.2, 2.5))
    return [p.source for p in chunker.feed(text) + chunker.finish()] if text.strip() else []


def final_plan(log: EventLog, request_id: str) -> list[str]:
    """The chunk plan as finally spoken: a restarted worker re-plans from the chunk it resumed at,
    so a later plan of an index replaces the earlier ones from that index on."""
    plan: dict[int, str] = {}
    for _, event in log.of(request_id, wire.ChunkPlanned):
        for index in [i for i in plan if i >= event.index]:
            del plan[index]
        plan[event.index] = event.source
    return [plan[i] for i in sorted(plan)]

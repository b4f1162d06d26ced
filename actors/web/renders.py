"""Renders on their way from the render worker's ring to their HTTP responses.

The render worker (``Role.TTS_RENDER``) synthesizes every ``/v1/audio/speech`` request into one
shared-memory ring, chunk by chunk, round-robin across the renders in flight; each pushed span
is announced with a ``Segment`` that the supervisor routes here. ``RenderReader`` is that ring's
one reader: for each ``Segment`` (in ring order, on the actor's message thread) it copies the
frames out, hands them to the request's ``RenderStream`` and releases them in the ring.

Backpressure, and the memory bound: a ``RenderStream`` holds at most ``bound_frames`` of audio
(``web.render_buffer_s``) that its client has not taken. When a client reads more slowly than
its render is synthesized and that bound is reached, the reader waits before releasing more of
the ring, so the ring fills and the render worker waits on it: renders wait, the live narration
never does (it has its own worker and ring). Because the ring is shared, the other renders in
flight wait with it; the bound (a minute of audio by default) is what keeps that rare.

Threads: ``handle``/``on_segment`` run on the web actor's message thread; ``cancel`` and
``fail`` may come from any thread; ``RenderStream.next_item`` is awaited on the asyncio loop.
``RenderStream`` is the only object they share, guarded by one condition variable that is held
only for list operations.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from actors import wire
from shm import PcmRing

log = logging.getLogger("skald.web")


@dataclass(frozen=True)
class RenderEnd:
    """The last item of a ``RenderStream``: how the render ended."""

    status: wire.RequestStatus
    reason: str = ""
    kind: str = ""  # the ``Error.kind`` that ended it, when one did


class RenderStream:
    """One render's audio blocks (float32 at the ring rate), then one ``RenderEnd``."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop, bound_frames: int) -> None:
        self.request_id = request_id
        self.bound_frames = max(1, bound_frames)
        self.frames_in = 0  # frames delivered by the ring
        self._loop = loop
        self._wake = asyncio.Event()
        self._cond = threading.Condition()
        self._items: deque[np.ndarray | RenderEnd] = deque()
        self._buffered = 0
        self._ended = False
        self._closed = False  # the HTTP side is gone: drop whatever still comes

    # ------------------------------------------------------------------ producer side (threads)
    def put(self, block: np.ndarray, stop: threading.Event | None = None) -> None:
        """Queue ``block``; waits while the client is ``bound_frames`` behind (see module doc)."""
        with self._cond:
            while self._buffered >= self.bound_frames and not (self._closed or self._ended):
                if stop is not None and stop.is_set():
                    return
                self._cond.wait(0.1)
            if self._closed or self._ended:
                return
            self._items.append(block)
            self._buffered += len(block)
            self.frames_in += len(block)
        self._notify()

    def end(self, status: wire.RequestStatus, reason: str = "", kind: str = "") -> None:
        """The render is over (once; later calls are ignored)."""
        with self._cond:
            if self._ended:
                return
            self._ended = True
            self._items.append(RenderEnd(status, reason, kind))
            self._cond.notify_all()
        self._notify()

    def close(self) -> None:
        """The response is finished or its client left: release a waiting reader, drop the rest."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._buffered = 0
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        return self._ended

    def _notify(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            pass  # the loop is closed: the server is stopping and nobody waits any more

    # ------------------------------------------------------------------ consumer side (asyncio)
    async def next_item(self) -> np.ndarray | RenderEnd:
        """The next block, or the ``RenderEnd``; waits on the loop, never blocks it."""
        while True:
            with self._cond:
                if self._items:
                    item = self._items.popleft()
                    if isinstance(item, np.ndarray):
                        self._buffered -= len(item)
                        self._cond.notify_all()
                    return item
                self._wake.clear()
            await self._wake.wait()


class RenderReader:
    """The render ring's reader: ``Segment`` -> frames -> the request's ``RenderStream``."""

    def __init__(self, ring: PcmRing, bound_s: float) -> None:
        self.ring = ring
        self.bound_frames = int(bound_s * ring.sample_rate)
        self.streams: dict[str, RenderStream] = {}
        self._lock = threading.Lock()
        self.frames_read = 0
        self.frames_dropped = 0  # frames of renders nobody waits for (cancelled, client gone)

    def open(self, request_id: str, loop: asyncio.AbstractEventLoop) -> RenderStream:
        stream = RenderStream(request_id, loop, self.bound_frames)
        with self._lock:
            self.streams[request_id] = stream
        return stream

    def forget(self, request_id: str) -> None:
        """The response is done with ``request_id``: its later segments are read and dropped."""
        with self._lock:
            stream = self.streams.pop(request_id, None)
        if stream is not None:
            stream.close()

    def end(self, request_id: str, status: wire.RequestStatus, reason: str = "", kind: str = "") -> None:
        with self._lock:
            stream = self.streams.get(request_id)
        if stream is not None:
            stream.end(status, reason, kind)

    def active(self) -> int:
        """Renders whose responses are still open (synthesized or not: a slow client's counts)."""
        with self._lock:
            return len(self.streams)

    def handle(self, msg: wire.Message, stop: threading.Event | None = None) -> None:
        if isinstance(msg, wire.Segment):
            self.on_segment(msg, stop)
        elif isinstance(msg, wire.Cancel):
            self.on_cancel(msg)
        elif isinstance(msg, wire.Skip):
            # Renders all run at one priority, so the render worker never preempts: a Skip would
            # name frames this reader has already handed out. Nothing to undo; say so if it happens.
            log.warning("render ring: ignoring a skip of frames [%d, %d): %s", msg.start, msg.end, msg.reason)

    def on_cancel(self, msg: wire.Cancel) -> None:
        with self._lock:
            targets = list(self.streams.values()) if msg.all else [self.streams.get(msg.request_id)]
        for stream in targets:
            if stream is not None:
                stream.end("cancelled", "cancelled")

    def on_segment(self, seg: wire.Segment, stop: threading.Event | None = None) -> None:
        """Copy the segment's frames out of the ring, hand them on, then release them."""
        ring = self.ring
        with self._lock:
            stream = self.streams.get(seg.request_id)
        if seg.end > seg.start:
            start = max(seg.start, ring.read_index)
            if seg.start > ring.read_index:
                # Frames pushed but never announced (a render worker died between push and
                # message): nobody will ask for them.
                ring.commit_read(seg.start)
            n = seg.end - start
            if n > 0:
                block = np.empty(n, dtype=np.float32)
                got = ring.read_into(block, n, start_index=start)
                if stream is not None and not stream.ended:
                    stream.put(block[:got], stop)
                    self.frames_read += got
                else:
                    self.frames_dropped += got
                ring.commit_read(start + got)
        if seg.last and stream is not None:
            stream.end("done")

"""A real ZeroMQ peer in the test's process standing where ``skald serve`` would: a ROUTER for
requests and an XPUB for events on the run dir's ipc sockets, speaking the wire protocol, driven by
the test (what to answer, what to publish). For client-side tests of ``SkaldClient`` and the CLI
commands that talk to a server, without starting one."""

from __future__ import annotations

import threading
from pathlib import Path

import zmq

from actors import wire

__all__ = ["WirePeer"]


class WirePeer:
    """The server end of both sockets, driven by the test: ``first_event`` is what the XPUB
    publishes when a subscription arrives (None: nothing, a server that never answers them)."""

    def __init__(self, run_dir: Path, first_event: list[bytes] | None) -> None:
        self.ctx = zmq.Context()
        self.run_dir = str(run_dir)
        self.endpoints = wire.endpoints(self.run_dir)
        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(self.endpoints.control)
        self.events = self.ctx.socket(zmq.XPUB)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.bind(self.endpoints.events)
        self.first_event = first_event
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._answerer: threading.Thread | None = None
        self._thread = threading.Thread(target=self._answer_subscriptions, daemon=True)
        self._thread.start()

    def _answer_subscriptions(self) -> None:
        # The XPUB is used by this thread only until ``subscribed`` is set; the test publishes after.
        while not self._stop.is_set():
            if self.events.poll(50) and self.events.recv()[:1] == b"\x01":
                if self.first_event is not None:
                    self.events.send_multipart(self.first_event)
                self.subscribed.set()
                return

    def reply(self, msg: wire.Message) -> wire.Message:
        """Answer the next request with ``msg``; returns the request."""
        assert self.control.poll(30_000), "no request came"
        identity, *frames = self.control.recv_multipart()
        self.control.send_multipart([identity, *wire.encode(msg)])
        return wire.decode(frames)

    def publish(self, *frames: list[bytes]) -> None:
        assert self.subscribed.wait(30)
        for f in frames:
            self.events.send_multipart(f)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._answerer is not None:
            self._answerer.join(30)
        self.control.close(0)
        self.events.close(0)
        self.ctx.term()

    def answer_in_background(self, *replies: wire.Message) -> list[wire.Message]:
        """Answer the next ``len(replies)`` requests with ``replies``, on a thread; the list returned
        fills with the requests as they come."""
        received: list[wire.Message] = []

        def serve() -> None:
            for msg in replies:
                received.append(self.reply(msg))

        self._answerer = threading.Thread(target=serve, daemon=True)
        self._answerer.start()
        return received

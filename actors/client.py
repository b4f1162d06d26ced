"""A ZeroMQ client for orchestrators: send requests, read events.

    with SkaldClient.for_run_dir("/run/user/1000/skald-1000") as client:
        rid = client.speak("The door creaks open.")
        for event in client.events(timeout_s=30):
            if isinstance(event, wire.RequestFinished) and event.request_id == rid:
                break

Requests go over a DEALER socket to the supervisor's control ROUTER; each request gets one
direct reply (``Accepted``, ``Status`` or ``Error``). Events are published on an XPUB socket;
``events()`` yields them typed. The wire is plain msgpack (see ``docs/protocol.md``), so
clients in other languages need no skald code.

A client made with an events endpoint returns from its constructor only once its subscription
is live: the server answers every new subscription with a published ``subscribed`` event, and
receiving any event proves the subscription reached the publisher. So the events of the first
request are never lost to ZeroMQ's "slow joiner", and nobody sleeps hoping for it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import zmq

from actors import wire

if TYPE_CHECKING:
    from actors.security import ClientKeys


class SkaldClientError(RuntimeError):
    """The server did not answer, or answered with an error event."""

    def __init__(self, message: str, error: wire.Error | None = None) -> None:
        super().__init__(message)
        self.error = error


class SkaldClient:
    """Synchronous client; not thread-safe (one per thread)."""

    def __init__(
        self,
        control_endpoint: str,
        events_endpoint: str | None = None,
        timeout_s: float = 5.0,
        curve: ClientKeys | None = None,
    ) -> None:
        """``curve``: this client's CurveZMQ keys and the server's public key, for a ``tcp://``
        server (``actors.security``); a server that does not know them answers nothing."""
        self._ctx = zmq.Context()
        self.timeout_s = timeout_s
        self.control_endpoint = control_endpoint
        self._control = self._ctx.socket(zmq.DEALER)
        self._control.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self._control)
        self._control.connect(control_endpoint)
        self.events_endpoint = events_endpoint or ""
        self._events: zmq.Socket[Any] | None = None
        self._early: list[wire.Message] = []
        if events_endpoint:
            self._events = self._ctx.socket(zmq.SUB)
            self._events.setsockopt(zmq.LINGER, 0)
            if curve is not None:
                curve.apply(self._events)
            self._events.setsockopt(zmq.SUBSCRIBE, b"")
            self._events.connect(events_endpoint)
            try:
                self._await_subscription(events_endpoint)
            except SkaldClientError:
                self.close()
                raise

    def _await_subscription(self, events_endpoint: str) -> None:
        """Block until an event arrives (the server's ``subscribed`` answer to ours, or any other):
        from then on every event published reaches this client."""
        assert self._events is not None
        if not self._events.poll(int(self.timeout_s * 1000)):
            raise SkaldClientError(
                f"no events from {events_endpoint} within {self.timeout_s:g} s "
                "(is `skald serve` running, and new enough to answer subscriptions?)"
            )
        frames = self._events.recv_multipart()
        with contextlib.suppress(wire.WireError):
            event = wire.decode(frames)
            if not isinstance(event, wire.Subscribed):
                self._early.append(event)  # a real event that beat the handshake: keep it

    @classmethod
    def for_run_dir(cls, run_dir: str, timeout_s: float = 5.0) -> SkaldClient:
        server = wire.endpoints(run_dir)
        return cls(server.control, server.events, timeout_s)

    # ------------------------------------------------------------------ requests
    def request(self, msg: wire.Message) -> wire.Message:
        """Send one request and return its direct reply; ``SkaldClientError`` on error/timeout."""
        self._control.send_multipart(wire.encode(msg))
        return self._reply()

    def send_raw(self, frames: list[bytes]) -> wire.Message:
        """Send arbitrary frames (tests of malformed input) and return the reply."""
        self._control.send_multipart(frames)
        return self._reply(raise_on_error=False)

    def _reply(self, raise_on_error: bool = True) -> wire.Message:
        if not self._control.poll(int(self.timeout_s * 1000)):
            raise SkaldClientError(
                f"no answer from {self.control_endpoint} within {self.timeout_s:g} s (is `skald serve` running?)"
            )
        reply = wire.decode(self._control.recv_multipart())
        if raise_on_error and isinstance(reply, wire.Error):
            raise SkaldClientError(f"[{reply.kind}] {reply.message}", reply)
        return reply

    def speak(
        self,
        text: str,
        *,
        voice: str = "",
        priority: int = 0,
        request_id: str = "",
        streaming: bool = False,
        prelude: str = "",
        barge_in: wire.BargeIn = "queue",
        output: wire.Output = "stage",
        speed: float = 1.0,
    ) -> str:
        """Queue text to be spoken; returns the request id at once (does not wait for audio).

        ``barge_in="interrupt"`` cancels everything playing or queued first (with a fade);
        ``"queue"`` plays after it. A higher ``priority`` is synthesized before queued work.
        ``output="render"`` is the HTTP gateway's (its audio goes to the gateway's ring, not the
        stage); ``speed`` is the speaking rate, 0.25-4.0.
        """
        reply = self.request(
            wire.Speak(
                request_id=request_id,
                text=text,
                voice=voice,
                priority=priority,
                streaming=streaming,
                prelude=prelude,
                barge_in=barge_in,
                output=output,
                speed=speed,
            )
        )
        assert isinstance(reply, wire.Accepted)
        return reply.request_id

    def turn(
        self,
        player_action: str,
        context: str = "",
        *,
        voice: str = "",
        priority: int = 0,
        request_id: str = "",
        barge_in: wire.BargeIn = "interrupt",
    ) -> str:
        """Start a game turn (prelude model speaks at once, narrative model continues it);
        returns the request id at once. A turn interrupts by default: the player acted."""
        reply = self.request(
            wire.Turn(
                request_id=request_id,
                context=context,
                player_action=player_action,
                voice=voice,
                priority=priority,
                barge_in=barge_in,
            )
        )
        assert isinstance(reply, wire.Accepted)
        return reply.request_id

    def append(self, request_id: str, text: str) -> None:
        self.request(wire.Append(request_id=request_id, text=text))

    def end(self, request_id: str) -> None:
        self.request(wire.End(request_id=request_id))

    def cancel(self, request_id: str = "", *, all: bool = False) -> None:
        self.request(wire.Cancel(request_id=request_id, all=all))

    def status(self) -> dict[str, Any]:
        reply = self.request(wire.StatusQuery())
        assert isinstance(reply, wire.Status)
        return {
            "actors": reply.actors,
            "requests": reply.requests,
            "ring": reply.ring,
            "uptime_s": reply.uptime_s,
            "gpu": reply.gpu,
            "recent": reply.recent,
        }

    def metrics_text(self) -> str:
        """The server's Prometheus metrics in the text exposition format (what ``/metrics`` serves)."""
        reply = self.request(wire.MetricsQuery())
        assert isinstance(reply, wire.MetricsText)
        return reply.text

    # ------------------------------------------------------------------ events
    def events(self, timeout_s: float | None = None) -> Iterator[wire.Message]:
        """Yield published events until ``timeout_s`` passes with none (forever if None).
        ``subscribed`` events (subscription handshakes, this client's or another's) are skipped."""
        if self._events is None:
            raise SkaldClientError("this client was made without an events endpoint")
        while self._early:
            yield self._early.pop(0)
        while True:
            if not self._events.poll(None if timeout_s is None else int(timeout_s * 1000)):
                return
            try:
                event = wire.decode(self._events.recv_multipart())
            except wire.WireError:
                continue
            if not isinstance(event, wire.Subscribed):
                yield event

    def wait_for(self, request_id: str, timeout_s: float = 60.0) -> tuple[wire.RequestFinished, list[wire.Message]]:
        """Collect events until the request's ``RequestFinished``; raise on timeout."""
        seen: list[wire.Message] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events(timeout_s=max(0.01, deadline - time.monotonic())):
                seen.append(event)
                if isinstance(event, wire.RequestFinished) and event.request_id == request_id:
                    return event, seen
                if time.monotonic() >= deadline:
                    break
        raise SkaldClientError(f"request {request_id} did not finish within {timeout_s:g} s")

    def close(self) -> None:
        self._control.close(linger=0)
        if self._events is not None:
            self._events.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> SkaldClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

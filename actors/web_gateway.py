"""The web actor: skald's HTTP gateway (``skald serve --http HOST:PORT``), one supervised process.

::

    HTTP clients ──► uvicorn + FastAPI (actors.web.api) ──Speak/Cancel──► control.sock (a client)
                          ▲  StreamingResponse                            events.sock (SUB) ──┐
                          │  encode (actors.web.encode)                                       │
                     RenderStream ◄── RenderReader ◄── render ring (shm) ◄── tts_render       │
                          ▲                 ▲ Segment (actors.sock, from the supervisor)      │
                          └──── RequestFinished / Error of a render ◄─────────────────────────┘

    browsers ◄── WebRTC/Opus (aiortc) ◄── Listeners ◄── StageFeed ◄── stage tee (shm) ◄── audio consumer
             ──► POST /whep, the player page at / (actors.web.listen, actors.web.webrtc)

It is an actor like the others (spawned by the supervisor, READY with deadline, restarted when it
dies, parent-death exit, errors as data) and, towards the rest of skald, a control client like any
orchestrator: it sends ``Speak``/``Cancel`` over the control socket and follows the events
socket. Its own actor socket brings it the render worker's ``Segment`` messages; PCM comes only
through the render ring, never over ZeroMQ.

Threads: the main thread runs the asyncio loop and uvicorn; ``web-messages`` handles the actor
inbox (the ring reader, which may wait on a slow client: see ``actors.web.renders``);
``web-events`` reads the events socket and hands events to the loop; ``web-stage-feed`` reads the
stage tee and hands 20 ms frames to the WebRTC listeners on the loop; the control socket is used
from the loop's executor threads under a lock. The HTTP socket is bound in ``from_spec``, before
READY, so "ready" means "accepting connections" and a busy port fails start-up with its name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import uvicorn

from actors import wire
from actors.client import SkaldClient, SkaldClientError
from actors.runtime import ActorSpec, Send, process_rss_mb, run_actor, set_process_nice
from actors.web.api import ApiError, build_app
from actors.web.listen import add_listen_routes
from actors.web.renders import RenderReader
from actors.web.webrtc import Listeners, StageFeed, is_loopback_bind
from config.settings import Settings
from shm import PcmRing

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger("skald.web")
#: Idle HTTP connections are kept this long (nginx's default, 75 s).
KEEP_ALIVE_S = 75

#: ``status`` answers are reused this long (health checks and name lookups on every request).
STATUS_TTL_S = 0.25
#: An SSE client of ``/v1/events`` that falls this many events behind is dropped.
EVENTS_BACKLOG = 1000


def bind_http(address: str) -> socket.socket:
    """A listening TCP socket on ``HOST:PORT`` (port 0: any free port)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"web.http {address}: cannot listen: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class WebGateway:
    """The web actor's state, an ``actors.runtime.Actor``."""

    def __init__(
        self,
        settings: Settings,
        ring: PcmRing,
        send: Send,
        sock: socket.socket,
        endpoints: wire.Endpoints,
        tee: PcmRing | None = None,
    ) -> None:
        self.settings = settings
        self.tee = tee  # the stage tee's consumer handle (WebRTC listeners), None in-process without one
        self.listeners: Listeners | None = None
        self.reader = RenderReader(ring, settings.web.render_buffer_s)
        self._send = send
        self._sock = sock
        self._control = SkaldClient(endpoints.control, timeout_s=5.0)
        self._control_lock = threading.Lock()
        self._events = SkaldClient(endpoints.control, endpoints.events, timeout_s=10.0)
        self._status: dict[str, Any] = {}
        self._status_at = 0.0
        self._status_lock = threading.Lock()
        self._subscribers: set[asyncio.Queue[wire.Message | None]] = set()
        self._last_error: dict[str, wire.Error] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.renders_done = 0
        self.renders_started = 0
        self.owned: list[Any] = [ring] if tee is None else [ring, tee]
        # Render encoding (opus, mp3 ...) yields to the stage: its threads run at a lower priority,
        # while the loop that sends the listeners' audio keeps the process's own.
        self._render_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="web-render", initializer=_lower_thread_priority
        )
        # Calls to the supervisor wait on its answers (and on each other, under the control lock).
        # They have their own threads, not the loop's default executor, which aiortc and asyncio
        # use too: a pile of waiting status polls there would hold up whatever else queues on it.
        self._control_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="web-control")

    @property
    def address(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # ------------------------------------------------------------------ Actor
    @classmethod
    def from_spec(cls, spec: ActorSpec, send: Send) -> Self:
        settings = spec.config
        ring = PcmRing.attach(spec.ring_name, "consumer")
        ring.start_heartbeat()
        ring.clear()  # frames of renders that died with a previous web actor: nobody waits for them
        sock: socket.socket | None = None
        tee: PcmRing | None = None
        try:
            if spec.tee_name:
                tee = PcmRing.attach(spec.tee_name, "consumer")
                tee.start_heartbeat()
            sock = bind_http(settings.web.http)
            ends = wire.endpoints(spec.run_dir)  # the local ipc sockets, whatever tcp endpoint is configured
            return cls(settings, ring, send, sock, ends, tee)
        except Exception:
            if sock is not None:
                sock.close()
            ring.close()
            if tee is not None:
                tee.close()
            raise

    def ready_info(self) -> dict[str, Any]:
        return {
            "http": self.address,
            "url": f"http://{self.address}",
            "auth": bool(self.settings.web.api_key),
            "max_renders": self.settings.web.max_renders,
            "webrtc": self.tee is not None,
            "max_listeners": self.settings.web.max_listeners,
        }

    def on_eager(self, msg: wire.Message) -> None:
        if isinstance(msg, wire.Cancel):
            self.reader.on_cancel(msg)  # a reader waiting on this render's client lets go at once

    def metrics(self) -> dict[str, Any]:
        return {
            "renders_active": self.reader.active(),
            "renders_started": self.renders_started,
            "renders_done": self.renders_done,
            "render_frames": self.reader.frames_read,
            "event_subscribers": len(self._subscribers),
            "rss_mb": process_rss_mb(),
            **(self.listeners.metrics() if self.listeners is not None else {}),
        }

    def run(self, stop: threading.Event, inbox: queue.Queue[wire.Message]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = build_app(self)
        listeners = self.listeners = Listeners(self.settings, loop, is_loopback_bind(self.address))
        add_listen_routes(app, listeners, self)
        feed = StageFeed(self.tee, listeners.push_threadsafe) if self.tee is not None else None
        if feed is not None:
            listeners.feed = feed
            feed.start()
        # Keep-alive longer than clients keep idle connections (aiohttp 15 s, browsers 60 s and
        # more): with uvicorn's 5 s the server closed a connection just as a client reused it for
        # its next request, 5 s after the last (bench webrtc: ServerDisconnectedError).
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        server = _QuietServer(config)
        threads = [
            threading.Thread(target=self._messages, args=(stop, inbox), name="web-messages", daemon=True),
            threading.Thread(target=self._follow_events, args=(stop,), name="web-events", daemon=True),
            threading.Thread(target=self._exit_on_stop, args=(stop, server), name="web-stop", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            loop.run_until_complete(server.serve(sockets=[self._sock]))
        finally:
            stop.set()
            if feed is not None:
                feed.stop()
            loop.run_until_complete(listeners.close())
            for stream_id in list(self.reader.streams):
                self.reader.end(stream_id, "failed", "the web actor is stopping", "internal")
            loop.run_until_complete(loop.shutdown_default_executor())
            self._render_pool.shutdown(wait=True, cancel_futures=True)
            self._control_pool.shutdown(wait=False, cancel_futures=True)
            loop.close()
            for thread in threads:
                thread.join(2.0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._sock.close()
        for client in (self._control, self._events):
            with contextlib.suppress(Exception):
                client.close()
        for resource in self.owned:
            resource.close()
        self.owned.clear()

    # ------------------------------------------------------------------ threads
    @staticmethod
    def _exit_on_stop(stop: threading.Event, server: Any) -> None:
        stop.wait()
        server.should_exit = True  # uvicorn's main loop checks it every tick

    def _messages(self, stop: threading.Event, inbox: queue.Queue[wire.Message]) -> None:
        """The actor inbox: segments of the render ring; a Shutdown stops everything."""
        while not stop.is_set():
            try:
                msg = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(msg, wire.Shutdown):
                stop.set()
                return
            try:
                self.reader.handle(msg, stop)
            except Exception:  # one bad segment must not end every render
                log.exception("web: handling %s failed", msg.KIND.decode())

    def _follow_events(self, stop: threading.Event) -> None:
        """Events: the end (or failure) of a render reaches its stream; every event reaches SSE."""
        while not stop.is_set():
            for event in self._events.events(timeout_s=0.2):
                self._on_event(event)
                if stop.is_set():
                    return

    def _on_event(self, event: wire.Message) -> None:
        request_id = getattr(event, "request_id", "")
        if isinstance(event, wire.Error) and request_id.startswith("web-"):
            self._last_error[request_id] = event
        elif isinstance(event, wire.RequestFinished) and request_id in self.reader.streams:
            err = self._last_error.pop(request_id, None)
            reason = event.reason or (err.message if err is not None else "")
            self.reader.end(request_id, event.status, reason, err.kind if err is not None else "")
        if isinstance(event, wire.RequestFinished):
            self._last_error.pop(request_id, None)
        loop = self._loop
        if loop is not None and self._subscribers:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fan_out, event)

    def _fan_out(self, event: wire.Message) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(subscriber)
                while not subscriber.empty():
                    subscriber.get_nowait()
                subscriber.put_nowait(None)

    # ------------------------------------------------------------------ Gateway (for the routes)
    def _request(self, msg: wire.Message) -> wire.Message:
        with self._control_lock:
            return self._control.send_raw(wire.encode(msg))

    async def control(self, msg: wire.Message) -> wire.Message:
        try:
            reply = await asyncio.get_running_loop().run_in_executor(self._control_pool, self._request, msg)
        except SkaldClientError as exc:
            raise ApiError(503, f"skald's supervisor did not answer: {exc}", code="supervisor_unavailable") from None
        if isinstance(msg, wire.Speak) and msg.output == "render" and isinstance(reply, wire.Accepted):
            self.renders_started += 1
        return reply

    def _fetch_status(self) -> dict[str, Any]:
        with self._status_lock:
            if time.monotonic() - self._status_at > STATUS_TTL_S:
                reply = self._request(wire.StatusQuery())
                if isinstance(reply, wire.Status):
                    self._status = dict(reply.actors)
                    self._status_at = time.monotonic()
            return self._status

    async def actors_status(self) -> dict[str, Any]:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._control_pool, self._fetch_status)
        except SkaldClientError as exc:
            raise ApiError(503, f"skald's supervisor did not answer: {exc}", code="supervisor_unavailable") from None

    async def offload(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)`` on a render thread (lower priority than the listeners' audio)."""
        return await asyncio.get_running_loop().run_in_executor(self._render_pool, fn, *args)

    def cancel_soon(self, request_id: str) -> None:
        def cancel() -> None:
            with contextlib.suppress(SkaldClientError):
                self._request(wire.Cancel(request_id=request_id))

        threading.Thread(target=cancel, name="web-cancel", daemon=True).start()

    def report_finished(self, request_id: str, audio_s: float, ttfb_ms: float) -> None:
        self.renders_done += 1
        self._send(wire.RequestFinished(request_id=request_id, status="done", audio_s=audio_s, ttfa_ms=ttfb_ms))

    def subscribe(self) -> asyncio.Queue[wire.Message | None]:
        subscriber: asyncio.Queue[wire.Message | None] = asyncio.Queue(maxsize=EVENTS_BACKLOG)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: asyncio.Queue[wire.Message | None]) -> None:
        self._subscribers.discard(subscriber)


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the actor's handlers set the stop flag, and
    ``_exit_on_stop`` turns that into ``should_exit``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


_T = TypeVar("_T")

#: The gateway encodes renders (opus, mp3 ...) on its render threads: that work, too, yields to
#: the stage. Only those threads: the loop and the stage feed (which encodes the listeners' Opus)
#: send the WebRTC listeners' audio, which is the stage for them, and a niced process starves it
#: into concealment on a busy machine.
WEB_NICENESS = 5


def _lower_thread_priority() -> None:
    """Raise the calling thread's nice value (Linux: a thread id is a PRIO_PROCESS target)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WEB_NICENESS)
    except OSError as exc:  # a container may forbid it
        log.warning("web: cannot lower the render threads' priority (%s)", exc)


#: With WebRTC listeners the web actor carries the stage's clock to the browsers: where permitted it
#: runs above ordinary work and above the stage's TTS worker (-5), still below the audio consumer's
#: -10, so inference does not delay its frames into the browsers' concealment. (Level with the
#: worker at -5, Chromium concealed a late packet in 4 of 4 CI tries.)
LISTENER_NICE = -8


def raise_listener_priority() -> None:
    set_process_nice(LISTENER_NICE)  # an unprivileged user keeps nice 0


def run_web_process(spec: ActorSpec) -> None:
    """Entry point of the web actor process."""
    if spec.tee_name:
        raise_listener_priority()
    run_actor(spec, WebGateway)

"""The web actor's error paths in-process (``actors/web_gateway.py``): a real ``WebGateway`` on a
real render ring, a real listening socket and a real ZeroMQ peer standing where the supervisor
would (``tests/support/wire_peer.py``). An HTTP address already taken, a supervisor that does not
answer (a 503 for the route, not a hang), the error event that ends a render, an SSE subscriber
that falls too far behind, and a bad message on the actor inbox."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import wire
from actors.client import SkaldClient
from actors.web.api import ApiError
from actors.web.renders import RenderEnd
from actors.web_gateway import EVENTS_BACKLOG, WebGateway, bind_http
from config.settings import load_settings
from shm import PcmRing
from tests.support.wire_peer import WirePeer


@pytest.fixture(autouse=True)
def _no_skald_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("SKALD_") and k != "SKALD_TESTRUN_ID"]:
        monkeypatch.delenv(name)


class Gateway:
    """A gateway, its peer (the supervisor's sockets) and what it sent to the supervisor."""

    def __init__(self, tmp_path: Path) -> None:
        self.peer = WirePeer(tmp_path, wire.encode(wire.Subscribed()))
        settings = load_settings(None, env={}, overrides={"web.http": "127.0.0.1:0"})
        self.ring = PcmRing.create(f"skald-{os.getpid()}-web", 1 << 16, 22050, 2.0, role="consumer")
        self.sent: list[wire.Message] = []
        self.gateway = WebGateway(
            settings, self.ring, self.sent.append, bind_http("127.0.0.1:0"), wire.endpoints(str(tmp_path))
        )

    def close(self) -> None:
        self.gateway.close()  # closes the ring handle it owns
        self.gateway._render_pool.shutdown()
        self.gateway._control_pool.shutdown()
        self.ring.unlink()
        self.peer.close()


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    g = Gateway(tmp_path)
    yield g
    g.close()


def test_an_http_address_in_use_is_refused_naming_it() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        refused = rf"web\.http 127\.0\.0\.1:{port}: cannot listen: Address already in use"
        with pytest.raises(RuntimeError, match=refused):
            bind_http(f"127.0.0.1:{port}")
    finally:
        taken.close()


def test_a_supervisor_that_does_not_answer_is_a_503_not_a_hang(gw: Gateway, tmp_path: Path) -> None:
    silent = tmp_path / "silent"
    silent.mkdir()
    gw.gateway._control.close()
    # The gateway's own client, aimed at a run dir where nobody answers, with a short wait.
    gw.gateway._control = SkaldClient(wire.endpoints(str(silent)).control, timeout_s=0.3)

    async def ask() -> tuple[ApiError, ApiError]:
        with pytest.raises(ApiError) as control:
            await gw.gateway.control(wire.StatusQuery())
        with pytest.raises(ApiError) as status:
            await gw.gateway.actors_status()
        return control.value, status.value

    for err in asyncio.run(ask()):
        assert err.status == 503 and err.code == "supervisor_unavailable"
        assert err.message.startswith("skald's supervisor did not answer: ")


def test_the_error_that_ended_a_render_reaches_its_stream(gw: Gateway) -> None:
    loop = asyncio.new_event_loop()
    try:
        stream = gw.gateway.reader.open("web-1", loop)
        gw.gateway._on_event(wire.Error(kind="synthesis_failed", message="engine fell over", request_id="web-1"))
        gw.gateway._on_event(wire.RequestFinished(request_id="web-1", status="failed"))
        end = loop.run_until_complete(stream.next_item())
        assert end == RenderEnd("failed", "engine fell over", "synthesis_failed")
        assert gw.gateway._last_error == {}
    finally:
        loop.close()


def test_an_event_subscriber_that_falls_behind_is_dropped_with_an_end_marker(gw: Gateway) -> None:
    slow = gw.gateway.subscribe()
    keeping_up = gw.gateway.subscribe()
    for i in range(EVENTS_BACKLOG):
        slow.put_nowait(wire.PlaybackStarted(request_id=f"r{i}", ttfa_ms=1.0))
    event = wire.Subscribed(subscribers=2)
    gw.gateway._fan_out(event)
    assert slow not in gw.gateway._subscribers and slow.qsize() == 1 and slow.get_nowait() is None
    assert keeping_up.get_nowait() == event and gw.gateway.metrics()["event_subscribers"] == 1


def test_a_message_the_reader_cannot_handle_is_logged_and_the_inbox_goes_on(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.new_event_loop()
    try:
        stream = gw.gateway.reader.open("web-1", loop)
        inbox: queue.Queue[wire.Message] = queue.Queue()
        # A segment past what the ring holds: reading it fails; the next message is still handled.
        inbox.put(wire.Segment(request_id="web-1", index=0, start=1 << 30, end=(1 << 30) + 10))
        inbox.put(wire.Cancel(request_id="web-1"))
        inbox.put(wire.Shutdown())
        stop = threading.Event()
        with caplog.at_level(logging.ERROR, logger="skald.web"):
            gw.gateway._messages(stop, inbox)
        assert stop.is_set()  # the Shutdown stopped the actor
        assert "web: handling segment failed" in caplog.text
        assert stream.ended
    finally:
        loop.close()


def test_status_is_asked_once_per_ttl_and_renders_are_counted(gw: Gateway) -> None:
    received = gw.peer.answer_in_background(
        wire.Status(actors={"tts_render": {"state": "running"}}),
        wire.Accepted(request_id="web-1", t_accepted=0.0),
    )

    async def ask() -> tuple[dict[str, object], dict[str, object], wire.Message]:
        first = await gw.gateway.actors_status()
        again = await gw.gateway.actors_status()  # within STATUS_TTL_S: the answer is reused
        reply = await gw.gateway.control(wire.Speak(request_id="web-1", text="Hi.", output="render"))
        return first, again, reply

    first, again, reply = asyncio.run(ask())
    assert first == again == {"tts_render": {"state": "running"}}
    assert isinstance(reply, wire.Accepted) and gw.gateway.renders_started == 1
    assert [type(m) for m in received] == [wire.StatusQuery, wire.Speak]  # one status request, not two


def test_a_render_cancelled_by_its_client_is_cancelled_at_the_supervisor(gw: Gateway) -> None:
    received = gw.peer.answer_in_background(wire.Accepted(request_id="web-1", t_accepted=0.0))
    gw.gateway.cancel_soon("web-1")  # the HTTP client went away mid-render
    assert gw.peer._answerer is not None
    gw.peer._answerer.join(30)
    assert received == [wire.Cancel(request_id="web-1")]
    for thread in [t for t in threading.enumerate() if t.name == "web-cancel"]:
        thread.join(30)  # it has its reply: the gateway may close under it only after
    gw.gateway.report_finished("web-2", audio_s=1.5, ttfb_ms=120.0)
    assert gw.sent == [wire.RequestFinished(request_id="web-2", status="done", audio_s=1.5, ttfa_ms=120.0)]
    assert gw.gateway.metrics()["renders_done"] == 1


def test_a_web_actor_that_cannot_listen_lets_go_of_its_ring(tmp_path: Path) -> None:
    from actors.runtime import ActorSpec

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    name = f"skald-{os.getpid()}-web-spec"
    ring = PcmRing.create(name, 1 << 16, 22050, 2.0)
    settings = load_settings(None, env={}, overrides={"web.http": f"127.0.0.1:{port}"})
    spec = ActorSpec(wire.Role.WEB, "", settings.to_dict(), str(tmp_path), os.getppid(), name)
    try:
        with pytest.raises(RuntimeError, match=f"web.http 127.0.0.1:{port}: cannot listen"):
            WebGateway.from_spec(spec, lambda _m: None)
        again = PcmRing.attach(name, "consumer")  # refused if the failed actor still held the role
        again.close()
    finally:
        taken.close()
        ring.close()
        ring.unlink()


def test_ready_info_names_the_address_and_an_eager_cancel_ends_the_render(gw: Gateway) -> None:
    info = gw.gateway.ready_info()
    assert info["url"] == f"http://{info['http']}" and info["http"].startswith("127.0.0.1:")
    assert info["auth"] is False and info["webrtc"] is False
    loop = asyncio.new_event_loop()
    try:
        stream = gw.gateway.reader.open("web-1", loop)
        gw.gateway.on_eager(wire.Cancel(request_id="web-1"))  # the IO thread, at once
        assert stream.ended
    finally:
        loop.close()

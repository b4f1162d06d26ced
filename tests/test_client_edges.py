"""``SkaldClient`` (``actors.client``) against a real ZeroMQ peer in this process (a ROUTER for
requests and an XPUB for events, on ipc sockets, speaking the wire protocol): nobody answering,
an event that beats the subscription handshake, undecodable events, a request that never finishes,
an error reply, a client made without events."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import wire
from actors.client import SkaldClient, SkaldClientError
from tests.support.wire_peer import WirePeer


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[WirePeer]:
    p = WirePeer(tmp_path, wire.encode(wire.Subscribed()))
    yield p
    p.close()


def _finished(rid: str) -> list[bytes]:
    return wire.encode(wire.RequestFinished(request_id=rid, status="done"))


def test_no_events_in_time_is_a_clear_error_and_the_client_closes(tmp_path: Path) -> None:
    silent = WirePeer(tmp_path, first_event=None)
    try:
        with pytest.raises(SkaldClientError, match=r"no events from ipc://.*events\.sock within 0\.2 s .*skald serve"):
            SkaldClient(silent.endpoints.control, silent.endpoints.events, timeout_s=0.2)
    finally:
        silent.close()  # ctx.term() returns: the failed client closed its sockets


def test_no_answer_names_the_endpoint(tmp_path: Path) -> None:
    endpoints = wire.endpoints(str(tmp_path))  # nobody listens there
    with (
        SkaldClient(endpoints.control, timeout_s=0.2) as client,
        pytest.raises(SkaldClientError, match=r"no answer from ipc://.*control\.sock within 0\.2 s"),
    ):
        client.status()


def test_events_need_an_events_endpoint(tmp_path: Path) -> None:
    with (
        SkaldClient(wire.endpoints(str(tmp_path)).control) as client,
        pytest.raises(SkaldClientError, match="without an events endpoint"),
    ):
        next(client.events(timeout_s=0))


def test_an_event_that_beats_the_handshake_is_kept(tmp_path: Path) -> None:
    early = WirePeer(tmp_path, _finished("early"))
    try:
        with SkaldClient(early.endpoints.control, early.endpoints.events, timeout_s=10) as client:
            assert early.subscribed.wait(30)
            finished, seen = client.wait_for("early", timeout_s=10)
            assert finished.request_id == "early" and seen == [finished]
    finally:
        early.close()


def test_undecodable_and_subscribed_events_are_skipped(peer: WirePeer) -> None:
    with SkaldClient.for_run_dir(peer.run_dir, 10) as client:
        peer.publish([b"garbage"], [b"speak", b"\xc1"], wire.encode(wire.Subscribed()), _finished("r1"))
        assert list(client.events(timeout_s=0.5)) == [wire.RequestFinished(request_id="r1", status="done")]


def test_a_request_that_never_finishes_times_out_with_what_was_seen(peer: WirePeer) -> None:
    with SkaldClient(peer.endpoints.control, peer.endpoints.events, timeout_s=10) as client:
        peer.publish(_finished("other"))
        with pytest.raises(SkaldClientError, match=r"request mine did not finish within 0\.3 s"):
            client.wait_for("mine", timeout_s=0.3)


def test_an_error_reply_raises_with_the_error_and_send_raw_returns_it(peer: WirePeer) -> None:
    error = wire.Error(kind="bad_request", message="text is empty", request_id="r")
    with SkaldClient(peer.endpoints.control, peer.endpoints.events, timeout_s=10) as client:
        result: dict[str, object] = {}

        def ask() -> None:
            try:
                client.speak("")
            except SkaldClientError as exc:
                result["exc"] = exc

        asker = threading.Thread(target=ask)
        asker.start()
        request = peer.reply(error)
        asker.join(30)
        assert isinstance(request, wire.Speak) and request.text == ""
        exc = result["exc"]
        assert isinstance(exc, SkaldClientError) and exc.error == error
        assert str(exc) == "[bad_request] text is empty"


def test_a_chatty_server_does_not_keep_wait_for_past_its_deadline(peer: WirePeer) -> None:
    # Events keep coming (none of them ours), so events() never times out by itself: the deadline
    # must still end the wait.
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            peer.publish(_finished("other"))
            stop.wait(0.01)

    with SkaldClient(peer.endpoints.control, peer.endpoints.events, timeout_s=10) as client:
        talker = threading.Thread(target=chatter)
        talker.start()
        try:
            with pytest.raises(SkaldClientError, match=r"request mine did not finish within 0\.5 s"):
                client.wait_for("mine", timeout_s=0.5)
        finally:
            stop.set()
            talker.join(30)

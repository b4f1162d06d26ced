"""The ``openai`` backend's remaining error and edge paths (``actors.text.llm_openai``), against
the real HTTP stub server of ``tests/test_llm.py`` (a real socket, real SSE): the SDK missing, a
server that never answers or stalls mid-stream, a stream that is not JSON, a bad ``Retry-After``,
a token cancelled before or after its turn, a closed generator."""

from __future__ import annotations

import logging
import sys
import threading

import pytest

from actors.text.llm_base import CancelToken, LlmError
from actors.text.llm_openai import OpenAIChatGenerator, _is_loopback
from tests.test_llm import MESSAGES, _Reader, _sse, _stall, _status, _StubHandler, _StubServer

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def test_without_the_sdk_the_error_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` raises ImportError
    with pytest.raises(LlmError, match=r"needs the openai SDK .*pip install openai httpx2") as err:
        OpenAIChatGenerator("http://127.0.0.1:1/v1", "m")
    assert err.value.kind == "model_unavailable"


def test_describe_names_the_server_default_model() -> None:
    with _StubServer(_sse("x")) as server:
        generator = OpenAIChatGenerator(server.url + "/", "")
        assert generator.describe() == {"backend": "openai", "endpoint": server.url, "model": "(server default)"}
        generator.close()


def test_a_token_cancelled_before_the_turn_sends_nothing() -> None:
    with _StubServer(_sse("x")) as server:
        generator = OpenAIChatGenerator(server.url, "m")
        cancel = CancelToken()
        cancel.cancel()
        assert list(generator.stream(MESSAGES, 8, cancel)) == []
        assert server.posts == []
        generator.close()


def test_cancelling_a_finished_turn_leaves_the_next_turn_alone() -> None:
    go_on = threading.Event()

    def piece_then_rest(handler: _StubHandler) -> None:
        _sse("Dust ", finish=False)(handler)
        go_on.wait(30)  # the rest only after the test cancelled the old token
        handler.event({"choices": [{"index": 0, "delta": {"content": "settles."}, "finish_reason": "stop"}]})

    with _StubServer(_sse("Dust ", "settles."), piece_then_rest) as server:
        generator = OpenAIChatGenerator(server.url, "m")
        first = CancelToken()
        assert list(generator.stream(MESSAGES, 8, first)) == ["Dust ", "settles."]
        pieces = []
        for text in generator.stream(MESSAGES, 8, CancelToken()):
            pieces.append(text)
            if len(pieces) == 1:
                first.cancel()  # late: the connection it would shut belongs to this turn now
                go_on.set()
        assert pieces == ["Dust ", "settles."]
        generator.close()


def test_a_cancel_between_pieces_ends_the_stream_without_an_error() -> None:
    with _StubServer(_sse("one ", "two ", "three ", "four.")) as server:
        generator = OpenAIChatGenerator(server.url, "m")
        cancel = CancelToken()
        pieces = []
        for text in generator.stream(MESSAGES, 8, cancel):
            pieces.append(text)
            cancel.cancel()
        assert pieces == ["one "]
        generator.close()


def test_a_closed_generator_opens_no_connection() -> None:
    with _StubServer(_sse("x")) as server:
        generator = OpenAIChatGenerator(server.url, "m")
        assert server.warmed.wait(30)  # the constructor's warm-up
        generator.close()
        server.warmed.clear()
        generator.prepare(MESSAGES, CancelToken())
        generator.warm_up()
        assert not server.warmed.is_set() and server.posts == []


def test_a_server_that_never_answers_is_a_timeout_naming_the_setting() -> None:
    with _StubServer(_stall) as server:
        generator = OpenAIChatGenerator(server.url, "m", timeout_s=0.5, max_retries=0, setting="actors.prelude")
        with pytest.raises(LlmError) as err:
            list(generator.stream(MESSAGES, 8, CancelToken()))
        assert err.value.kind == "generation_failed"
        assert "no answer for 0.5 s (actors.prelude.timeout_s)" in err.value.message
        assert server.client_gone.wait(30)  # the connection was given up, not left hanging
        generator.close()


def test_a_stream_that_stalls_after_a_piece_is_a_timeout_after_the_piece() -> None:
    with _StubServer(_sse("Dust ", finish=False, stall=True)) as server:
        generator = OpenAIChatGenerator(server.url, "m", timeout_s=0.5)
        pieces = []
        with pytest.raises(LlmError, match=r"no data for 0\.5 s \(actors\.narrative\.timeout_s\)"):
            for text in generator.stream(MESSAGES, 8, CancelToken()):
                pieces.append(text)
        assert pieces == ["Dust "]
        generator.close()


def _not_json(handler: _StubHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.end_headers()
    handler.event({"choices": [{"index": 0, "delta": {"content": "Dust "}}]})
    handler.event({"choices": [{"index": 1, "delta": {"content": "(another choice)"}}]})  # n > 1: ignored
    handler.event(b"{this is not json")


def test_a_stream_that_is_not_json_is_an_error_after_the_pieces() -> None:
    with _StubServer(_not_json) as server:
        generator = OpenAIChatGenerator(server.url, "m")
        pieces = []
        with pytest.raises(LlmError, match="not JSON in the stream") as err:
            for text in generator.stream(MESSAGES, 8, CancelToken()):
                pieces.append(text)
        assert pieces == ["Dust "] and err.value.kind == "generation_failed"
        generator.close()


@pytest.mark.parametrize("headers", [{"Retry_After": "soon"}, {"retry_after_ms": "-5", "Retry_After": "0"}])
def test_an_unusable_retry_after_falls_back_to_the_own_delay(headers: dict[str, str]) -> None:
    with _StubServer(_status(429, "slow down", **headers), _sse("Dust ", "settles.")) as server:
        generator = OpenAIChatGenerator(server.url, "m")
        assert list(generator.stream(MESSAGES, 8, CancelToken())) == ["Dust ", "settles."]
        assert len(server.posts) == 2
        generator.close()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("llm.example.org", False),
        (None, False),
    ],
)
def test_loopback_hosts_are_recognised(host: str | None, loopback: bool) -> None:
    assert _is_loopback(host) is loopback


class _RetryWaitSeen(logging.Handler):
    """Set once the generator logs that it waits before a retry (the line comes just before the wait)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "; retry 1 of" in record.getMessage():
            self.seen.set()


def test_a_cancel_during_the_wait_before_a_retry_ends_the_turn_quietly() -> None:
    handler = _RetryWaitSeen()
    llm_log = logging.getLogger("skald.llm")
    llm_log.addHandler(handler)
    previous = llm_log.level
    llm_log.setLevel(logging.INFO)
    try:
        with _StubServer(_status(503, "busy", Retry_After="100")) as server:
            generator = OpenAIChatGenerator(server.url, "m", timeout_s=120)
            cancel = CancelToken()
            reader = _Reader(generator.stream(MESSAGES, 8, cancel))
            reader.start()
            assert handler.seen.wait(30)  # the 503 arrived and the generator is waiting to retry
            cancel.cancel()
            reader.join(30)
            assert not reader.is_alive() and reader.error is None and reader.pieces == []
            assert len(server.posts) == 1
            generator.close()
    finally:
        llm_log.removeHandler(handler)
        llm_log.setLevel(previous)

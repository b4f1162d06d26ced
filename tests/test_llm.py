"""The language-model backends (``actors.text.llm``) against real servers and a real model.

The model is ``tests.tiny_lm``: a tiny randomly initialised Qwen2 built locally (nothing is
downloaded). Its text is gibberish, which is fine here: these tests check streaming, the
order of pieces, cancellation and error paths, never what the text says. The ``openai``
backend talks to a real ``transformers serve`` (OpenAI-compatible) on 127.0.0.1 serving that
model; the module starts it once and ends it by PID.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.text.llm import (
    CancelToken,
    LlmError,
    OpenAIChatGenerator,
    OpenerLimiter,
    RepeatGuard,
    TransformersGenerator,
    clean,
    narrative_messages,
    prelude_messages,
)
from tests import tiny_lm

# A stream that raises anything but LlmError on a reader thread is a bug: fail the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

MESSAGES = prelude_messages("You stand before an iron door.", "I push the door open.", 12)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_lm.build(tmp_path_factory.getbasetemp() / "tiny-lm")


@pytest.fixture(scope="module")
def lm_server(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``transformers serve`` pinned to the tiny model; yields its ``/v1`` base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("lm-server") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cli = Path(sys.executable).with_name("transformers")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(cli), "serve", str(tiny_lm_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"transformers serve exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"transformers serve not up after 90 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def local_generator(tiny_lm_dir: Path) -> TransformersGenerator:
    return TransformersGenerator(str(tiny_lm_dir), device="cpu", temperature=0.8)


def _consume(stream: Iterator[str], received: list[tuple[float, str]]) -> None:
    for text in stream:
        received.append((time.monotonic(), text))


def _cancel_mid_stream(
    stream: Iterator[str], cancel: CancelToken, after: int = 3
) -> tuple[float, list[float], float]:
    """Read ``stream`` on a thread, cancel after ``after`` pieces; (seconds the stream took to
    return after the cancel, arrival times of pieces received after it, the median interval
    between pieces before it: the yardstick a prompt stop is judged against, same run)."""
    received: list[tuple[float, str]] = []
    reader = threading.Thread(target=_consume, args=(stream, received))
    reader.start()
    deadline = time.monotonic() + 30
    while len(received) < after and reader.is_alive() and time.monotonic() < deadline:
        time.sleep(0.002)
    assert len(received) >= after, f"only {len(received)} pieces before the stream ended"
    t_cancel = time.monotonic()
    cancel.cancel()
    reader.join(5)
    assert not reader.is_alive(), "the stream did not return after the cancel"
    returned_after = time.monotonic() - t_cancel
    before = [t for t, _ in received if t <= t_cancel]
    step = float(np.median(np.diff(before))) if len(before) > 1 else 0.0
    return returned_after, [t for t, _ in received if t > t_cancel], step


# --------------------------------------------------------------------------- openai backend


@pytest.mark.slow
def test_openai_streams_tokens_in_several_pieces(lm_server: str, tiny_lm_dir: Path) -> None:
    generator = OpenAIChatGenerator(lm_server, str(tiny_lm_dir), temperature=0.8)
    arrivals: list[float] = []
    pieces: list[str] = []
    for text in generator.stream(MESSAGES, 24, CancelToken()):
        arrivals.append(time.monotonic())
        pieces.append(text)
    assert len(pieces) >= 5, pieces
    assert "".join(pieces).strip()
    # Streamed, not delivered at the end in one go: the pieces arrive spread out in time.
    assert arrivals[-1] - arrivals[0] > 0.0
    generator.close()


@pytest.mark.slow
def test_openai_turns_go_out_on_the_connection_opened_ahead(lm_server: str) -> None:
    generator = OpenAIChatGenerator(lm_server, "")  # "": the server's (pinned) model
    generator.warm_up()  # after the warm-up the constructor started
    assert generator.connections_opened == 1  # both warm-ups used one connection
    assert len(list(generator.stream(MESSAGES, 8, CancelToken()))) >= 2
    generator.prepare(MESSAGES, CancelToken())
    assert len(list(generator.stream(MESSAGES, 8, CancelToken()))) >= 2
    # No turn paid a TCP handshake: the requests went out on the connection opened ahead.
    assert generator.connections_opened == 1
    generator.close()


@pytest.mark.slow
def test_openai_cancel_mid_stream_stops_promptly(lm_server: str) -> None:
    generator = OpenAIChatGenerator(lm_server, "")
    cancel = CancelToken()
    returned_after, late, step = _cancel_mid_stream(generator.stream(MESSAGES, 4000, cancel), cancel)
    # Stopped within a few tokens' time, not after the thousands asked for (a yardstick from this
    # run, not a wall-clock bound: a busy machine slows both alike).
    assert returned_after < 0.05 + 50 * step, (returned_after, step)
    # At most the piece already handed over as the cancel came (the actor's lock makes its own
    # guarantee strict: tests/test_turns.py); nothing generated after it.
    assert len(late) <= 1, f"{len(late)} pieces arrived after the cancel"
    # The server is fine afterwards (the closed connection ended that generation only).
    assert list(generator.stream(MESSAGES, 4, CancelToken()))


def test_openai_server_down_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    generator = OpenAIChatGenerator(f"http://127.0.0.1:{port}/v1", "m", setting="actors.prelude")
    with pytest.raises(LlmError) as err:
        list(generator.stream(MESSAGES, 8, CancelToken()))
    assert err.value.kind == "model_unavailable"
    assert f"127.0.0.1:{port}/v1/chat/completions" in err.value.message
    assert "is the server running" in err.value.message and "actors.prelude.endpoint" in err.value.message


@pytest.mark.slow
def test_openai_http_error_names_the_status(lm_server: str) -> None:
    generator = OpenAIChatGenerator(lm_server, "no-such-model")  # the server is pinned to another
    with pytest.raises(LlmError) as err:
        list(generator.stream(MESSAGES, 8, CancelToken()))
    assert err.value.kind == "generation_failed"
    assert "HTTP 400" in err.value.message


def test_openai_bad_endpoint_and_missing_key_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LlmError, match="must be an http"):
        OpenAIChatGenerator("127.0.0.1:8000", "m", setting="actors.prelude")
    monkeypatch.delenv("SKALD_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(LlmError, match="SKALD_TEST_NO_SUCH_KEY"):
        OpenAIChatGenerator("http://127.0.0.1:1/v1", "m", api_key_env="SKALD_TEST_NO_SUCH_KEY")


# A stub OpenAI-compatible server: a real ``http.server`` on 127.0.0.1 whose answers each test
# scripts, for what the real server cannot be made to do on cue (stall, 429, 503, an error event).

Reply = Callable[["_StubHandler"], None]


class _StubServer(http.server.ThreadingHTTPServer):
    """Every POST is answered by the next of ``replies`` (the last one repeats); a HEAD (the
    client's warm-up) gets 405. Records what it received and when a client went away."""

    daemon_threads = True

    def __init__(self, *replies: Reply) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.replies = list(replies)
        self.posts: list[tuple[str, dict[str, str], dict[str, Any]]] = []  # (path, lower-case headers, body)
        self.posted = threading.Event()
        self.warmed = threading.Event()
        self.head_gate: threading.Event | None = None  # when set: a HEAD is answered only once it is set
        self.client_gone = threading.Event()  # a stalled reply saw the client close the connection
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> _StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(10)


class _StubHandler(http.server.BaseHTTPRequestHandler):
    server: _StubServer

    def do_HEAD(self) -> None:
        if self.server.head_gate is not None:
            self.server.head_gate.wait(60)
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.server.warmed.set()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        with self.server.lock:
            n = len(self.server.posts)
            self.server.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            reply = self.server.replies[min(n, len(self.server.replies) - 1)]
        self.server.posted.set()
        reply(self)

    def event(self, data: Any) -> None:
        self.wfile.write(b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n")
        self.wfile.flush()

    def wait_for_close(self) -> None:
        """Send nothing more; return (and tell the test) when the client closes the connection."""
        self.connection.settimeout(60)
        try:
            while self.rfile.read(1):
                pass
        except TimeoutError:
            return  # the client never closed: the test's wait fails
        except OSError:
            # A client that closes with our unread bytes in its receive buffer makes its kernel
            # send RST, not FIN: a reset is the client going away too.
            pass
        self.server.client_gone.set()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _sse(*words: str, finish: bool = True, stall: bool = False, error: str = "") -> Reply:
    """200 and a stream of ``words``; then an error event, the finish, or a stall."""

    def reply(handler: _StubHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        for word in words:
            handler.event({"choices": [{"index": 0, "delta": {"content": word}}]})
        if error:
            handler.event({"error": {"message": error}})
        if finish:
            handler.event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            handler.event(b"[DONE]")
        if stall:
            handler.wait_for_close()

    return reply


def _status(code: int, message: str = "no", **headers: str) -> Reply:
    def reply(handler: _StubHandler) -> None:
        body = json.dumps({"error": {"message": message}}).encode()
        handler.send_response(code)
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return reply


def _stall(handler: _StubHandler) -> None:
    """Take the request, never answer it."""
    handler.wait_for_close()


class _Reader(threading.Thread):
    """Reads a stream on a thread: its pieces, the ``LlmError`` it ended with; ``got`` is set
    once ``after`` pieces arrived (or the stream ended)."""

    def __init__(self, stream: Iterator[str], after: int = 0) -> None:
        super().__init__(daemon=True)
        self.stream, self.after = stream, after
        self.pieces: list[str] = []
        self.error: LlmError | None = None
        self.got = threading.Event()

    def run(self) -> None:
        try:
            for text in self.stream:
                self.pieces.append(text)
                if len(self.pieces) >= self.after:
                    self.got.set()
        except LlmError as exc:
            self.error = exc
        finally:
            self.got.set()


def test_one_cancel_token_for_engines_and_language_models() -> None:
    from actors.tts.base import CancelToken as EngineCancelToken

    assert CancelToken is EngineCancelToken
    token, calls = CancelToken(), []
    token.on_cancel(lambda: calls.append("early"))
    token.cancel()
    token.on_cancel(lambda: calls.append("late"))  # already cancelled: runs at once
    token.cancel()  # once only
    assert calls == ["early", "late"] and token.cancelled and token.wait(0)


def test_openai_warms_the_connection_at_start() -> None:
    with _StubServer(_sse("Hello.")) as server:
        generator = OpenAIChatGenerator(server.url, "m")
        # Nothing asked for a generation yet: the constructor's warm-up reached the server.
        assert server.warmed.wait(30)
        assert not server.posts
        generator.close()


def test_openai_cancel_closes_a_stalled_stream_on_the_server() -> None:
    # The server sends two pieces, then nothing: only the cancel can end this read (the read
    # timeout is longer than the test waits), and the server sees the connection close.
    with _StubServer(_sse("Dust ", "settles ", finish=False, stall=True)) as server:
        generator = OpenAIChatGenerator(server.url, "m", timeout_s=120)
        cancel = CancelToken()
        reader = _Reader(generator.stream(MESSAGES, 8, cancel), after=2)
        reader.start()
        got = reader.got.wait(30)
        seen = f"{len(server.posts)} posts, {reader.pieces}, {reader.error}, warmed {server.warmed.is_set()}"
        assert got, f"no pieces: {seen}"
        assert reader.pieces == ["Dust ", "settles "]
        cancel.cancel()
        assert server.client_gone.wait(30), "the server never saw the connection close"
        reader.join(30)
        assert not reader.is_alive() and reader.error is None
        assert reader.pieces == ["Dust ", "settles "]


def test_a_warm_up_the_server_never_answers_does_not_hold_the_request_back() -> None:
    # The HEAD hangs until the test lets it go, which is only after the generation streamed: the
    # request waited for the warm-up no longer than its own short timeout, not the read timeout.
    with _StubServer(_sse("Dust ", "settles.")) as server:
        server.head_gate = threading.Event()
        try:
            generator = OpenAIChatGenerator(server.url, "m", timeout_s=120)
            reader = _Reader(generator.stream(MESSAGES, 8, CancelToken()))
            reader.start()
            reader.join(60)
            assert not reader.is_alive() and reader.error is None
            assert reader.pieces == ["Dust ", "settles."]
            assert not server.warmed.is_set()  # the HEAD was still unanswered
        finally:
            server.head_gate.set()


def test_openai_cancel_before_the_answer_closes_the_connection() -> None:
    with _StubServer(_stall) as server:
        generator = OpenAIChatGenerator(server.url, "m", timeout_s=120)
        cancel = CancelToken()
        reader = _Reader(generator.stream(MESSAGES, 8, cancel))
        reader.start()
        assert server.posted.wait(30)
        cancel.cancel()
        assert server.client_gone.wait(30), "the server never saw the connection close"
        reader.join(30)
        assert not reader.is_alive() and reader.error is None and reader.pieces == []
        assert len(server.posts) == 1  # a cancelled request is not retried


def test_openai_leaving_the_loop_closes_the_stream_on_the_server() -> None:
    with _StubServer(_sse("Dust ", "settles ", finish=False, stall=True)) as server:
        generator = OpenAIChatGenerator(server.url, "m", timeout_s=120)
        for text in generator.stream(MESSAGES, 8, CancelToken()):
            assert text == "Dust "
            break
        assert server.client_gone.wait(30), "the server never saw the connection close"


def test_openai_429_is_retried_then_streams() -> None:
    with _StubServer(_status(429, "slow down", retry_after_ms="10"), _sse("Dust ", "settles.")) as server:
        generator = OpenAIChatGenerator(server.url, "m")
        assert list(generator.stream(MESSAGES, 8, CancelToken())) == ["Dust ", "settles."]
        assert len(server.posts) == 2
        assert server.posts[0][2] == server.posts[1][2]  # the same request again


def test_openai_5xx_is_retried_then_reported_with_the_status() -> None:
    with _StubServer(_status(503, "overloaded", retry_after_ms="10")) as server:
        generator = OpenAIChatGenerator(server.url, "m", max_retries=2)
        with pytest.raises(LlmError) as err:
            list(generator.stream(MESSAGES, 8, CancelToken()))
        assert err.value.kind == "generation_failed"
        assert "HTTP 503" in err.value.message and "overloaded" in err.value.message
        assert len(server.posts) == 3  # the request and max_retries retries
    with _StubServer(_status(500, retry_after_ms="10")) as server:
        generator = OpenAIChatGenerator(server.url, "m", max_retries=0)
        with pytest.raises(LlmError, match="HTTP 500"):
            list(generator.stream(MESSAGES, 8, CancelToken()))
        assert len(server.posts) == 1


def test_openai_404_is_a_configuration_error_and_not_retried() -> None:
    with _StubServer(_status(404, "model 'm' not found")) as server:
        generator = OpenAIChatGenerator(server.url, "m", setting="actors.prelude")
        with pytest.raises(LlmError) as err:
            list(generator.stream(MESSAGES, 8, CancelToken()))
        assert err.value.kind == "model_unavailable" and "HTTP 404" in err.value.message
        assert "model 'm' not found" in err.value.message and "actors.prelude.model" in err.value.message
        assert len(server.posts) == 1


def test_openai_cancel_interrupts_the_wait_before_a_retry() -> None:
    # Retry-After: 100 s (capped at timeout_s = 120): only the cancel ends this wait in time.
    with _StubServer(_status(429, Retry_After="100")) as server:
        generator = OpenAIChatGenerator(server.url, "m", timeout_s=120)
        cancel = CancelToken()
        reader = _Reader(generator.stream(MESSAGES, 8, cancel))
        reader.start()
        assert server.posted.wait(30)
        cancel.cancel()
        reader.join(30)
        assert not reader.is_alive(), "the cancel did not end the wait before the retry"
        assert reader.error is None and reader.pieces == [] and len(server.posts) == 1


def test_openai_error_event_in_the_stream_is_an_error_after_the_pieces() -> None:
    with _StubServer(_sse("Dust ", finish=False, error="the model fell over")) as server:
        generator = OpenAIChatGenerator(server.url, "m")
        pieces: list[str] = []
        with pytest.raises(LlmError) as err:
            for text in generator.stream(MESSAGES, 8, CancelToken()):
                pieces.append(text)
        assert pieces == ["Dust "]
        assert err.value.kind == "generation_failed" and "the model fell over" in err.value.message


def test_openai_stream_broken_mid_way_is_an_error_after_the_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two chunks, then the connection drops (an HTTP/1.0 body that ends without a finish).
    monkeypatch.setenv("SKALD_TEST_KEY", "sekrit")
    with _StubServer(_sse("Dust ", "settles ", finish=False)) as server:
        generator = OpenAIChatGenerator(server.url, "m", api_key_env="SKALD_TEST_KEY")
        pieces: list[str] = []
        with pytest.raises(LlmError) as err:
            for text in generator.stream(MESSAGES, 8, CancelToken()):
                pieces.append(text)
        assert pieces == ["Dust ", "settles "]
        assert err.value.kind == "generation_failed"
        assert "ended before the completion" in err.value.message
        assert server.posts[0][1]["authorization"] == "Bearer sekrit"


def test_openai_takes_nothing_from_the_sdk_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-this-server")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-not-for-this-server")
    with _StubServer(_sse("Dust.")) as server:
        assert list(OpenAIChatGenerator(server.url, "").stream(MESSAGES, 7, CancelToken())) == ["Dust."]
        path, headers, body = server.posts[0]
    assert path == "/v1/chat/completions"  # the endpoint setting, not OPENAI_BASE_URL
    assert "authorization" not in headers and "openai-organization" not in headers
    assert "model" not in body  # "": the server's default model
    assert body["max_tokens"] == 7 and body["stream"] is True and body["messages"] == MESSAGES


_CONNECTS: list[tuple[str, Any]] | None = None  # what the audit hook records while a test listens


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _CONNECTS is not None and event in ("socket.connect", "socket.getaddrinfo"):
        _CONNECTS.append((event, args[1] if event == "socket.connect" else args[0]))


sys.addaudithook(_audit)


def test_openai_reaches_only_the_configured_server() -> None:
    global _CONNECTS
    with _StubServer(_sse("Dust.")) as server:
        port = server.server_address[1]
        _CONNECTS = []
        try:
            generator = OpenAIChatGenerator(server.url, "m")
            assert list(generator.stream(MESSAGES, 8, CancelToken())) == ["Dust."]
            generator.warm_up()
            generator.close()
            seen, _CONNECTS = _CONNECTS, None
        finally:
            _CONNECTS = None
    connects = [addr for event, addr in seen if event == "socket.connect"]
    assert connects, "the audit hook saw no connection at all"
    assert all(tuple(addr[:2]) == ("127.0.0.1", port) for addr in connects), seen
    assert all(host == "127.0.0.1" for event, host in seen if event == "socket.getaddrinfo"), seen


def test_openai_uses_the_proxy_from_the_environment_but_not_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    # The "proxy" answers the request itself: what matters is that the request reached it, in a
    # proxy's absolute form, for a host the client never resolved (.invalid cannot resolve).
    with _StubServer(_sse("Through ", "the proxy.")) as proxy, _StubServer(_sse("Direct.")) as local:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        remote = OpenAIChatGenerator("http://llm.skald.invalid/v1", "m")
        assert "".join(remote.stream(MESSAGES, 8, CancelToken())) == "Through the proxy."
        assert proxy.posts[0][0] == "http://llm.skald.invalid/v1/chat/completions"
        loopback = OpenAIChatGenerator(local.url, "m")
        assert "".join(loopback.stream(MESSAGES, 8, CancelToken())) == "Direct."
        assert len(proxy.posts) == 1 and len(local.posts) == 1


# --------------------------------------------------------------------------- transformers backend


def test_transformers_streams_in_several_pieces(local_generator: TransformersGenerator) -> None:
    pieces = list(local_generator.stream(MESSAGES, 32, CancelToken()))
    assert len(pieces) >= 3, pieces
    assert "".join(pieces).strip()


def test_transformers_prefill_is_reused_and_changes_nothing(tiny_lm_dir: Path) -> None:
    greedy = TransformersGenerator(str(tiny_lm_dir), device="cpu", temperature=0.0)
    context, action, prelude = "A crypt, cold and still.", "I light a torch.", "You strike the flint and"
    head = narrative_messages(context, action, "", continue_final=True)
    full = narrative_messages(context, action, prelude, continue_final=True)
    assert greedy.render(full, True).startswith(greedy.render(head, True))
    assert greedy.render(full, True).endswith(prelude)
    plain = "".join(greedy.stream(full, 20, CancelToken(), continue_final=True))
    greedy.prepare(head, CancelToken(), continue_final=True)
    assert greedy._prefilled is not None
    prefilled = "".join(greedy.stream(full, 20, CancelToken(), continue_final=True))
    assert greedy._prefilled is None  # consumed
    assert prefilled == plain and plain


def test_transformers_cancel_stops_within_a_step(local_generator: TransformersGenerator) -> None:
    cancel = CancelToken()
    before = threading.active_count()
    returned_after, late, step = _cancel_mid_stream(local_generator.stream(MESSAGES, 4000, cancel), cancel)
    assert returned_after < 0.05 + 50 * step, (returned_after, step)
    assert len(late) <= 1
    assert threading.active_count() <= before  # the generate thread is gone too


def test_transformers_early_exit_stops_generation(local_generator: TransformersGenerator) -> None:
    """Leaving the loop closes the stream, and closing joins the generate thread: so generation
    stopped. Against a yardstick measured in the same run (a whole 200-token stream) rather than
    a wall-clock bound: had the close waited for the 4000 tokens asked for, it would take longer."""
    t0 = time.monotonic()
    full = list(local_generator.stream(MESSAGES, 200, CancelToken()))
    whole_200_s = time.monotonic() - t0
    assert len(full) > 20, f"the yardstick stream ended after {len(full)} pieces"

    t0 = time.monotonic()
    stream = local_generator.stream(MESSAGES, 4000, CancelToken())
    for n, _ in enumerate(stream):
        if n == 2:
            break
    stream.close()  # what the loop's exit leaves to garbage collection, done now
    early_exit_s = time.monotonic() - t0
    assert not any(t.name == "llm-generate" for t in threading.enumerate()), "the generate thread outlived the close"
    assert early_exit_s < whole_200_s, (early_exit_s, whole_200_s)


def test_transformers_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LlmError) as err:
        TransformersGenerator(str(tmp_path / "nope"), setting="actors.prelude")
    assert err.value.kind == "model_unavailable"
    assert "actors.prelude.model" in err.value.message and "never downloaded" in err.value.message
    with pytest.raises(LlmError, match="is empty"):
        TransformersGenerator("")


# --------------------------------------------------------------------------- output shaping


def _limit(stream: list[str], max_words: int) -> tuple[list[str], str]:
    limiter = OpenerLimiter(max_words)
    out = []
    for delta in stream:
        piece = limiter.feed(delta)
        if piece:
            out.append(piece)
        if limiter.done:
            break
    tail = limiter.finish()
    if tail:
        out.append(tail)
    assert "".join(out) == limiter.text
    return out, limiter.text


def test_opener_releases_words_as_they_complete() -> None:
    out, text = _limit(["The", " do", "or cre", "aks open", " slowly", " and"], 12)
    assert out == ["The", " door", " creaks", " open", " slowly", " and"]  # the last one on finish()
    assert text == "The door creaks open slowly and"


def test_opener_stops_at_the_first_sentence_end() -> None:
    _, text = _limit(["Yes. ", "And more words follow here."], 12)
    assert text == "Yes."


def test_opener_never_exceeds_max_words_and_prefers_punctuation() -> None:
    words = ["The", "wind", "dies,", "the", "trees", "go", "still,", "and", "then", "the", "owls", "begin"]
    _, text = _limit([w + " " for w in words], 8)
    assert text == "The wind dies, the trees go still,"  # "and" was held, then dropped: ends at the comma
    words = ["You", "step", "inside,", "and", "the", "air", "is", "cold", "and", "wet"]
    _, text = _limit([w + " " for w in words], 8)
    assert text == "You step inside, and the air is cold"  # the tail ends at no punctuation: kept
    _, text = _limit(["a b c d e f g h i j k l m n"], 8)
    assert text == "a b c d e f g h"  # no punctuation to end at: a word boundary


def test_opener_word_limit_on_gibberish(local_generator: TransformersGenerator) -> None:
    for max_words in (1, 5, 12):
        limiter = OpenerLimiter(max_words)
        for delta in local_generator.stream(MESSAGES, 60, CancelToken()):
            limiter.feed(delta)
            if limiter.done:
                break
        limiter.finish()
        assert 1 <= len(limiter.text.split()) <= max_words


def test_repeat_guard_drops_a_repeated_prelude_only() -> None:
    guard = RepeatGuard("You push the door.")
    out = [guard.feed(d) for d in ("You ", "push ", "the ", "door. ", "It ", "groans.")]
    assert "".join(out) == "It groans."
    guard = RepeatGuard("You push the door.")
    out = [guard.feed(d) for d in ("You ", "hear ", "a sound.")]
    assert "".join(out) == "You hear a sound."  # held one word, released on the difference
    guard = RepeatGuard("You push the door.")
    assert guard.feed("and it ") == "and it "
    assert RepeatGuard("").feed("x") == "x"


def test_clean_removes_control_characters() -> None:
    assert clean("a\x00b\x1bc\r\nd\te") == "abc\n\nd\te"

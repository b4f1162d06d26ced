"""The language-model backends (``actors.text.llm``) against real servers and a real model.

The model is ``tests.tiny_lm``: a tiny randomly initialised Qwen2 built locally (nothing is
downloaded). Its text is gibberish, which is fine here: these tests check streaming, the
order of pieces, cancellation and error paths, never what the text says. The ``openai``
backend talks to a real ``transformers serve`` (OpenAI-compatible) on 127.0.0.1 serving that
model; the module starts it once and ends it by PID.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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


def _cancel_mid_stream(stream: Iterator[str], cancel: CancelToken, after: int = 3) -> tuple[float, list[float]]:
    """Read ``stream`` on a thread, cancel after ``after`` pieces; (seconds the stream took to
    return after the cancel, arrival times of pieces received after it)."""
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
    return returned_after, [t for t, _ in received if t > t_cancel]


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
def test_openai_prepare_then_stream_uses_the_open_connection(lm_server: str) -> None:
    generator = OpenAIChatGenerator(lm_server, "")  # "": the server's (pinned) model
    generator.prepare(MESSAGES, CancelToken())
    assert generator._spare is not None
    assert len(list(generator.stream(MESSAGES, 8, CancelToken()))) >= 2
    assert generator._spare is None


@pytest.mark.slow
def test_openai_cancel_mid_stream_stops_promptly(lm_server: str) -> None:
    generator = OpenAIChatGenerator(lm_server, "")
    cancel = CancelToken()
    returned_after, late = _cancel_mid_stream(generator.stream(MESSAGES, 4000, cancel), cancel)
    assert returned_after < 0.5, returned_after
    # At most the piece already handed over as the cancel came (the actor's lock makes its own
    # guarantee strict: tests/test_turns.py); nothing generated after it.
    assert len(late) <= 1, f"{len(late)} pieces arrived after the cancel"
    # The server is fine afterwards (the closed connection ended that generation only).
    assert list(generator.stream(MESSAGES, 4, CancelToken()))


def test_openai_server_down_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    generator = OpenAIChatGenerator(f"http://127.0.0.1:{port}/v1", "m")
    with pytest.raises(LlmError) as err:
        list(generator.stream(MESSAGES, 8, CancelToken()))
    assert err.value.kind == "model_unavailable"
    assert f"127.0.0.1:{port}/v1/chat/completions" in err.value.message
    assert "is the server running" in err.value.message


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


class _BrokenStreamHandler(http.server.BaseHTTPRequestHandler):
    """Two SSE chunks, then the connection drops: an HTTP failure in the middle of a stream."""

    seen_auth: list[str] = []  # noqa: RUF012 -- written by the server thread, read by the test

    def do_POST(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization", ""))
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for word in ("Dust ", "settles "):
            self.wfile.write(b'data: {"choices":[{"delta":{"content":"%s"},"index":0}]}\n\n' % word.encode())
            self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_openai_stream_broken_mid_way_is_an_error_after_the_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BrokenStreamHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SKALD_TEST_KEY", "sekrit")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        generator = OpenAIChatGenerator(url, "m", api_key_env="SKALD_TEST_KEY")
        pieces: list[str] = []
        with pytest.raises(LlmError) as err:
            for text in generator.stream(MESSAGES, 8, CancelToken()):
                pieces.append(text)
        assert pieces == ["Dust ", "settles "]
        assert err.value.kind == "generation_failed"
        assert "ended before the completion" in err.value.message
        assert _BrokenStreamHandler.seen_auth == ["Bearer sekrit"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


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
    returned_after, late = _cancel_mid_stream(local_generator.stream(MESSAGES, 4000, cancel), cancel)
    assert returned_after < 0.5, returned_after
    assert len(late) <= 1
    assert threading.active_count() <= before  # the generate thread is gone too


def test_transformers_early_exit_stops_generation(local_generator: TransformersGenerator) -> None:
    t0 = time.monotonic()
    for n, _ in enumerate(local_generator.stream(MESSAGES, 4000, CancelToken())):
        if n == 2:
            break
    assert time.monotonic() - t0 < 3.0  # 4000 tokens would take far longer


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

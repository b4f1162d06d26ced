"""The ``openai`` backend: streaming chat completions (``POST {endpoint}/chat/completions``,
``"stream": true``) from any OpenAI-compatible server -- vLLM, llama.cpp server, Ollama,
``transformers serve`` -- on the official ``openai`` SDK.

Why the SDK rather than ``httpx`` + ``httpx-sse``: it is the reference client of this protocol
and already does what the hand-written client did by hand -- SSE framing, chunks parsed into
``ChatCompletionChunk``, an error status turned into ``APIStatusError`` with the server's
message, an ``error`` event inside the stream raised as ``APIError`` -- on an ``httpx`` client
that honours ``HTTP(S)_PROXY`` / ``NO_PROXY`` / ``SSL_CERT_FILE`` (a server on a loopback
address is always reached directly: no proxy elsewhere can reach it) and keeps connections
alive. (This environment's SDK runs on ``httpx2``, the fork it depends on; the API is httpx's.)
Two requirements it does not meet on its own are added here, on its public surface:

* **A cancel from another thread stops the stream at once.** ``Stream.close()`` closes the
  response, but on Linux closing a socket does not wake a thread blocked reading it, and the
  SDK's ``create()`` blocks until the response headers arrive. So every socket this client
  opens is recorded (httpx's ``trace`` request extension reports each new TCP and TLS stream),
  and the cancel shuts them down (``shutdown(SHUT_RDWR)``): the blocked read returns at once,
  the server sees the connection close and stops generating, and the reading thread leaves,
  closing the stream (``Stream.close()``) in its own ``finally`` -- httpx's response objects
  are only ever touched by the thread that reads them.
* **Retries that a cancel interrupts.** The SDK's own retries sleep in ``time.sleep`` (honouring
  ``Retry-After`` up to two minutes), where no cancel reaches them. So the client is built with
  ``max_retries=0`` and ``stream`` retries with the SDK's policy -- 408, 409, 429 and 5xx, and a
  connection cut before the response; 0.5 s doubling up to 8 s (minus up to 25 % jitter), or
  the server's ``Retry-After`` (capped at ``timeout_s``) -- waiting on the cancel token. A
  refused connection or an unknown host is not retried (nobody is listening: the turn says so
  now), and nothing is retried once text has streamed (it is already being spoken).

The connection is opened ahead of the turn: a ``HEAD {endpoint}/chat/completions`` (answered
by the server's router alone, typically 405, with no model work) on a background thread when
the generator is built (actor start), at ``prepare`` (the narrative's ``Turn``), and after a
stream that left no connection open (a cancel, a server that closes it). A request waits for
a warm-up still in flight (its connection would cost no less), so a turn's request goes out on
an open keep-alive connection with no TCP or TLS handshake. Chat APIs have no "prefill now,
continue later", and ``continue_final`` is not portable across servers, so the narrative prompt
states the prelude in the user message instead (``llm.narrative_messages``).

Nothing comes from the SDK's own environment variables: the base URL is always the setting
(``OPENAI_BASE_URL`` is never used, and with a base URL the SDK reaches nothing else: no
api.openai.com, no hub -- ``tests/test_llm.py`` checks every connection goes to the server);
the key is the variable ``api_key_env`` names, or none -- the SDK insists on a key, so a
placeholder is passed and the ``Authorization`` header is dropped from every request; and the
``OpenAI-Organization`` / ``OpenAI-Project`` headers (``OPENAI_ORG_ID`` ...) are dropped.
``openai`` is imported when a generator is built (it takes about a second), not at import.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import random
import socket
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from actors.text.llm_base import CancelToken, ChatMessage, LlmError

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionChunk

log = logging.getLogger("skald.llm")

#: Status codes retried, as the SDK's own policy (request timeout, lock timeout, rate limit, server errors).
_RETRY_STATUS = frozenset({408, 409, 429})
_FIRST_DELAY_S = 0.5
_MAX_DELAY_S = 8.0
#: The key the SDK is given when none is configured; the header is dropped before sending.
_NO_KEY = "no-key"
# A warm-up is only a head start: a server (or proxy) that is slow to answer its HEAD must not hold
# the first request back for the whole read timeout, so the HEAD gives up after this long.
_WARM_UP_TIMEOUT_S = 3.0


class OpenAIChatGenerator:
    """Streaming chat completions over HTTP(S) from an OpenAI-compatible server."""

    name = "openai"
    continues_assistant = False

    def __init__(
        self,
        endpoint: str,
        model: str = "",
        *,
        api_key_env: str = "",
        temperature: float = 0.8,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        setting: str = "actors.narrative",
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LlmError(
                "model_unavailable",
                f"{setting}.endpoint = {endpoint!r}: must be an http:// or https:// base URL, "
                "e.g. http://127.0.0.1:8000/v1",
            )
        api_key = ""
        if api_key_env:
            api_key = os.environ.get(api_key_env, "")
            if not api_key:
                raise LlmError(
                    "model_unavailable",
                    f"{setting}.api_key_env names {api_key_env}, but that environment variable is not set",
                )
        try:
            import httpx2
            import openai
        except ImportError as exc:
            raise LlmError(
                "model_unavailable", f"the openai backend needs the openai SDK ({exc}); pip install openai httpx2"
            ) from None
        # httpx logs every request at INFO; the actors log at INFO, and a line per warm-up ("HEAD
        # ... 405 Method Not Allowed") would read like a fault. Errors reach the log as LlmErrors.
        httpx_log = logging.getLogger("httpx2")
        if httpx_log.level == logging.NOTSET:
            httpx_log.setLevel(logging.WARNING)
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        self.temperature = temperature
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.setting = setting
        self._url = f"{self.endpoint}/chat/completions"
        # Sockets of this client's connections (see the module docstring); weak: closed ones go.
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._sockets_lock = threading.Lock()
        self._active: CancelToken | None = None  # the token of the generation in progress
        #: TCP connections this client has opened (a warmed connection is reused, not counted twice).
        self.connections_opened = 0
        # Proxies come from the environment (HTTP(S)_PROXY, NO_PROXY), except for a server on this
        # machine: a proxy elsewhere cannot reach our loopback, whatever NO_PROXY forgot to say.
        direct = {"all://" + parts.netloc.rpartition("@")[2]: None} if _is_loopback(parts.hostname) else {}
        self._http = openai.DefaultHttpxClient(
            timeout=httpx2.Timeout(timeout_s), event_hooks={"request": [self._trace_request]}, mounts=direct
        )
        self._client = openai.OpenAI(
            base_url=self.endpoint,
            api_key=api_key or _NO_KEY,
            max_retries=0,  # retried in ``_open``, where a cancel can interrupt the wait
            timeout=httpx2.Timeout(timeout_s),
            http_client=self._http,
        )
        omit = openai.Omit()
        self._headers: dict[str, Any] = {"OpenAI-Organization": omit, "OpenAI-Project": omit}
        self._warm_headers: dict[str, str] = {}
        if api_key:
            self._warm_headers["Authorization"] = f"Bearer {api_key}"
        else:
            self._headers["Authorization"] = omit
        self._state_lock = threading.Lock()
        self._warming = False  # a warm-up request is in flight
        self._warm_waiters: list[threading.Event] = []
        self._closed = False
        self._warm_in_background()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "endpoint": self.endpoint, "model": self.model or "(server default)"}

    # ---------------------------------------------------------------- connections

    def _trace_request(self, request: Any) -> None:
        """httpx ``request`` event hook: ask httpcore to report the connections it opens."""
        request.extensions["trace"] = self._trace

    def _trace(self, event: str, info: Mapping[str, Any]) -> None:
        if not event.endswith((".connect_tcp.complete", ".start_tls.complete")):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            return
        with self._sockets_lock:
            self._sockets.add(sock)
            if event.endswith(".connect_tcp.complete"):
                self.connections_opened += 1
        active = self._active
        if active is not None and active.cancelled:  # cancelled while this connection was being made
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _abort(self, token: CancelToken) -> None:
        """The cancel of ``token``: wake the reading thread and end the HTTP stream, at once."""
        if self._active is not token:
            return  # that generation is over; the open connections belong to the next one
        with self._sockets_lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _has_open_connection(self) -> bool:
        with self._sockets_lock:
            return any(sock.fileno() != -1 for sock in self._sockets)

    def warm_up(self) -> None:
        """Open a connection to the server now and return when it is open (after the background
        warm-up in progress, if any); it stays in the pool for the next request."""
        self._wait_for_warm_up(CancelToken())
        self._warm()

    def _warm(self) -> None:
        """``HEAD {endpoint}/chat/completions``: the server's router answers it (typically 405)
        with no model work. Failures are ignored: the real request reports them."""
        if self._closed:
            return
        import httpx2

        try:
            timeout = httpx2.Timeout(min(self.timeout_s, _WARM_UP_TIMEOUT_S))
            self._http.head(self._url, headers=self._warm_headers, timeout=timeout)
        except Exception as exc:  # a head start only
            log.debug("%s: warming the connection to %s failed: %s", self.setting, self.endpoint, exc)

    def _warm_in_background(self) -> None:
        with self._state_lock:
            if self._closed or self._warming:
                return
            self._warming = True
        threading.Thread(target=self._warm_and_report, name="llm-warm-up", daemon=True).start()

    def _warm_and_report(self) -> None:
        try:
            self._warm()
        finally:
            with self._state_lock:
                self._warming = False
                waiters, self._warm_waiters = self._warm_waiters, []
            for woken in waiters:
                woken.set()

    def _wait_for_warm_up(self, cancel: CancelToken) -> None:
        """Let a warm-up in flight finish (its connection is the one to use: the request would
        otherwise open another, which costs no less), or the cancel come."""
        woken = threading.Event()
        with self._state_lock:
            if not self._warming:
                return
            self._warm_waiters.append(woken)
        cancel.on_cancel(woken.set)
        woken.wait()

    def prepare(self, messages: Sequence[ChatMessage], cancel: CancelToken, *, continue_final: bool = False) -> None:
        """Open the connection (TCP, TLS) now so the request goes out the moment it is known."""
        self._warm_in_background()

    # ---------------------------------------------------------------- generation

    def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, cancel: CancelToken, *, continue_final: bool = False
    ) -> Iterator[str]:
        if cancel.cancelled:
            return
        self._active = cancel
        cancel.on_cancel(lambda: self._abort(cancel))
        try:
            self._wait_for_warm_up(cancel)
            response = None if cancel.cancelled else self._open(messages, max_tokens, cancel)
            if response is not None:
                yield from self._read(response, cancel)
        finally:
            self._active = None
            if not self._has_open_connection():
                self._warm_in_background()  # for the next turn

    def _open(
        self, messages: Sequence[ChatMessage], max_tokens: int, cancel: CancelToken
    ) -> openai.Stream[ChatCompletionChunk] | None:
        """Send the request, retrying as the module docstring says; None once cancelled."""
        import httpx2
        import openai

        for attempt in range(self.max_retries + 1):
            delay = min(_FIRST_DELAY_S * 2.0**attempt, _MAX_DELAY_S) * (1 - 0.25 * random.random())
            try:
                return self._client.chat.completions.create(
                    model=self.model or cast(Any, openai.omit),  # "": the server's default model
                    messages=cast(Any, [dict(m) for m in messages]),
                    max_tokens=max_tokens,
                    temperature=self.temperature,
                    stream=True,
                    extra_headers=self._headers,
                )
            except openai.APIStatusError as exc:
                error = self._status_error(exc)
                retry = exc.status_code in _RETRY_STATUS or exc.status_code >= 500
                delay = self._retry_after(exc.response.headers, delay)
            except openai.APITimeoutError:
                error = LlmError(
                    "generation_failed", f"{self._url}: no answer for {self.timeout_s:g} s ({self.setting}.timeout_s)"
                )
                retry = True
            except (openai.APIConnectionError, httpx2.TransportError) as exc:
                # (A transport error can also escape the SDK unwrapped: while it reads an error body.)
                cause = exc.__cause__ if isinstance(exc, openai.APIConnectionError) else exc
                if isinstance(cause, httpx2.ConnectError):  # refused, unknown host: nobody is there
                    error = LlmError(
                        "model_unavailable",
                        f"cannot reach {self._url}: {cause} (is the server running? see {self.setting}.endpoint)",
                    )
                    retry = False
                else:  # cut before the response (a stale keep-alive connection, a restarting server)
                    error = LlmError("generation_failed", f"{self._url}: {_describe(exc)}")
                    retry = True
            if cancel.cancelled:
                return None  # our own shutdown of the socket, or the answer came too late
            if not retry or attempt == self.max_retries:
                raise error
            log.info(
                "%s: %s; retry %d of %d in %.2f s", self.setting, error.message, attempt + 1, self.max_retries, delay
            )
            if cancel.wait(delay):
                return None
        raise AssertionError("unreachable")  # pragma: no cover  # the last attempt returns or raises

    def _read(self, response: openai.Stream[ChatCompletionChunk], cancel: CancelToken) -> Iterator[str]:
        import openai

        finished = False
        try:
            for chunk in response:
                if cancel.cancelled:
                    return
                for choice in getattr(chunk, "choices", None) or ():
                    if getattr(choice, "index", 0) != 0:
                        continue
                    content = getattr(getattr(choice, "delta", None), "content", None)
                    if isinstance(content, str) and content:
                        yield content
                    if getattr(choice, "finish_reason", None):
                        finished = True
        except openai.APITimeoutError:
            if not cancel.cancelled:
                raise LlmError(
                    "generation_failed", f"{self._url}: no data for {self.timeout_s:g} s ({self.setting}.timeout_s)"
                ) from None
        except openai.APIConnectionError as exc:
            if not cancel.cancelled:
                raise LlmError(
                    "generation_failed", f"{self._url}: the stream ended before the completion did ({_describe(exc)})"
                ) from None
        except openai.APIError as exc:  # an error event inside the stream
            if not cancel.cancelled:
                message = f"{self._url}: the server reported an error: {exc.message}"
                raise LlmError("generation_failed", message) from None
        except ValueError as exc:  # not JSON
            if not cancel.cancelled:
                raise LlmError("generation_failed", f"{self._url}: not JSON in the stream: {exc}") from None
        finally:
            response.close()
        if not finished and not cancel.cancelled:
            raise LlmError("generation_failed", f"{self._url}: the stream ended before the completion did")

    def _status_error(self, exc: openai.APIStatusError) -> LlmError:
        response = exc.response
        try:
            detail = response.text.strip()
        except Exception:  # the body could not be read
            detail = str(exc.message)
        message = f"{self._url} answered HTTP {exc.status_code} {response.reason_phrase}: {detail[:500]}"
        if exc.status_code == 404:  # wrong endpoint path or unknown model name: a configuration problem
            return LlmError("model_unavailable", f"{message} (check {self.setting}.endpoint and {self.setting}.model)")
        return LlmError("generation_failed", message)

    def _retry_after(self, headers: Mapping[str, str], default: float) -> float:
        """The server's ``retry-after-ms`` / ``Retry-After`` (seconds) if given, at most ``timeout_s``."""
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            try:
                value = float(headers.get(name, "")) * scale
            except ValueError:
                continue
            if value >= 0:
                return min(value, self.timeout_s)
        return default

    def close(self) -> None:
        with self._state_lock:
            self._closed = True
        self._client.close()


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(exc: BaseException) -> str:
    """The underlying transport error of an SDK exception, for the message."""
    cause = exc.__cause__ or exc
    text = str(cause)
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__

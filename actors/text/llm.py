"""Language-model backends of the text actors, behind one small interface, and the prompts.

Interface (``TextGenerator``)::

    generator.prepare(messages, cancel, continue_final=...)   # optional head start (see below)
    for text in generator.stream(messages, max_tokens, cancel, continue_final=...):
        ...                                                    # text deltas, as they arrive

``messages`` are OpenAI-style chat messages (``{"role", "content"}``). ``cancel`` is a
``CancelToken``: once it is set, ``stream`` yields nothing more and returns within about one
decoding step (transformers) or one socket wake-up (openai), without raising. Leaving the
``for`` loop early (``break``) stops the generation the same way. Failures raise
``LlmError`` with a ``kind`` for the ``wire.Error`` event and a message that says what to
change.

Backends:

``openai``
    ``POST {endpoint}/chat/completions`` with ``"stream": true`` to any OpenAI-compatible
    server (vLLM, llama.cpp server, Ollama, ``transformers serve``), read as server-sent events
    with the standard library only (``http.client``): no SDK, no extra dependency. Cancel shuts
    the socket down from the cancelling thread, which wakes the blocked read at once; closing
    the connection is also how the server learns to stop generating. ``prepare`` opens the
    TCP (and TLS) connection ahead of time; chat APIs offer no "prefill now, continue later",
    and ``continue_final`` is not portable across servers, so the narrative prompt states the
    prelude in the user message instead (see ``narrative_messages``).
``transformers``
    A local model directory loaded with ``local_files_only=True`` (nothing is ever
    downloaded) on ``device`` (``auto``: CUDA when available, else CPU). ``generate`` runs on
    a thread of its own feeding a ``TextIteratorStreamer``; a ``StoppingCriteria`` reads the
    cancel token after every decoding step. ``prepare`` runs the prompt prefix through the
    model and keeps its KV cache; a ``stream`` whose prompt starts with the same tokens reuses
    it and only prefills the rest (for the narrative: the prelude's words). ``continue_final``
    is supported: the last (assistant) message is continued, not answered.

The ``text`` backend (forward the orchestrator's own text) needs no generator; it lives in
``actors.text_source``. Nothing here imports torch or transformers at module import.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

log = logging.getLogger("skald.llm")

ChatMessage = dict[str, str]

#: Language-model backends (``text`` is the pass-through and needs no generator).
LLM_BACKENDS = ("openai", "transformers")


class LlmError(Exception):
    """A generation could not start or broke off. ``kind`` is the ``wire.Error`` kind:
    ``model_unavailable`` (cannot load / reach the model) or ``generation_failed``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class CancelToken:
    """Set once, from any thread; ``on_cancel`` callbacks run at that moment (or at once if
    already set). Callbacks must be quick and must not raise (exceptions are logged)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("cancel callback failed")

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def link(self, parent: CancelToken) -> CancelToken:
        """Cancel this token when ``parent`` is cancelled; returns ``self``."""
        parent.on_cancel(self.cancel)
        return self


class TextGenerator(Protocol):
    """What the text actors drive. One generation at a time per instance."""

    name: str
    #: True when ``continue_final=True`` is honoured (the last assistant message is continued).
    continues_assistant: bool

    def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, cancel: CancelToken, *, continue_final: bool = False
    ) -> Iterator[str]: ...

    def prepare(
        self, messages: Sequence[ChatMessage], cancel: CancelToken, *, continue_final: bool = False
    ) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


# ============================================================================ openai


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
        setting: str = "actors.narrative",
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LlmError(
                "model_unavailable",
                f"{setting}.endpoint = {endpoint!r}: must be an http:// or https:// base URL, "
                "e.g. http://127.0.0.1:8000/v1",
            )
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        self.temperature = temperature
        self.timeout_s = timeout_s
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path.rstrip("/") or "") + "/chat/completions"
        self._url = f"{self.endpoint}/chat/completions"
        self._api_key = ""
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise LlmError(
                    "model_unavailable",
                    f"{setting}.api_key_env names {api_key_env}, but that environment variable is not set",
                )
            self._api_key = key
        self._spare: http.client.HTTPConnection | None = None
        self._spare_lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "endpoint": self.endpoint, "model": self.model or "(server default)"}

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout_s, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)

    def prepare(self, messages: Sequence[ChatMessage], cancel: CancelToken, *, continue_final: bool = False) -> None:
        """Open the connection (TCP, TLS) now so the request goes out the moment it is known."""
        conn = self._connect()
        try:
            conn.connect()
        except OSError:
            conn.close()  # the real request reports the error
            return
        with self._spare_lock:
            old, self._spare = self._spare, conn
        if old is not None:
            old.close()

    def _take_connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._spare_lock:
            spare, self._spare = self._spare, None
        return (spare, True) if spare is not None else (self._connect(), False)

    def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, cancel: CancelToken, *, continue_final: bool = False
    ) -> Iterator[str]:
        body: dict[str, Any] = {
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "stream": True,
        }
        if self.model:
            body["model"] = self.model
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if cancel.cancelled:
            return
        conn, reused = self._take_connection()
        cancel.on_cancel(lambda: _abort(conn))
        try:
            try:
                resp = self._request(conn, payload, headers)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused or cancel.cancelled:
                    raise
                # The spare connection went stale (server keep-alive timeout): one fresh try.
                conn.close()
                conn = self._connect()
                cancel.on_cancel(lambda: _abort(conn))
                resp = self._request(conn, payload, headers)
            if resp.status != 200:
                detail = resp.read(2000).decode("utf-8", "replace").strip()
                # 404: wrong endpoint path or unknown model name -- a configuration problem.
                raise LlmError(
                    "model_unavailable" if resp.status == 404 else "generation_failed",
                    f"{self._url} answered HTTP {resp.status} {resp.reason}: {detail[:500]}",
                )
            finished = False
            for data in _sse_data(resp):
                if cancel.cancelled:
                    return
                if data.strip() == "[DONE]":
                    finished = True
                    break
                text, finish_reason = self._delta(data)
                if text:
                    yield text
                if finish_reason:
                    finished = True
            if cancel.cancelled:
                return
            if not finished:
                raise LlmError("generation_failed", f"{self._url}: the stream ended before the completion did")
        except LlmError:
            if cancel.cancelled:
                return
            raise
        except (OSError, http.client.HTTPException) as exc:
            if cancel.cancelled:
                return  # our own shutdown of the socket
            if isinstance(exc, ConnectionRefusedError | socket.gaierror):
                raise LlmError(
                    "model_unavailable",
                    f"cannot reach {self._url}: {exc} (is the server running? see actors.<role>.endpoint)",
                ) from None
            if isinstance(exc, TimeoutError):
                raise LlmError(
                    "generation_failed",
                    f"{self._url}: no data for {self.timeout_s:g} s (actors.<role>.timeout_s)",
                ) from None
            raise LlmError("generation_failed", f"{self._url}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()

    def _request(
        self, conn: http.client.HTTPConnection, payload: bytes, headers: dict[str, str]
    ) -> http.client.HTTPResponse:
        conn.request("POST", self._path, body=payload, headers=headers)
        return conn.getresponse()

    def _delta(self, data: str) -> tuple[str, str]:
        try:
            event = json.loads(data)
        except ValueError:
            raise LlmError("generation_failed", f"{self._url}: not JSON in the stream: {data[:200]!r}") from None
        if not isinstance(event, dict):
            return "", ""
        if event.get("error"):
            err = event["error"]
            message = err.get("message", err) if isinstance(err, dict) else err
            raise LlmError("generation_failed", f"{self._url}: the server reported an error: {message}")
        choices = event.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return "", ""
        delta = choices[0].get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        return (content if isinstance(content, str) else ""), (choices[0].get("finish_reason") or "")

    def close(self) -> None:
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()


def _abort(conn: http.client.HTTPConnection) -> None:
    """Wake a thread blocked reading ``conn`` (from another thread): shut the socket down."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _sse_data(resp: http.client.HTTPResponse) -> Iterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined with newlines)."""
    data: list[str] = []
    while True:
        raw = resp.readline(1 << 20)
        if not raw:
            if data:
                yield "\n".join(data)
            return
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        # ``event:``, ``id:``, ``retry:`` and ``:`` comments carry nothing we use


# ============================================================================ transformers

#: Stands in for the final assistant message while rendering a chat template, so the prompt
#: can be cut right where that message starts (a private-use character no tokenizer emits).
_SENTINEL = "\ue000"


class TransformersGenerator:
    """A local model directory on CPU or GPU; see the module docstring."""

    name = "transformers"
    continues_assistant = True

    def __init__(
        self,
        model_dir: str,
        *,
        device: str = "auto",
        temperature: float = 0.8,
        threads: int = 0,
        setting: str = "actors.narrative",
    ) -> None:
        if not model_dir:
            raise LlmError(
                "model_unavailable", f"{setting}.model is empty: set it to a local model directory (never downloaded)"
            )
        if not os.path.isdir(model_dir) or not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise LlmError(
                "model_unavailable",
                f"{setting}.model = {model_dir!r}: not a model directory (no config.json there); "
                "models are never downloaded, point it at a local copy",
            )
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise LlmError(
                "model_unavailable",
                f"the transformers backend needs torch and transformers ({exc}); pip install skald[llm]",
            ) from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise LlmError("model_unavailable", f"{setting}.device = {device!r}: {exc}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise LlmError("model_unavailable", f"{setting}.device = {device!r}, but CUDA is not available here")
        if threads > 0:
            # Per process (each text actor is one): on a small CPU machine the language model
            # otherwise takes every core from the TTS worker synthesizing the opener.
            torch.set_num_threads(threads)
        self.model_dir = model_dir
        self.temperature = temperature
        # Typed Any: transformers' own annotations are too loose or too strict for mypy here.
        self.tokenizer: Any
        self.model: Any
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype="auto")
        except (OSError, ValueError) as exc:
            raise LlmError("model_unavailable", f"{setting}.model = {model_dir!r}: cannot load: {exc}") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise LlmError(
                "model_unavailable",
                f"{setting}.model = {model_dir!r}: the tokenizer has no chat template; skald prompts chat "
                "(instruction-tuned) models",
            )
        self.model.to(self.device).eval()
        self._torch = torch
        self._prefilled: tuple[list[int], Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_dir,
            "device": str(self.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "threads": self._torch.get_num_threads(),
        }

    def render(self, messages: Sequence[ChatMessage], continue_final: bool) -> str:
        """The prompt text: the chat template with a generation prompt, or (``continue_final``)
        cut right after the last message's content so the model carries on writing it."""
        if not continue_final:
            text: str = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
            return text
        final = messages[-1]
        shown = [*messages[:-1], {**final, "content": _SENTINEL}]
        rendered: str = self.tokenizer.apply_chat_template(shown, tokenize=False)
        cut = rendered.find(_SENTINEL)
        if cut < 0:
            raise LlmError("generation_failed", f"{self.model_dir}: the chat template dropped the assistant message")
        return rendered[:cut] + final["content"]

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def prepare(self, messages: Sequence[ChatMessage], cancel: CancelToken, *, continue_final: bool = False) -> None:
        """Prefill the KV cache of this prompt; a later ``stream`` starting with it reuses it."""
        ids = self._ids(self.render(messages, continue_final))
        if not ids or cancel.cancelled:
            return
        torch = self._torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
        self._prefilled = (ids, out.past_key_values)

    def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, cancel: CancelToken, *, continue_final: bool = False
    ) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        torch = self._torch
        ids = self._ids(self.render(messages, continue_final))
        cache = None
        prefilled, self._prefilled = self._prefilled, None
        if prefilled is not None:
            head, kv = prefilled
            # Reusable only if the new prompt extends the prefilled one by at least one token.
            if len(ids) > len(head) and ids[: len(head)] == head:
                cache = kv
        stop = threading.Event()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                flag = stop.is_set() or cancel.cancelled
                return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)

        def wake() -> None:
            stop.set()
            streamer.text_queue.put(streamer.stop_signal)  # the reader leaves now, not after a step

        failure: list[BaseException] = []
        input_ids = torch.tensor([ids], device=self.device)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": max_tokens,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_Stop()]),
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if cache is not None:
            kwargs["past_key_values"] = cache

        def generate() -> None:
            try:
                self.model.generate(**kwargs)
            except BaseException as exc:  # reported on the reader's side
                failure.append(exc)
                streamer.end()

        if cancel.cancelled:
            return
        thread = threading.Thread(target=generate, name="llm-generate", daemon=True)
        thread.start()
        cancel.on_cancel(wake)
        try:
            for text in streamer:
                if cancel.cancelled or stop.is_set():
                    return
                if text:
                    yield text
        finally:
            stop.set()
            thread.join()
        if failure and not cancel.cancelled:
            exc = failure[0]
            raise LlmError("generation_failed", f"{self.model_dir}: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._prefilled = None


# ============================================================================ factory


def create_generator(role: str, settings: Any) -> TextGenerator:
    """Build the generator for ``actors.<role>`` (``settings``: a ``TextActorSettings``)."""
    setting = f"actors.{role}"
    if settings.backend == "openai":
        return OpenAIChatGenerator(
            settings.endpoint,
            settings.model,
            api_key_env=settings.api_key_env,
            temperature=settings.temperature,
            timeout_s=settings.timeout_s,
            setting=setting,
        )
    if settings.backend == "transformers":
        return TransformersGenerator(
            settings.model,
            device=settings.device,
            temperature=settings.temperature,
            threads=settings.threads,
            setting=setting,
        )
    raise LlmError("model_unavailable", f"{setting}.backend = {settings.backend!r} is not a language-model backend")


# ============================================================================ prompts

DEFAULT_SYSTEM_PROMPT = (
    "You are the narrator of an interactive story told aloud to the players. Write vivid, concrete "
    "prose in the second person and present tense, as speech: no headings, lists, markdown, stage "
    "directions or quotation marks around the narration."
)


def _situation(context: str, player_action: str) -> str:
    story = context.strip() or "(the story begins now)"
    return f"Story so far:\n{story}\n\nThe player: {player_action.strip()}"


def prelude_messages(context: str, player_action: str, max_words: int, system_prompt: str = "") -> list[ChatMessage]:
    """The prelude model's prompt: one short spoken opener that reacts to the player at once."""
    return [
        {"role": "system", "content": system_prompt or DEFAULT_SYSTEM_PROMPT},
        {
            "role": "user",
            "content": f"{_situation(context, player_action)}\n\n"
            f"Begin the narrator's reply with one short opening sentence of at most {max_words} words "
            "that reacts to what the player did. Only that sentence.",
        },
    ]


def narrative_messages(
    context: str, player_action: str, prelude: str, system_prompt: str = "", *, continue_final: bool
) -> list[ChatMessage]:
    """The narrative model's prompt: continue the reply the prelude has already begun aloud.

    With ``continue_final`` (a backend that can continue an assistant message) the prelude is
    the start of the assistant's own reply and the model simply carries on writing it -- the
    surest way not to repeat it. Otherwise the prelude is quoted at the very end of the user
    message (so every turn's prompt shares the longest possible prefix, which servers with
    prefix caching reuse) with the instruction to continue from exactly where it stops.
    """
    system = {"role": "system", "content": system_prompt or DEFAULT_SYSTEM_PROMPT}
    situation = _situation(context, player_action)
    if continue_final:
        return [
            system,
            {"role": "user", "content": f"{situation}\n\nNarrate what happens next."},
            {"role": "assistant", "content": prelude.strip()},
        ]
    if not prelude.strip():
        return [system, {"role": "user", "content": f"{situation}\n\nNarrate what happens next."}]
    return [
        system,
        {
            "role": "user",
            "content": f"{situation}\n\nNarrate what happens next. The narration has already begun aloud "
            "with the words below. Continue from exactly where they stop -- mid-sentence if they stop "
            "mid-sentence -- without repeating them or starting over. Begun with:\n" + prelude.strip(),
        },
    ]


# ============================================================================ output shaping

_SENTENCE_END = re.compile(r"[.!?…]['\"”’)\]]*$")
_CLAUSE_END = re.compile(r"[,;:—–]['\"”’)\]]*$")
# C0/C1 controls except tab and newline: never speech (same set wire.validate_text rejects).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """Model output made safe to speak: control characters removed, carriage returns to newlines."""
    return _CONTROL.sub("", text.replace("\r", "\n"))


class OpenerLimiter:
    """Cuts the prelude's token stream into an opener of at most ``max_words`` words.

    Words are released as soon as they are complete (whitespace after them), so speech starts
    on the first words. The opener ends at the first sentence end, or at ``max_words``. To end
    at punctuation when it can, the last ``lookback`` words before the limit are held back
    unless they end a clause; if the limit is reached while words are held and the released
    text ends at punctuation, the held words are dropped (the opener ends at that comma or
    full stop), otherwise they are released (it ends at a word boundary; the narrative then
    completes the sentence). ``text`` is exactly what was released.
    """

    def __init__(self, max_words: int) -> None:
        self.max_words = max(1, max_words)
        self.lookback = min(4, self.max_words // 3)
        self._partial = ""
        self._held: list[str] = []
        self._released: list[str] = []
        self._count = 0
        self.done = False

    @property
    def text(self) -> str:
        return " ".join(self._released)

    def feed(self, delta: str) -> str:
        """Take a text delta; return the text to speak now ("" when nothing is complete)."""
        if self.done:
            return ""
        buf = self._partial + delta
        words = buf.split()
        if buf and not buf[-1].isspace() and words:
            self._partial = words.pop()
        else:
            self._partial = ""
        out: list[str] = []
        for word in words:
            out += self._accept(word)
            if self.done:
                break
        return self._join(out)

    def finish(self) -> str:
        """The stream ended: the last word counts as complete; release what is held."""
        out: list[str] = []
        if not self.done and self._partial:
            out += self._accept(self._partial)
        self._partial = ""
        if not self.done:
            out += self._release_held()
            self.done = True
        return self._join(out)

    def _join(self, words: list[str]) -> str:
        if not words:
            return ""
        # ``_released`` already holds ``words`` at its end: a leading space unless they open it.
        first = len(self._released) == len(words)
        return ("" if first else " ") + " ".join(words)

    def _release_held(self) -> list[str]:
        held, self._held = self._held, []
        self._released += held
        return held

    def _accept(self, word: str) -> list[str]:
        self._count += 1
        sentence_end = bool(_SENTENCE_END.search(word))
        punctuated = sentence_end or bool(_CLAUSE_END.search(word))
        out: list[str] = []
        if self._count <= self.max_words - self.lookback or punctuated:
            self._held.append(word)
            out = self._release_held()
        else:
            self._held.append(word)
        if sentence_end:
            self.done = True
        elif self._count >= self.max_words:
            self.done = True
            ends_at_punctuation = bool(self._released) and bool(
                _SENTENCE_END.search(self._released[-1]) or _CLAUSE_END.search(self._released[-1])
            )
            if self._held and ends_at_punctuation:
                self._held = []
            else:
                out += self._release_held()
        return out


def _word_key(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


class RepeatGuard:
    """Drops a repeat of the prelude at the start of the narrative (the safety net behind the
    prompt). Text is held only while it still matches the prelude word for word, so a
    narrative that does not repeat it is released on its first word that differs."""

    def __init__(self, prelude: str) -> None:
        self._target = [_word_key(w) for w in prelude.split()]
        self._buf = ""
        self.active = bool(self._target)
        self.dropped = ""

    def feed(self, delta: str) -> str:
        if not self.active:
            return delta
        self._buf += delta
        matches = list(re.finditer(r"\S+", self._buf))
        ends_complete = bool(self._buf) and self._buf[-1].isspace()
        for i, match in enumerate(matches):
            complete = ends_complete or i < len(matches) - 1
            key = _word_key(match.group())
            if i >= len(self._target):
                return self._release(match.start())
            target = self._target[i]
            if (complete and key != target) or (not complete and not target.startswith(key)):
                return self._release(0)
        return ""

    def finish(self) -> str:
        """The narrative ended while still matching the prelude: it only repeated it."""
        if self.active:
            self.dropped, self._buf, self.active = self._buf, "", False
        return ""

    def _release(self, start: int) -> str:
        self.dropped = self._buf[:start]
        out, self._buf, self.active = self._buf[start:], "", False
        return out

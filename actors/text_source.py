"""The prelude and narrative actors: where a request's text comes from.

Backends (``actors.<role>.backend``):

- ``text``: no model; the actor answers a ``Turn`` with an error (the supervisor refuses turns
  without models before they get here).
- ``openai`` / ``transformers``: a language model (``actors.text.llm``) writes the text of a
  ``Turn``.

The orchestrator's own text (``Speak`` / ``Append`` / ``End``) never passes through these
actors: the supervisor sends it to the TTS worker as ``TextPiece``s itself (one IPC hop, not
two), whatever the backend. These actors exist for turns.

A ``Turn`` reaches both actors at the same moment (the supervisor forwards it to both):

- the **prelude** actor streams a short opener (``OpenerLimiter``: at most ``max_words``
  words, cut at a word boundary, at punctuation when it can) as ``TextPiece(source="prelude")``
  pieces the moment words are complete, then ``final=True``, then ``PreludeDone`` with the
  full opener (the supervisor relays it to the narrative actor);
- the **narrative** actor starts at once: it builds its prompt and, when ``prefill`` is on,
  gives the backend its head start (transformers: prefill of the prompt's KV cache;
  openai: the connection is opened). When ``PreludeDone`` arrives it generates the
  continuation of the opener (``llm.narrative_messages``), streaming
  ``TextPiece(source="narrative")`` pieces, ending with ``final=True``.

The TTS worker only ever sees ``TextPiece`` messages, in order, ending with one
``final=True`` per source; it alone orders speech (prelude before narrative, see
``TtsWorker._text``). The narrative's wait for ``PreludeDone`` is not ordering but content:
it continues the opener's words. Generation runs on a worker thread; the actor loop (and the IO
thread's eager hook) keep handling ``Cancel`` meanwhile. Guarantee: once a ``Cancel`` has
been handled (the eager hook returned), no ``TextPiece`` or ``PreludeDone`` of that request
is sent -- every send checks the request's cancel token under the lock the cancel takes.
A failing model (unreachable server, missing model dir, HTTP error mid-stream) sends
``Error(kind, actor=role, request_id)`` and then a final (empty) piece, so the request ends
instead of hanging; a failing prelude still sends ``PreludeDone`` (with whatever was spoken)
so the narrative goes on without it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from actors import wire
from actors.runtime import ActorSpec, Send, process_rss_mb, run_actor
from actors.text.llm import (
    LLM_BACKENDS,
    CancelToken,
    LlmError,
    OpenerLimiter,
    RepeatGuard,
    clean,
    create_generator,
    narrative_messages,
    prelude_messages,
)
from config.settings import TextActorSettings

if TYPE_CHECKING:
    from typing import Self

    from actors.text.llm import TextGenerator

log = logging.getLogger("skald.text_source")

PRELUDE, NARRATIVE = wire.TEXT_ROLES
BACKENDS = ("text", *LLM_BACKENDS)
#: PreludeDone messages kept for turns the narrative actor has not seen (yet); bounded.
_EARLY_LIMIT = 256


@dataclass
class TurnJob:
    """One turn on this actor: queued, then generated on the worker thread."""

    turn: wire.Turn
    seq: int
    cancel: CancelToken = field(default_factory=CancelToken)
    prelude_ready: threading.Event = field(default_factory=threading.Event)
    prelude_text: str = ""
    ended: bool = False  # the final piece (and PreludeDone) went out

    @property
    def request_id(self) -> str:
        return self.turn.request_id


class TextSourceActor:
    """Turns ``Turn`` requests into ``TextPiece`` streams for one source (prelude or narrative);
    an ``actors.runtime.Actor``.

    ``send`` is any callable taking a wire message (``ActorIO.send`` in the process, a list's
    ``append`` in tests); it may be called from the worker thread. ``generator`` overrides the
    one built from ``settings`` (tests inject one to share a loaded model).
    """

    def __init__(
        self,
        role: wire.Role,
        backend: str,
        send: Send,
        settings: TextActorSettings | None = None,
        generator: TextGenerator | None = None,
    ) -> None:
        if role not in (PRELUDE, NARRATIVE):
            raise ValueError(f"unknown text source role {role!r}")
        if backend not in BACKENDS:
            raise ValueError(f"{role}: unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
        self.role = role
        self.source = wire.TEXT_SOURCE_OF[role]
        self.backend = backend
        self.settings = settings or TextActorSettings(backend=backend)
        self._send = send
        self.pieces_sent = 0
        self.turns_done = 0
        self.generator: TextGenerator | None = generator
        self.load_error = ""
        if backend != "text" and generator is None:
            try:
                self.generator = create_generator(role, self.settings)
            except LlmError as exc:
                # The actor still starts (speak requests need no model); every turn reports this.
                self.load_error = exc.message
                log.error("%s: %s", role, exc.message)
        self._lock = threading.Lock()  # guards jobs/queue and orders sends against cancels
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, TurnJob] = {}
        self._queue: list[tuple[int, int, str]] = []
        self._seq = itertools.count()
        self._early: dict[str, str] = {}  # PreludeDone seen before its Turn
        # Cancels seen by the eager hook whose ordered copy is still in the inbox: a Turn or
        # Speak handled meanwhile arrived before the cancel and must not start.
        self._pending_all = 0
        self._pending_ids: dict[str, int] = {}
        self._closing = False
        self._worker: threading.Thread | None = None
        self.current: str = ""  # request being generated, for metrics

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def from_spec(cls, spec: ActorSpec, send: Send) -> Self:
        settings: TextActorSettings = getattr(spec.config.actors, spec.role)
        actor = cls(spec.role, settings.backend, send, settings)
        if actor.load_error:
            # Published at startup so the operator sees it before the first turn fails.
            actor.send_error("", "model_unavailable", f"{spec.role}: {actor.load_error}")
        return actor

    def start(self) -> None:
        """Start the generation thread (``run`` does it; in-process tests call it)."""
        if self._worker is None and self.backend != "text":
            self._worker = threading.Thread(target=self._work, name=f"{self.role}-generate", daemon=True)
            self._worker.start()

    def close(self) -> None:
        """Cancel every turn, stop the worker thread, free the model."""
        with self._lock:
            self._closing = True
            jobs = list(self._jobs.values())
            self._wake.notify_all()
        for job in jobs:
            job.cancel.cancel()
        if self._worker is not None:
            self._worker.join(5.0)
            self._worker = None
        if self.generator is not None:
            self.generator.close()

    def ready_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.backend}
        if self.generator is not None:
            info.update(self.generator.describe())
        if self.load_error:
            info["load_error"] = self.load_error
        return info

    # ---------------------------------------------------------------- messages
    def handle(self, msg: wire.Message) -> None:
        """Process one message from the supervisor (also called directly by in-process tests)."""
        if isinstance(msg, wire.Turn):
            self._on_turn(msg)
        elif isinstance(msg, wire.PreludeDone):
            self._on_prelude_done(msg)
        elif isinstance(msg, wire.Cancel):
            self.cancel(msg)
            with self._lock:  # the ordered copy of a cancel the eager hook already applied
                if msg.all:
                    self._pending_all = max(0, self._pending_all - 1)
                elif self._pending_ids.get(msg.request_id, 0) > 1:
                    self._pending_ids[msg.request_id] -= 1
                else:
                    self._pending_ids.pop(msg.request_id, None)

    def on_eager(self, msg: wire.Message) -> None:
        """The IO thread's hook, called the moment a Cancel arrives (before it is queued)."""
        if not isinstance(msg, wire.Cancel):
            return
        with self._lock:
            if msg.all:
                self._pending_all += 1
            else:
                self._pending_ids[msg.request_id] = self._pending_ids.get(msg.request_id, 0) + 1
        self.cancel(msg)

    def _cancelled_early(self, request_id: str) -> bool:
        """A cancel for this request (or all) overtook it in the inbox: drop it unstarted."""
        with self._lock:
            return self._pending_all > 0 or request_id in self._pending_ids

    def cancel(self, msg: wire.Cancel) -> None:
        """Stop the request's generation (or all): after this returns nothing more of it is sent.
        Called by the IO thread's eager hook the moment the Cancel arrives, and again in order."""
        with self._lock:
            if msg.all:
                doomed = list(self._jobs.values())
                self._early.clear()
            else:
                job = self._jobs.get(msg.request_id)
                doomed = [job] if job is not None else []
                self._early.pop(msg.request_id, None)
            # Set under the lock that every send takes: a send in flight either went out before
            # this or sees the flag. The token's callbacks (shut the HTTP socket down, wake the
            # streamer, wake a narrative waiting for its prelude) are quick and take no lock of ours.
            for job in doomed:
                job.cancel.cancel()
                self._jobs.pop(job.request_id, None)
            self._queue = [item for item in self._queue if item[2] in self._jobs]
            heapq.heapify(self._queue)

    def _on_turn(self, msg: wire.Turn) -> None:
        if self._cancelled_early(msg.request_id):
            return
        if self.backend == "text":
            # The supervisor refuses turns without language models; answer rather than hang.
            self.send_error(msg.request_id, "bad_request", f"actors.{self.role}.backend = 'text' cannot write a turn")
            self._piece(msg.request_id, "", final=True)
            if self.role == PRELUDE:
                self._send(wire.PreludeDone(request_id=msg.request_id, text=""))
            return
        job = TurnJob(turn=msg, seq=next(self._seq))
        job.cancel.on_cancel(job.prelude_ready.set)  # a narrative waiting for its prelude wakes up
        with self._lock:
            early = self._early.pop(msg.request_id, None)
            if early is not None:
                job.prelude_text = early
                job.prelude_ready.set()
            self._jobs[msg.request_id] = job
            heapq.heappush(self._queue, (-msg.priority, job.seq, msg.request_id))
            self._wake.notify()

    def _on_prelude_done(self, msg: wire.PreludeDone) -> None:
        if self.role != NARRATIVE:
            return
        with self._lock:
            job = self._jobs.get(msg.request_id)
            if job is None:
                if len(self._early) >= _EARLY_LIMIT:
                    self._early.pop(next(iter(self._early)))
                self._early[msg.request_id] = msg.text
                return
            job.prelude_text = msg.text
        job.prelude_ready.set()

    # ---------------------------------------------------------------- sending
    def _piece(self, request_id: str, text: str, final: bool) -> None:
        self.pieces_sent += 1
        self._send(wire.TextPiece(request_id=request_id, source=self.source, text=text, final=final))

    def _emit(self, job: TurnJob, text: str, final: bool = False) -> bool:
        """Send a piece of a turn unless it was cancelled; False once it is."""
        with self._lock:
            if job.cancel.cancelled or job.ended:
                return False
            self._piece(job.request_id, text, final)
            if final:
                job.ended = True
                if self.role == PRELUDE:
                    self._send(wire.PreludeDone(request_id=job.request_id, text=job.prelude_text))
            return True

    def send_error(self, request_id: str, kind: wire.ErrorKind, message: str) -> None:
        self._send(wire.Error(kind=kind, message=message, actor=self.role, request_id=request_id))

    # ---------------------------------------------------------------- generation (worker thread)
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._wake.wait(0.5)
                if self._closing:
                    return
                _prio, _seq, request_id = heapq.heappop(self._queue)
                job = self._jobs.get(request_id)
            if job is None or job.cancel.cancelled:
                continue
            self.current = request_id
            try:
                self._run_job(job)
            finally:
                self.current = ""
                with self._lock:
                    if self._jobs.get(request_id) is job:
                        del self._jobs[request_id]

    def _run_job(self, job: TurnJob) -> None:
        try:
            if self.generator is None:
                raise LlmError("model_unavailable", self.load_error or f"actors.{self.role}: no model loaded")
            if self.role == PRELUDE:
                self._prelude(job, self.generator)
            else:
                self._narrative(job, self.generator)
            self.turns_done += 1
        except LlmError as exc:
            self._fail(job, cast("wire.ErrorKind", exc.kind), exc.message)  # llm raises only its two kinds
        except Exception as exc:  # a bug must end the request, not the actor
            log.exception("%s: turn %s failed", self.role, job.request_id, extra={"request_id": job.request_id})
            self._fail(job, "generation_failed", f"{type(exc).__name__}: {exc}")

    def _fail(self, job: TurnJob, kind: wire.ErrorKind, message: str) -> None:
        with self._lock:
            if job.cancel.cancelled or job.ended:
                return
            log.error("%s: turn %s: %s", self.role, job.request_id, message, extra={"request_id": job.request_id})
            self.send_error(job.request_id, kind, f"{self.role}: {message}")
        self._emit(job, "", final=True)

    def _prelude(self, job: TurnJob, generator: TextGenerator) -> None:
        s = self.settings
        turn = job.turn
        messages = prelude_messages(turn.context, turn.player_action, s.max_words, s.system_prompt)
        limiter = OpenerLimiter(s.max_words)
        for delta in generator.stream(messages, s.max_tokens, job.cancel):
            out = limiter.feed(clean(delta))
            job.prelude_text = limiter.text
            if out and not self._emit(job, out):
                return
            if limiter.done:
                break  # leaving the loop stops the generation
        out = limiter.finish()
        job.prelude_text = limiter.text
        if out and not self._emit(job, out):
            return
        if self._emit(job, "", final=True):
            log.info(
                "%s: turn %s opener (%d words): %r",
                self.role,
                job.request_id,
                len(job.prelude_text.split()),
                job.prelude_text,
                extra={"request_id": job.request_id},
            )

    def _narrative(self, job: TurnJob, generator: TextGenerator) -> None:
        s = self.settings
        turn = job.turn
        continue_final = generator.continues_assistant
        if s.prefill and not job.prelude_ready.is_set():
            # The head start: everything of the prompt that does not depend on the prelude.
            head = narrative_messages(
                turn.context, turn.player_action, "", s.system_prompt, continue_final=continue_final
            )
            try:
                generator.prepare(head, job.cancel, continue_final=continue_final)
            except Exception as exc:  # only a head start: the generation proper reports real failures
                log.warning(
                    "%s: prefill of %s failed (the turn goes on): %s",
                    self.role,
                    job.request_id,
                    exc,
                    extra={"request_id": job.request_id},
                )
        job.prelude_ready.wait()  # set by PreludeDone, or by the cancel
        if job.cancel.cancelled:
            return
        messages = narrative_messages(
            turn.context, turn.player_action, job.prelude_text, s.system_prompt, continue_final=continue_final
        )
        guard = RepeatGuard(job.prelude_text)
        started = False
        for delta in generator.stream(messages, s.max_tokens, job.cancel, continue_final=continue_final):
            text = guard.feed(clean(delta))
            if not started:
                text = text.lstrip()  # the worker puts the space at the seam
                started = bool(text)
            if text and not self._emit(job, text):
                return
        guard.finish()
        if guard.dropped:
            log.info(
                "%s: dropped a repeat of the prelude in %s: %r",
                self.role,
                job.request_id,
                guard.dropped,
                extra={"request_id": job.request_id},
            )
        self._emit(job, "", final=True)

    # ---------------------------------------------------------------- loop
    def metrics(self) -> dict[str, Any]:
        with self._lock:
            queued = len(self._queue)
        return {
            "pieces_sent": self.pieces_sent,
            "turns_done": self.turns_done,
            "turns_queued": queued,
            "generating": self.current,
            "rss_mb": process_rss_mb(),
        }

    def run(self, stop: threading.Event, inbox: queue.Queue[wire.Message]) -> None:
        self.start()
        while not stop.is_set():
            try:
                msg = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(msg, wire.Shutdown):
                return
            self.handle(msg)


def run_prelude_process(spec: ActorSpec) -> None:
    """Entry point of the prelude actor process."""
    run_actor(spec, TextSourceActor)


def run_narrative_process(spec: ActorSpec) -> None:
    """Entry point of the narrative actor process."""
    run_actor(spec, TextSourceActor)

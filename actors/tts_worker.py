"""The TTS worker: text pieces in, chunks planned, PCM pushed into the shared-memory ring.

Flow per request::

    OpenRequest ──┐
    TextPiece* ───┴─> SemanticChunker ──ChunkPlan──> queue ──> engine.synthesize ──blocks──> PcmRing
                                                                                    └─> Segment (to consumer)

* Prelude text is spoken before narrative text of the same request; narrative pieces that
  arrive early wait until the prelude's final piece.
* Chunks are served by (priority desc, request arrival, chunk index), so the chunk needed next
  always goes first. The worker synthesizes chunk N+1 while the consumer plays chunk N:
  nothing here waits for playback except the ring's overfill guard.
* Every pushed block is announced with a ``Segment`` *after* it is in the ring; the consumer
  plays only announced frames, so it can never play audio of a request it has not heard of.
* Cancel is eager: the IO thread sets the current chunk's cancel token at once (the engine
  stops between blocks); the ordered copy of the message then drops the request's queue.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors import wire
from actors.chunker import ChunkerConfig, ChunkPlan, SemanticChunker, SpeakingRate
from actors.engines.base import CancelToken, EngineError, TtsEngine, VoiceInfo
from actors.runtime import ActorIO, ActorSpec, process_rss_mb, run_actor
from config.settings import Settings
from shm import PcmRing, PeerDeadError

log = logging.getLogger("skald.tts_worker")

PRELUDE, NARRATIVE = "prelude", "narrative"


@dataclass
class RequestState:
    """Everything the worker holds for one request."""

    request_id: str
    voice: str
    priority: int
    t_accepted: float
    arrival: int
    chunker: SemanticChunker
    has_prelude: bool
    prelude_done: bool = False
    narrative_started: bool = False
    narrative_done: bool = False
    held_narrative: list[wire.TextPiece] = field(default_factory=list)
    next_index: int = 0
    queued: int = 0  # chunks planned but not yet synthesized
    frames_pushed: int = 0
    cancel: CancelToken = field(default_factory=CancelToken)

    @property
    def text_complete(self) -> bool:
        return self.narrative_done and (self.prelude_done or not self.has_prelude)


class TtsWorker:
    """The worker's logic; runs in its own process via ``run_tts_worker_process`` or in-process
    in tests (``send`` is any callable taking a wire message)."""

    def __init__(self, settings: Settings, engine: TtsEngine, ring: PcmRing, send: Any) -> None:
        self.settings = settings
        self.engine = engine
        self.ring = ring
        self.send = send
        self.default_voice = settings.tts.voice
        self.chunker_config = ChunkerConfig(
            target_min_s=settings.chunker.target_min_s,
            target_max_s=settings.chunker.target_max_s,
            hard_min_s=settings.chunker.hard_min_s,
            hard_max_s=settings.chunker.hard_max_s,
            first_chunk_s=settings.chunker.first_chunk_s,
            first_chunk_max_s=settings.chunker.first_chunk_max_s,
        )
        self.voices: dict[str, VoiceInfo] = {}
        self.rates: dict[str, SpeakingRate] = {}
        self.requests: dict[str, RequestState] = {}
        self._queue: list[tuple[int, int, int, ChunkPlan, str]] = []
        self._arrivals = itertools.count()
        self._current: RequestState | None = None
        self._lock = threading.Lock()  # guards _current against the eager cancel hook
        self.chunks_synthesized = 0
        self.load_voice(self.default_voice)

    # ---------------------------------------------------------------- voices
    def load_voice(self, voice: str) -> VoiceInfo:
        voice = voice or self.default_voice
        info = self.voices.get(voice)
        if info is None:
            info = self.engine.load_voice(voice)
            if info.sample_rate != self.ring.sample_rate:
                raise EngineError(
                    f"voice {voice!r} is {info.sample_rate} Hz but the ring runs at "
                    f"{self.ring.sample_rate} Hz; voices of one server must share a rate"
                )
            self.voices[voice] = info
            self.rates[voice] = SpeakingRate(chars_per_s=info.chars_per_s)
        return info

    def ready_info(self) -> dict[str, Any]:
        info = self.voices[self.default_voice]
        return {
            "engine": self.engine.name,
            "voice": info.name,
            "sample_rate": info.sample_rate,
            "chars_per_s": round(info.chars_per_s, 2),
        }

    # ---------------------------------------------------------------- messages
    def eager(self, msg: wire.Message) -> None:
        """Called on the IO thread the moment a Cancel arrives: stop the chunk in progress."""
        if not isinstance(msg, wire.Cancel):
            return
        with self._lock:
            current = self._current
            if current is not None and (msg.all or msg.request_id == current.request_id):
                current.cancel.cancel()

    def handle(self, msg: wire.Message) -> None:
        if isinstance(msg, wire.OpenRequest):
            self._open(msg)
        elif isinstance(msg, wire.TextPiece):
            self._text(msg)
        elif isinstance(msg, wire.Cancel):
            self._cancel(msg)

    def _open(self, msg: wire.OpenRequest) -> None:
        voice = msg.voice or self.default_voice
        try:
            self.load_voice(voice)
        except EngineError as exc:
            self.send(wire.Error(kind="bad_request", message=str(exc), actor="tts_worker", request_id=msg.request_id))
            self.send(wire.RequestFinished(request_id=msg.request_id, status="failed", reason=str(exc)))
            return
        self.requests[msg.request_id] = RequestState(
            request_id=msg.request_id,
            voice=voice,
            priority=msg.priority,
            t_accepted=msg.t_accepted,
            arrival=next(self._arrivals),
            chunker=SemanticChunker(self.rates[voice], self.chunker_config),
            has_prelude=msg.has_prelude,
        )

    def _text(self, piece: wire.TextPiece) -> None:
        req = self.requests.get(piece.request_id)
        if req is None or req.cancel.cancelled:
            return  # cancelled or unknown: late text is dropped on purpose
        if piece.source == NARRATIVE and req.has_prelude and not req.prelude_done:
            req.held_narrative.append(piece)
            return
        self._feed(req, piece)
        if piece.source == PRELUDE and piece.final:
            held, req.held_narrative = req.held_narrative, []
            for early in held:
                self._feed(req, early)

    def _feed(self, req: RequestState, piece: wire.TextPiece) -> None:
        text = piece.text
        if piece.source == NARRATIVE and req.has_prelude and not req.narrative_started and text:
            req.narrative_started = True
            text = " " + text  # the prelude may end without a space: "done." + "The" must not merge
        plans = req.chunker.feed(text) if text else []
        if piece.final:
            if piece.source == PRELUDE:
                req.prelude_done = True
            else:
                req.narrative_done = True
            if req.text_complete:
                plans += req.chunker.finish()
        for plan in plans:
            self._enqueue(req, plan)
        if req.text_complete and req.queued == 0 and self._current is not req:
            self._finish_request(req)

    def _enqueue(self, req: RequestState, plan: ChunkPlan) -> None:
        index = req.next_index
        req.next_index += 1
        req.queued += 1
        heapq.heappush(self._queue, (-req.priority, req.arrival, index, plan, req.request_id))
        self.send(wire.ChunkPlanned(request_id=req.request_id, index=index, text=plan.text, est_s=plan.est_s))

    def _cancel(self, msg: wire.Cancel) -> None:
        doomed = list(self.requests) if msg.all else [msg.request_id]
        for request_id in doomed:
            req = self.requests.pop(request_id, None)
            if req is not None:
                req.cancel.cancel()
                req.chunker.reset()
        self._queue = [item for item in self._queue if item[4] in self.requests]
        heapq.heapify(self._queue)

    def _finish_request(self, req: RequestState) -> None:
        """All of the request's audio is in the ring: tell the consumer where it ends."""
        self.requests.pop(req.request_id, None)
        end = self.ring.write_index
        self.send(
            wire.Segment(
                request_id=req.request_id,
                index=req.next_index,
                start=end,
                end=end,
                last=True,
                t_accepted=req.t_accepted,
            )
        )

    # ---------------------------------------------------------------- synthesis
    @property
    def has_work(self) -> bool:
        return bool(self._queue)

    def synthesize_next(self, stop: threading.Event | None = None) -> None:
        """Synthesize the most urgent queued chunk and push it into the ring."""
        _prio, _arrival, index, plan, request_id = heapq.heappop(self._queue)
        req = self.requests.get(request_id)
        if req is None:
            return
        with self._lock:
            self._current = req
        started = time.perf_counter()
        frames = 0
        failed = ""
        try:
            for block in self.engine.synthesize(plan.text, req.voice, req.cancel):
                if req.cancel.cancelled:
                    break
                start = self.ring.write_index
                if not self._push_all(block, req.cancel, stop):
                    break
                frames += len(block)
                self.send(
                    wire.Segment(
                        request_id=request_id,
                        index=index,
                        start=start,
                        end=start + len(block),
                        t_accepted=req.t_accepted,
                    )
                )
        except Exception as exc:  # an engine failure is reported as data, the worker lives on
            failed = f"{type(exc).__name__}: {exc}"
            log.exception("chunk %d of %s failed", index, request_id)
        finally:
            with self._lock:
                self._current = None
        synth_ms = (time.perf_counter() - started) * 1000.0
        req.queued -= 1
        req.frames_pushed += frames
        if req.cancel.cancelled:
            return
        if failed:
            self.send(wire.Error(kind="synthesis_failed", message=failed, actor="tts_worker", request_id=request_id))
        dur_s = frames / self.ring.sample_rate
        self.chunks_synthesized += 1
        self.rates[req.voice].observe(plan.text, dur_s)
        self.send(
            wire.ChunkSynthesized(
                request_id=request_id, index=index, dur_s=dur_s, synth_ms=synth_ms, engine=self.engine.name
            )
        )
        if req.text_complete and req.queued == 0:
            self._finish_request(req)

    def _push_all(self, block: np.ndarray, cancel: CancelToken, stop: threading.Event | None) -> bool:
        """Push every frame of ``block``, waiting on the overfill guard; False if cancelled."""
        offset = 0
        while offset < len(block):
            offset += self.ring.push(block[offset:])
            if offset < len(block):
                try:
                    ok = self.ring.wait_for_space(
                        min(len(block) - offset, 4096),
                        timeout=0.05,
                        cancel=lambda: cancel.cancelled or (stop is not None and stop.is_set()),
                    )
                except PeerDeadError:
                    # The consumer died: the supervisor fails this request and restarts it.
                    # Keeping the rest of this chunk would only replay stale audio later.
                    cancel.cancel()
                    return False
                if not ok and (cancel.cancelled or (stop is not None and stop.is_set())):
                    return False
        return True

    def metrics(self) -> dict[str, Any]:
        return {
            "queued_chunks": len(self._queue),
            "open_requests": len(self.requests),
            "chunks_synthesized": self.chunks_synthesized,
            "rss_mb": process_rss_mb(),
            "chars_per_s": {v: round(r.chars_per_s, 2) for v, r in self.rates.items()},
        }

    def run(self, stop: threading.Event, inbox: queue.Queue[wire.Message]) -> None:
        last_metrics = 0.0
        while not stop.is_set():
            # Drain every pending message before choosing the next chunk, so a cancel or a
            # higher-priority request that arrived during the last synthesis is honoured.
            try:
                msg = inbox.get(timeout=0 if self.has_work else 0.05)
                if isinstance(msg, wire.Shutdown):
                    return
                self.handle(msg)
                continue
            except queue.Empty:
                pass
            if self.has_work:
                self.synthesize_next(stop)
            now = time.monotonic()
            if now - last_metrics > 1.0:
                last_metrics = now
                self.send(wire.Metrics(role="tts_worker", values=self.metrics()))


class _TtsWorkerProcess:
    def __init__(self, spec: ActorSpec, io: ActorIO) -> None:
        from actors.engines import create_engine

        settings = spec.config
        self.io = io
        self.ring = PcmRing.attach(spec.ring_name, "producer")
        self.ring.start_heartbeat()
        self.worker = TtsWorker(settings, create_engine(settings.tts.engine, settings), self.ring, io.send)

    def ready_info(self) -> dict[str, Any]:
        return self.worker.ready_info()

    def run(self, stop: threading.Event) -> None:
        self.worker.run(stop, self.io.inbox)

    def close(self) -> None:
        self.worker.engine.close()
        self.ring.close()


def _eager(actor: Any, msg: wire.Message) -> None:
    actor.worker.eager(msg)


def run_tts_worker_process(spec: ActorSpec) -> None:
    """Entry point of the TTS worker process."""
    run_actor(spec, _TtsWorkerProcess, eager=_eager)

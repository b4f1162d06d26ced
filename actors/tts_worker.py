"""The TTS worker: text pieces in, chunks planned, PCM pushed into the shared-memory ring.

Flow per request::

    OpenRequest ──┐
    TextPiece* ───┴─> SemanticChunker ──ChunkPlan──> queue ──> synthesis threads ──blocks──┐
                                                                                         │
          PcmRing <── ChunkJoiner (DC, trim, crossfade) <── resample to the ring rate <──┘
             └─> Segment (to the consumer), ChunkPlanned / ChunkSynthesized / Error (events)

* **Order.** Chunks are served by (priority desc, request arrival, chunk index), so the chunk
  needed next (N+1) always outranks look-ahead (N+2, ...) and an urgent request's chunks go
  before queued ones, starting at the next chunk seam. Prelude text is spoken before narrative
  text of the same request.
* **Parallel streams.** With ``parallel_streams`` = 2-3 that many chunks are synthesized at
  once (each call on its own CUDA stream in the XTTS engine). Their audio still enters the ring
  strictly in dispatch order: the head chunk streams straight through, the others are held in
  memory until it is done. 0/1 = one chunk at a time.
* **Main thread = dispatcher + pusher.** It never blocks on an engine: it takes messages,
  dispatches chunks to the synthesis threads, and moves finished blocks through the joiner
  into the ring. Every pushed block is announced with a ``Segment`` *after* it is in the
  ring; the consumer plays only announced frames.
* **Joining.** Each request has a ``ChunkJoiner``: DC removal, silence trimmed to a natural
  pause for the boundary, and an equal-power crossfade at each seam. It holds back only the
  crossfade length; if the next chunk is late (the ring runs low) or another request's audio
  comes next, the held tail is released with a short fade-out, so nothing is lost.
* **Cancel** is eager: the IO thread sets the request's cancel token at once (engines stop
  between blocks or generated tokens); the ordered copy of the message then drops the
  request's queue, its in-flight chunks and its held audio.
* **Degradation.** When the main engine cannot be loaded (no CUDA, model files missing) or a
  chunk fails twice, an ``Error`` event says so and — with ``tts.fallback_engine`` set — the
  fallback engine (Piper) speaks the rest of the request, so the listener hears no hole.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from actors import wire
from actors.audio.joiner import ChunkJoiner, ChunkSpan
from actors.audio.resample import Resampler
from actors.gpu.hooks import GpuControlHooks, GpuHooks
from actors.runtime import (
    ActorSpec,
    HeapTrimmer,
    Send,
    hold_freed_heap,
    process_rss_mb,
    run_actor,
    set_process_nice,
)
from actors.text.chunker import ChunkerConfig, ChunkPlan, SemanticChunker, SpeakingRate
from actors.text.normalize import Lexicon
from actors.text.punctuation import pause_kind
from actors.tts.base import CancelToken, EngineError, TtsEngine, VoiceInfo
from config.settings import Settings
from shm import PcmRing, PeerDeadError

if TYPE_CHECKING:
    from typing import Self

    from actors.gpu.tiers import ResolvedGpuConfig

log = logging.getLogger("skald.tts_worker")

PRELUDE, NARRATIVE = wire.TEXT_ROLES
# Release a held crossfade tail when less than this much audio is left ahead of the speaker.
RELEASE_AHEAD_S = 0.12


class FaultPlan:
    """Failure injection for tests and drills (``SKALD_FAULT_INJECT``), never on by default.

    ``load`` — the main engine fails to load; ``chunk=I`` — synthesizing chunk I (any request)
    on the main engine raises, ``times=N`` times (default 2: the retry fails too); ``after=B`` —
    it raises only after B of the chunk's blocks went out (a failure mid-chunk: what was heard
    is closed with a fade and the chunk is spoken again). Combine with commas:
    ``chunk=1,times=2``. The failure is a real exception raised in the engine call path, handled
    by the same code as any engine failure.
    """

    def __init__(self, spec: str) -> None:
        self.fail_load = False
        self.chunk = -1
        self.times = 2
        self.after_blocks = 0
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, _, value = part.partition("=")
            if key == "load":
                self.fail_load = True
            elif key == "chunk":
                self.chunk = int(value)
            elif key == "times":
                self.times = int(value)
            elif key == "after":
                self.after_blocks = int(value)
            else:
                raise ValueError(f"SKALD_FAULT_INJECT: unknown fault {part!r} (known: load, chunk=I, times=N, after=B)")
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> FaultPlan | None:
        spec = os.environ.get("SKALD_FAULT_INJECT", "")
        return cls(spec) if spec else None

    def check_chunk(self, index: int, blocks_out: int = 0) -> None:
        """Raise if chunk ``index`` is to fail now, ``blocks_out`` of its blocks having gone out."""
        with self._lock:
            if index == self.chunk and self.times > 0 and blocks_out == self.after_blocks:
                self.times -= 1
                raise EngineError(f"injected fault (SKALD_FAULT_INJECT) in chunk {index} after {blocks_out} blocks")


@dataclass
class RequestState:
    """Everything the worker holds for one request."""

    request_id: str
    voice: str
    priority: int
    t_accepted: float
    arrival: int
    chunker: SemanticChunker
    joiner: ChunkJoiner
    has_prelude: bool
    prelude_done: bool = False
    narrative_started: bool = False
    narrative_done: bool = False
    held_narrative: list[wire.TextPiece] = field(default_factory=list)
    next_index: int = 0
    queued: int = 0  # chunks planned but not yet fully pushed
    frames_pushed: int = 0
    last_pushed_index: int = 0  # the chunk whose audio (or held tail) went into the ring last
    speed: float = 1.0  # speaking rate handed to the engine
    degraded: bool = False  # the main engine failed: the fallback speaks the rest
    bad_voices: set[str] = field(default_factory=set)
    cancel: CancelToken = field(default_factory=CancelToken)

    @property
    def text_complete(self) -> bool:
        return self.narrative_done and (self.prelude_done or not self.has_prelude)


class ChunkDone:
    """Marker in a job's block queue: the chunk's synthesis is over (its audio, or its failure)."""


class RestartChunk:
    """Marker in a job's block queue: an attempt failed after part of the chunk was heard; the
    pusher closes the chunk there and the next attempt speaks it again from its start."""


_DONE = ChunkDone()
_RESTART = RestartChunk()
#: What a synthesis thread puts in ``Job.blocks``: audio at the ring rate, or a marker.
BlockItem = np.ndarray | ChunkDone | RestartChunk


@dataclass
class Job:
    """One chunk in flight: synthesized on a thread, pushed by the main thread in ``seq`` order."""

    seq: int
    req: RequestState
    index: int
    plan: ChunkPlan
    engine: TtsEngine | None = None  # chosen at dispatch (main thread)
    voice: str = ""
    blocks: queue.SimpleQueue[BlockItem] = field(default_factory=queue.SimpleQueue)
    started: float = field(default_factory=time.perf_counter)
    # Engine compute, measured on the synthesis thread (its own clock), apart from the pusher's
    # wait for ring space: a paced narration waits on the overfill guard most of the time, and
    # that wait is no part of what the engine costs.
    compute_s: float = 0.0
    wait_s: float = 0.0  # the pusher's wait for ring space (backpressure) while pushing this chunk
    engine_used: str = ""
    frames: int = 0  # frames pushed to the ring (after joining)
    failed: str = ""
    opened: bool = False  # the joiner's chunk is open
    replay: bool = False  # already-joined audio pushed again after an urgent request (preemption)


@dataclass
class PushedAudio:
    """Audio in the ring that the speaker has not reached yet, kept so that an urgent request can
    go first at the next chunk seam and this audio be pushed again after it (preemption)."""

    req: RequestState
    index: int
    plan: ChunkPlan
    start: int
    end: int
    audio: list[np.ndarray]


# An urgent request preempts at the first chunk seam at least this far ahead of the speaker, so
# the consumer has the skip before it gets there.
PREEMPT_MARGIN_S = 0.15


class TtsWorker:
    """The worker's logic, an ``actors.runtime.Actor``; runs in its own process via
    ``run_tts_worker_process`` (built by ``from_spec``) or in-process in tests (``send`` is any
    thread-safe callable taking a wire message).

    ``engine`` is the main engine, or None when it could not be loaded (``engine_error`` says
    why); ``fallback`` speaks for it then, and after a chunk fails twice.
    """

    def __init__(
        self,
        settings: Settings,
        engine: TtsEngine | None,
        ring: PcmRing,
        send: Send,
        *,
        fallback: TtsEngine | None = None,
        engine_error: str = "",
        parallel_streams: int = 1,
        gpu: GpuHooks | None = None,
        faults: FaultPlan | None = None,
        role: wire.Role = wire.Role.TTS_WORKER,
    ) -> None:
        if engine is None and fallback is None:
            raise EngineError(engine_error or "no TTS engine")
        self.settings = settings
        self.role = role
        # The render worker serves its requests round-robin, chunk by chunk, so every concurrent
        # render gets its first chunk early; the stage serves them in arrival order (one voice).
        self.fair = role == wire.Role.TTS_RENDER
        self.engine = engine
        self.fallback = fallback
        self.engine_error = engine_error
        self.ring = ring
        self.send = send
        self.gpu = gpu or GpuHooks()
        self.faults = faults
        self.parallel_streams = max(1, parallel_streams)
        self.chunker_config = ChunkerConfig.from_settings(settings.chunker)
        self.streaming_chunker_config = ChunkerConfig.from_settings(settings.chunker, streaming=True)
        self.voices: dict[str, VoiceInfo] = {}
        self.voice_engine: dict[str, TtsEngine] = {}
        self.rates: dict[str, SpeakingRate] = {}
        # A campaign's words (chunker.lexicon): read now, so a bad file fails at start with its name.
        self.lexicon = Lexicon.load(settings.chunker.lexicon) if settings.chunker.lexicon else None
        self.requests: dict[str, RequestState] = {}
        self._queue: list[tuple[int, int, int, ChunkPlan, str]] = []
        self._arrivals = itertools.count()
        self._seqs = itertools.count()
        self._inflight: list[Job] = []  # dispatch order = push order
        self._pool = ThreadPoolExecutor(max_workers=self.parallel_streams, thread_name_prefix="synth")
        self._lock = threading.Lock()  # guards _inflight against the eager cancel hook
        self._last_pushed: RequestState | None = None  # whose joiner may hold a tail
        self._ahead: list[PushedAudio] = []  # pushed, not yet played: what preemption can defer
        self._replays: dict[tuple[str, int], tuple[ChunkPlan, list[np.ndarray]]] = {}
        self._pushing: Job | None = None
        self.preemptions = 0
        self.restarts = 0  # chunks closed part-way and spoken again after a failed attempt
        self._next_dispatch = 0.0
        self.chunks_synthesized = 0
        self.fallback_chunks = 0
        self.compute_s_total = 0.0  # engine compute of every chunk (``Job.compute_s``)
        self.wait_s_total = 0.0  # backpressure: time the pusher waited for ring space
        self._owned: list[Any] = []  # what close() releases besides the pool (engines, ring: from_spec)
        self._degradations: list[str] = []  # engine degradation reasons not yet sent as events
        self._running = False
        # Called only where the worker waits anyway (see HeapTrimmer), once a minute: each trim
        # makes the next chunks fault their buffers in again (every 5 s and at each request's end:
        # pipeline RTF 1.13 x raw Piper's; once a minute, in ring waits only: 1.08 x; one run each).
        self.heap = HeapTrimmer(interval_s=60.0, release=self._release_engine_memory)
        self.default_voice = main_voice(settings) if engine is not None else settings.tts.fallback_voice
        self.load_voice(self.default_voice)
        if fallback is not None:
            self.load_voice(settings.tts.fallback_voice)  # warm: a failure mid-request must not wait for it

    def _release_engine_memory(self) -> None:
        """The engines' arenas back to their allocator, before the heap trim hands it to the OS."""
        for engine in (self.engine, self.fallback):
            if engine is None:
                continue
            try:
                engine.release_memory()
            except Exception:  # an engine that cannot shrink keeps its memory; the narration goes on
                log.warning("%s: releasing memory failed", engine.name, exc_info=True)

    # ---------------------------------------------------------------- voices
    @property
    def engine_name(self) -> str:
        return self.engine.name if self.engine is not None else (self.fallback.name if self.fallback else "")

    def load_voice(self, voice: str) -> VoiceInfo:
        """Load ``voice`` from the main engine, else from the fallback (a Piper voice named in an
        XTTS request); ``EngineError`` names what is missing."""
        voice = voice or self.default_voice
        info = self.voices.get(voice)
        if info is not None:
            return info
        errors = []
        for engine in (self.engine, self.fallback):
            if engine is None:
                continue
            try:
                info = engine.load_voice(voice)
            except EngineError as exc:
                errors.append(f"{engine.name}: {exc}")
                continue
            self.voices[voice] = info
            self.voice_engine[voice] = engine
            self.rates[voice] = SpeakingRate(chars_per_s=info.chars_per_s)
            self._report_degradations()
            return info
        raise EngineError(f"unknown voice {voice!r} ({'; '.join(errors)})")

    def _report_degradations(self) -> None:
        """An engine that spoke a voice in a lesser mode (streaming Piper that fell back to
        whole-chunk Piper) says why: an ``engine_unavailable`` event each, once the loop runs."""
        for engine in (self.engine, self.fallback):
            take = getattr(engine, "take_degradations", None)
            if take is not None:
                self._degradations.extend(take())
        if self._running:
            pending, self._degradations = self._degradations, []
            for reason in pending:
                self.send(wire.Error(kind="engine_unavailable", message=reason, actor=wire.Role.TTS_WORKER))

    def _fresh_lexicon(self) -> Lexicon | None:
        """The lexicon, re-read if its file changed since (a GM edits it while skald runs)."""
        if self.lexicon is not None:
            try:
                self.lexicon.reload()
            except ValueError as exc:
                log.warning("lexicon not reloaded, keeping its previous words: %s", exc)
        return self.lexicon

    def _rate_for(self, voice: str) -> SpeakingRate | None:
        try:
            self.load_voice(voice)
        except EngineError:
            return None  # the chunker keeps the current rate; the chunk reports the error
        return self.rates[voice]

    def ready_info(self) -> dict[str, Any]:
        info = self.voices[self.default_voice]
        ready: dict[str, Any] = {
            "engine": self.engine_name,
            "voice": info.name,
            "sample_rate": self.ring.sample_rate,
            "voice_sample_rate": info.sample_rate,
            "chars_per_s": round(info.chars_per_s, 2),
            "parallel_streams": self.parallel_streams,
            "fallback": self.fallback.name if self.fallback is not None else "",
            "voices": self._voice_names(),
        }
        if self.engine_error:
            ready["degraded"] = self.engine_error
        return ready

    def _voice_names(self) -> list[str]:
        """The voices a request may name (the HTTP gateway lists them and checks against them)."""
        names: list[str] = []
        for engine in (self.engine, self.fallback):
            if engine is None:
                continue
            try:
                names += [n for n in engine.list_voices() if n not in names]
            except Exception as exc:  # a listing is informative; it must not fail start-up
                log.warning("cannot list %s voices: %s", engine.name, exc)
        return names

    # ---------------------------------------------------------------- messages
    def on_eager(self, msg: wire.Message) -> None:
        """Called on the IO thread the moment a Cancel arrives: stop the chunks in progress."""
        if not isinstance(msg, wire.Cancel):
            return
        with self._lock:
            for job in self._inflight:
                if msg.all or msg.request_id == job.req.request_id:
                    job.req.cancel.cancel()

    def handle(self, msg: wire.Message) -> None:
        if isinstance(msg, wire.OpenRequest):
            self._open(msg)
        elif isinstance(msg, wire.TextPiece):
            self._text(msg)
        elif isinstance(msg, wire.Cancel):
            self._cancel(msg)
        elif isinstance(msg, wire.ConfigUpdate):
            self.apply_config(Settings.from_dict(msg.settings))

    def apply_config(self, settings: Settings) -> None:
        """Live settings (``skald config set``, SIGHUP): the joiner (``dsp.*``), the chunk sizes
        and the default voice apply from the next request; GPU control (profile, utilization band,
        VRAM limit) at once. Engines, the ring and the number of synthesis threads stay as started."""
        self.settings = settings
        c = settings.chunker
        self.chunker_config = ChunkerConfig(
            c.target_min_s, c.target_max_s, c.hard_min_s, c.hard_max_s, c.first_chunk_s, c.first_chunk_max_s
        )
        voice = main_voice(settings) if self.engine is not None else settings.tts.fallback_voice
        if voice != self.default_voice:
            try:
                self.load_voice(voice)
            except EngineError as exc:  # the supervisor checked it exists; a model that fails to load
                self.send(wire.Error(kind="bad_request", message=f"tts.voice: {exc}", actor=wire.Role.TTS_WORKER))
            else:
                self.default_voice = voice
        try:
            self.gpu.retune(settings)
        except ValueError as exc:  # ConfigError: torch's view of the tier refuses what NVML's allowed
            self.send(wire.Error(kind="bad_request", message=f"GPU settings: {exc}", actor=wire.Role.TTS_WORKER))

    def _open(self, msg: wire.OpenRequest) -> None:
        voice = msg.voice or self.default_voice
        try:
            self.load_voice(voice)
        except EngineError as exc:
            self.send(
                wire.Error(kind="bad_request", message=str(exc), actor=self.role, request_id=msg.request_id)
            )
            self.send(wire.RequestFinished(request_id=msg.request_id, status="failed", reason=str(exc)))
            return
        self.requests[msg.request_id] = RequestState(
            request_id=msg.request_id,
            voice=voice,
            priority=msg.priority,
            t_accepted=msg.t_accepted,
            arrival=next(self._arrivals),
            chunker=SemanticChunker(
                self.rates[voice], self._chunker_config(voice), rate_for=self._rate_for, lexicon=self._fresh_lexicon()
            ),
            joiner=ChunkJoiner.from_settings(self.settings.dsp, self.ring.sample_rate),
            has_prelude=msg.has_prelude,
            speed=msg.speed,
            next_index=msg.first_index,
        )

    def _chunker_config(self, voice: str) -> ChunkerConfig:
        """The configured chunk sizes (the streaming first-chunk rule when ``voice`` streams within
        a chunk), scaled by the GPU tier's bias (smaller under VRAM pressure)."""
        engine = self.voice_engine.get(voice)
        streams = getattr(engine, "streams_voice", None)
        c = self.streaming_chunker_config if streams is not None and streams(voice) else self.chunker_config
        bias = self.gpu.chunk_bias()
        if bias == 1.0:
            return c
        from actors.gpu.tiers import biased_chunk_targets

        lo, hi = biased_chunk_targets(self.settings, bias)
        return dataclasses.replace(c, target_min_s=lo, target_max_s=hi)

    def _text(self, piece: wire.TextPiece) -> None:
        req = self.requests.get(piece.request_id)
        if req is None or req.cancel.cancelled:
            return  # cancelled or unknown: late text is dropped on purpose
        # The one place where prelude-before-narrative is enforced: narrative text that arrives
        # before the prelude's final piece waits here, whoever sent it (the supervisor for a
        # speak, the text actors for a turn) and whenever it arrives.
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
        if req.text_complete and req.queued == 0:
            self._finish_request(req)

    def _enqueue(self, req: RequestState, plan: ChunkPlan) -> None:
        index = req.next_index
        req.next_index += 1
        req.queued += 1
        heapq.heappush(self._queue, (-req.priority, self._rank(req, index), index, plan, req.request_id))
        self.send(
            wire.ChunkPlanned(
                request_id=req.request_id,
                index=index,
                text=plan.text,
                est_s=plan.est_s,
                voice=plan.voice or "",
                source=plan.source,
            )
        )

    def _rank(self, req: RequestState, index: int) -> int:
        """Queue order within a priority: arrival (stage), or chunk index first (renders)."""
        return (index << 32) | req.arrival if self.fair else req.arrival

    def _cancel(self, msg: wire.Cancel) -> None:
        doomed = list(self.requests) if msg.all else [msg.request_id]
        for request_id in doomed:
            req = self.requests.pop(request_id, None)
            if req is not None:
                req.cancel.cancel()
                req.chunker.reset()
                req.joiner.reset()  # held audio of a cancelled request is never pushed
                if self._last_pushed is req:
                    self._last_pushed = None
        self._queue = [item for item in self._queue if item[4] in self.requests]
        heapq.heapify(self._queue)
        self._replays = {k: v for k, v in self._replays.items() if k[0] in self.requests}
        self._ahead = [rec for rec in self._ahead if not rec.req.cancel.cancelled]
        with self._lock:
            self._inflight = [job for job in self._inflight if not job.req.cancel.cancelled]
        self.gpu.after_cancel()

    def _finish_request(self, req: RequestState) -> None:
        """All of the request's audio is in the ring: tell the consumer where it ends."""
        self.requests.pop(req.request_id, None)
        if self._last_pushed is req:
            self._release(req)
            self._last_pushed = None
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
        self.gpu.after_request()
        # No trim here: the next request's first chunk is the path to its first audio, and a trim
        # now would make it fault every buffer in again.

    # ---------------------------------------------------------------- synthesis threads
    @property
    def has_work(self) -> bool:
        return bool(self._queue or self._inflight)

    def _choose_engine(self, job: Job) -> tuple[TtsEngine, str]:
        """The engine and voice for a chunk: the inline voice tag, else the request's voice; the
        fallback when the request is degraded."""
        req = job.req
        voice = job.plan.voice or req.voice
        if voice != req.voice:
            try:
                self.load_voice(voice)
            except EngineError as exc:
                if voice not in req.bad_voices:
                    req.bad_voices.add(voice)
                    self.send(
                        wire.Error(
                            kind="bad_request",
                            message=f"{exc}; chunk {job.index} keeps the voice {req.voice!r}",
                            actor=self.role,
                            request_id=req.request_id,
                        )
                    )
                voice = req.voice
        engine = self.voice_engine[voice]
        if req.degraded and engine is self.engine and self.fallback is not None:
            return self.fallback, self.settings.tts.fallback_voice
        return engine, voice

    def _synthesize_job(self, job: Job) -> None:
        """Run on a synthesis thread: the chunk's blocks, resampled to the ring rate, into
        ``job.blocks``; retry once, then the fallback engine. Never raises."""
        req = job.req
        engine, voice = job.engine, job.voice
        assert engine is not None
        attempts: list[tuple[TtsEngine, str]] = [(engine, voice)]
        if engine is self.engine:
            attempts.append((engine, voice))  # a chunk must fail twice before we give up on it
            if self.fallback is not None:
                attempts.append((self.fallback, self.settings.tts.fallback_voice))
        emitted = False
        t_start = time.perf_counter()
        for n, (eng, name) in enumerate(attempts):
            if req.cancel.cancelled:
                break
            if n and emitted:
                job.blocks.put(_RESTART)  # part of this chunk was heard: close it, speak it again
                emitted = False
            try:
                if eng is self.engine and self.faults is not None:
                    self.faults.check_chunk(job.index)
                info = self.voices[name]  # loaded on the main thread at dispatch or start-up
                resampler = Resampler(info.sample_rate, self.ring.sample_rate)
                blocks_out = 0
                for block in self._engine_blocks(eng, job.plan.text, name, req.cancel, req.speed):
                    if req.cancel.cancelled:
                        break
                    out = resampler.process(block)
                    if len(out):
                        job.blocks.put(out)
                        emitted = True
                        blocks_out += 1
                        if eng is self.engine and self.faults is not None:
                            self.faults.check_chunk(job.index, blocks_out)
                if not req.cancel.cancelled:
                    tail = resampler.flush()
                    if len(tail):
                        job.blocks.put(tail)
                job.engine_used = eng.name
                break
            except Exception as exc:  # an engine failure is reported as data, the worker lives on
                job.failed = f"{type(exc).__name__}: {exc}"
                self.gpu.on_error(exc)  # a CUDA OOM frees memory and lowers parallelism first
                log.warning(
                    "chunk %d of %s failed on %s (attempt %d): %s",
                    job.index,
                    req.request_id,
                    eng.name,
                    n + 1,
                    exc,
                    extra={"request_id": req.request_id, "event": "chunk_failed"},
                )
                if eng is self.engine and n == 1 and self.fallback is not None:
                    req.degraded = True
                    self.send(
                        wire.Error(
                            kind="engine_failed",
                            message=f"{eng.name} failed twice on chunk {job.index} ({job.failed}); "
                            f"{self.fallback.name} speaks the rest of this request",
                            actor=self.role,
                            request_id=req.request_id,
                        )
                    )
        else:
            if not req.cancel.cancelled:
                self.send(
                    wire.Error(
                        kind="synthesis_failed",
                        message=job.failed,
                        actor=self.role,
                        request_id=req.request_id,
                    )
                )
        if job.engine_used and job.engine_used != (self.engine.name if self.engine else ""):
            self.fallback_chunks += 1
        job.compute_s = time.perf_counter() - t_start  # read by the pusher after _DONE
        job.blocks.put(_DONE)

    def _engine_blocks(
        self, engine: TtsEngine, text: str, voice: str, cancel: CancelToken, speed: float = 1.0
    ) -> Iterator[np.ndarray]:
        """The engine's blocks for a chunk. An engine that streams within a chunk (streaming Piper)
        is told how much audio is queued ahead of it: a later chunk needs no small first windows."""
        ahead = getattr(engine, "synthesize_ahead", None)
        if ahead is not None and speed == 1.0:
            return ahead(text, voice, cancel, self.ring.buffer_length_seconds())
        return engine.synthesize(text, voice, cancel, speed=speed)

    def _dispatch(self) -> None:
        """Start queued chunks while fewer than the allowed number are in flight."""
        limit = self.gpu.streams(self.parallel_streams)
        while self._queue and len(self._inflight) < max(1, limit):
            now = time.monotonic()
            if now < self._next_dispatch:
                return
            if self._inflight or self.ring.buffer_length_seconds() > RELEASE_AHEAD_S * 4:
                # GPU yield: a pause sized by the utilization controller, only while the ring has
                # audio to spare (the buffer wins when they conflict).
                pause = self.gpu.pause_before_dispatch(self.ring.buffer_length_seconds())
                if pause > 0:
                    self._next_dispatch = now + pause
                    return
            _prio, _rank, index, plan, request_id = heapq.heappop(self._queue)
            req = self.requests.get(request_id)
            if req is None:
                continue
            job = Job(seq=next(self._seqs), req=req, index=index, plan=plan)
            replay = self._replays.pop((request_id, index), None)
            if replay is not None:
                job.replay = True  # joined audio, pushed again in order: no synthesis
                for block in replay[1]:
                    job.blocks.put(block)
                job.blocks.put(_DONE)
                with self._lock:
                    self._inflight.append(job)
                continue
            job.engine, job.voice = self._choose_engine(job)
            with self._lock:
                self._inflight.append(job)
            self._pool.submit(self._synthesize_job, job)

    # ---------------------------------------------------------------- pushing
    def _release(self, req: RequestState) -> None:
        """Push the request's held crossfade tail (faded out): its next chunk is not coming now."""
        if req.joiner.in_chunk:
            return
        self._push(req, req.last_pushed_index, req.joiner.release(), None)

    def _push(
        self, req: RequestState, index: int, audio: np.ndarray, stop: threading.Event | None, job: Job | None = None
    ) -> int:
        """Push ``audio`` into the ring and announce it; frames pushed (fewer if cancelled). Time
        spent waiting for ring space is backpressure, counted on ``job`` (its ``wait_s``)."""
        if not len(audio):
            return 0
        start = self.ring.write_index
        offset = announced = 0
        while offset < len(audio):
            offset += self.ring.push(audio[offset:])
            if offset < len(audio):
                # Announce what is in the ring before waiting for space: the consumer plays only
                # announced frames, so a block longer than the overfill guard (ring.max_fill_s)
                # would otherwise wait for space that never comes.
                if offset > announced:
                    self._announce(req, index, start + announced, audio[announced:offset])
                    announced = offset
                self.heap.maybe_trim()  # the ring is full: the speaker has seconds of audio ahead
                t_wait = time.perf_counter()
                try:
                    ok = self.ring.wait_for_space(
                        min(len(audio) - offset, 4096),
                        timeout=0.05,
                        cancel=lambda: req.cancel.cancelled or (stop is not None and stop.is_set()),
                    )
                except PeerDeadError:
                    # The consumer died. The supervisor restarts it, and the new one reads this
                    # ring on from where the old one stopped (its requests resume): wait for it.
                    if req.cancel.cancelled or (stop is not None and stop.is_set()):
                        break
                    time.sleep(0.05)
                    continue
                finally:
                    waited = time.perf_counter() - t_wait
                    self.wait_s_total += waited
                    if job is not None:
                        job.wait_s += waited
                if not ok and (req.cancel.cancelled or (stop is not None and stop.is_set())):
                    break
        if offset > announced:
            self._announce(req, index, start + announced, audio[announced:offset])
        req.frames_pushed += offset
        req.last_pushed_index = index
        return offset

    def _announce(self, req: RequestState, index: int, start: int, audio: np.ndarray) -> None:
        """Tell the consumer that ring frames ``[start, start + len(audio))`` are this chunk's."""
        self.send(
            wire.Segment(
                request_id=req.request_id, index=index, start=start, end=start + len(audio), t_accepted=req.t_accepted
            )
        )
        self._remember(req, index, start, audio)

    def _remember(self, req: RequestState, index: int, start: int, audio: np.ndarray) -> None:
        played = self.ring.read_index
        while self._ahead and self._ahead[0].end <= played:
            self._ahead.pop(0)
        last = self._ahead[-1] if self._ahead else None
        if last is not None and last.req is req and last.index == index and last.end == start:
            last.audio.append(audio.copy())
            last.end = start + len(audio)
            return
        job = self._pushing
        plan = job.plan if job is not None and job.req is req else ChunkPlan(index, "", 0.0, "sentence")
        self._ahead.append(PushedAudio(req, index, plan, start, start + len(audio), [audio.copy()]))

    def _preempt(self, urgent: RequestState) -> None:
        """``urgent`` outranks audio already in the ring: from the first chunk seam far enough
        ahead of the speaker, the consumer skips the ring, and that audio is pushed again after
        the urgent request, in its order (it resumes; nothing is cancelled)."""
        margin = int(PREEMPT_MARGIN_S * self.ring.sample_rate)
        earliest = self.ring.read_index + margin
        seam = -1
        for i, rec in enumerate(self._ahead):
            if rec.start < earliest:
                continue
            if all(r.req.priority < urgent.priority for r in self._ahead[i:]):
                seam = i
                break
        if seam < 0:
            return
        deferred = self._ahead[seam:]
        del self._ahead[seam:]
        start, end = deferred[0].start, deferred[-1].end
        # The consumer fades out the first fade_ms of the skipped audio when it jumps (a seam's
        # pause, so silence in practice): that much is heard already, the replay starts after it.
        heard = int(self.settings.audio.fade_ms * self.ring.sample_rate / 1000.0)
        first = deferred[0]
        while heard > 0 and first.audio:
            if len(first.audio[0]) <= heard:
                heard -= len(first.audio.pop(0))
            else:
                first.audio[0] = first.audio[0][heard:]
                heard = 0
        reopened: list[str] = []
        for rec in deferred:
            req = rec.req
            if req.cancel.cancelled:
                continue
            key = (req.request_id, rec.index)
            if key in self._replays:
                self._replays[key][1].extend(rec.audio)
                continue
            self._replays[key] = (rec.plan, list(rec.audio))
            if req.request_id not in self.requests:
                self.requests[req.request_id] = req  # it had finished here; its replay ends it again
            if req.request_id not in reopened:
                reopened.append(req.request_id)
            req.queued += 1
            rank = self._rank(req, rec.index)
            heapq.heappush(self._queue, (-req.priority, rank, rec.index, rec.plan, req.request_id))
        self.preemptions += 1
        self.send(wire.Skip(start=start, end=end, reopen=reopened, reason=f"preempted by {urgent.request_id}"))

    def pump(self, stop: threading.Event | None = None, wait_s: float = 0.005) -> None:
        """Move the head chunk's finished blocks into the ring (waiting up to ``wait_s``)."""
        if not self._inflight:
            self._maybe_release()
            return
        job = self._inflight[0]
        req = job.req
        if req.cancel.cancelled:
            with self._lock:
                if self._inflight and self._inflight[0] is job:
                    self._inflight.pop(0)
            return
        if not job.opened:
            if self._last_pushed is not None and self._last_pushed is not req:
                self._release(self._last_pushed)  # another request's audio comes next
            if not job.replay:
                if self._ahead and any(rec.req.priority < req.priority for rec in self._ahead):
                    self._preempt(req)
                req.joiner.start_chunk(pause_kind(job.plan.boundary, job.plan.text))
            job.opened = True
            self._last_pushed = None if job.replay else req
        self._pushing = job
        deadline = time.monotonic() + wait_s
        while True:
            try:
                item = job.blocks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._maybe_release()
                return
            if isinstance(item, ChunkDone):
                self._complete(job, stop)
                return
            if isinstance(item, RestartChunk):
                self.restarts += 1
                job.frames += self._push(req, job.index, req.joiner.end_chunk(), stop, job)
                job.frames += self._push(req, job.index, req.joiner.release(), stop, job)
                req.joiner.start_chunk(pause_kind(job.plan.boundary, job.plan.text))
                continue
            joined = item if job.replay else req.joiner.feed(item)
            job.frames += self._push(req, job.index, joined, stop, job)
            if req.cancel.cancelled or time.monotonic() >= deadline:
                return

    def _complete(self, job: Job, stop: threading.Event | None) -> None:
        req = job.req
        with self._lock:
            if self._inflight and self._inflight[0] is job:
                self._inflight.pop(0)
        if req.cancel.cancelled:
            return
        if job.replay:
            req.queued -= 1
            if req.text_complete and req.queued == 0:
                self._finish_request(req)
            return
        job.frames += self._push(req, job.index, req.joiner.end_chunk(), stop, job)
        # synth_ms is the engine's compute alone; the wait for ring space goes out as wait_ms.
        synth_ms = job.compute_s * 1000.0
        self.compute_s_total += job.compute_s
        req.queued -= 1
        span = req.joiner.spans[-1] if req.joiner.spans else None
        dur_s = (span.end - span.start) / self.ring.sample_rate if span is not None and span.end >= 0 else 0.0
        self.chunks_synthesized += 1
        if job.engine_used and span is not None and span.engine_frames:
            voice = job.plan.voice or req.voice
            if voice in self.rates and self.voice_engine.get(voice) is not None:
                self.rates[voice].observe(job.plan.text, span.engine_frames / self.ring.sample_rate)
        self.send(
            wire.ChunkSynthesized.of(
                req.request_id,
                job.index,
                dur_s,
                synth_ms,
                job.engine_used or "none",
                _wire_span(span),
                wait_ms=job.wait_s * 1000.0,
            )
        )
        if req.text_complete and req.queued == 0:
            self._finish_request(req)

    def _maybe_release(self) -> None:
        """The next chunk is late: release the held tail before the speaker reaches it."""
        req = self._last_pushed
        if req is None or req.joiner.held_frames == 0 or req.joiner.in_chunk:
            return
        if self.ring.buffer_length_seconds() < RELEASE_AHEAD_S:
            self._release(req)

    def synthesize_next(self, stop: threading.Event | None = None) -> None:
        """Dispatch and push until the current head chunk is done (tests and tools)."""
        self._dispatch()
        while self._inflight:
            head = self._inflight[0]
            self.pump(stop, wait_s=0.05)
            if not self._inflight or self._inflight[0] is not head:
                return

    def metrics(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "queued_chunks": len(self._queue),
            "inflight_chunks": len(self._inflight),
            "open_requests": len(self.requests),
            "chunks_synthesized": self.chunks_synthesized,
            "fallback_chunks": self.fallback_chunks,
            "preemptions": self.preemptions,
            "restarts": self.restarts,
            "compute_s": round(self.compute_s_total, 3),
            "wait_s": round(self.wait_s_total, 3),
            "rss_mb": process_rss_mb(),
            # list(): metrics run on the runtime's tick thread while the loop may add a voice.
            "chars_per_s": {v: round(r.chars_per_s, 2) for v, r in list(self.rates.items())},
        }
        gpu = self.gpu.status()
        if gpu:
            values["gpu"] = gpu
        return values

    def run(self, stop: threading.Event, inbox: queue.Queue[wire.Message]) -> None:
        if self.engine_error:
            self.send(wire.Error(kind="engine_unavailable", message=self.engine_error, actor=self.role))
        self._running = True
        self._report_degradations()
        while not stop.is_set():
            # Drain every pending message before dispatching, so a cancel or a higher-priority
            # request that arrived meanwhile is honoured at the next chunk seam.
            held = self._last_pushed is not None and self._last_pushed.joiner.held_frames > 0
            try:
                msg = inbox.get(timeout=0 if self.has_work else (0.005 if held else 0.05))
                if isinstance(msg, wire.Shutdown):
                    return
                self.handle(msg)
                continue
            except queue.Empty:
                pass
            self._dispatch()
            self.pump(stop)

    def close(self) -> None:
        for req in list(self.requests.values()):
            req.cancel.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for resource in self._owned:
            resource.close()
        self._owned.clear()

    @classmethod
    def from_spec(cls, spec: ActorSpec, send: Send) -> Self:
        """The worker of a ``tts_worker`` process: attaches the ring as its producer, sets the
        GPU limits before loading the engines, and owns (closes) the engines and the ring."""
        settings = spec.config
        ring = PcmRing.attach(spec.ring_name, "producer")
        ring.start_heartbeat()
        try:
            gpu, resolved = _gpu_hooks(settings, spec.gpu)  # the VRAM limit is set before loading
            main, fallback, error = build_engines(settings)
            streams = settings.tts.parallel_streams
            if streams < 0:
                streams = resolved.config.parallel_streams if resolved is not None else 1
            worker = cls(
                settings,
                main,
                ring,
                send,
                fallback=fallback,
                engine_error=error,
                parallel_streams=streams,
                gpu=gpu,
                faults=FaultPlan.from_env(),
                role=spec.role,
            )
        except Exception:
            ring.close()
            raise
        worker._owned = [e for e in (main, fallback) if e is not None] + [ring]
        return worker


def _wire_span(span: ChunkSpan | None) -> wire.ChunkSpan | None:
    """The joiner's span of a finished chunk as the one span type the events and reports carry."""
    if span is None or span.end < 0:
        return None
    return wire.ChunkSpan(
        out_start=span.start,
        out_end=span.end,
        lead_pad=span.lead_pad,
        src_start=span.src_start,
        kept=span.kept,
        overlap_in=span.overlap_in,
        # Known only once the next chunk is mixed; the joiner holds at most `crossfade` frames.
        overlap_out=span.overlap_out,
    )


def main_voice(settings: Settings) -> str:
    """The main engine's default voice. ``tts.voice`` names a Piper voice by default; with another
    engine that default means "the engine's own default voice" ("" = XTTS's first speaker)."""
    tts = settings.tts
    if tts.engine != "piper" and tts.voice == tts.fallback_voice:
        return ""
    return tts.voice


def build_engines(settings: Settings) -> tuple[TtsEngine | None, TtsEngine | None, str]:
    """The main engine (or None, with the reason) and the fallback engine (or None)."""
    from actors.tts import create_engine

    faults = FaultPlan.from_env()
    main: TtsEngine | None = None
    error = ""
    try:
        if faults is not None and faults.fail_load:
            raise EngineError("injected fault (SKALD_FAULT_INJECT=load)")
        main = create_engine(settings.tts.engine, settings)
        main.load_voice(main_voice(settings))
    except Exception as exc:
        error = f"{settings.tts.engine} unavailable: {exc}"
        if main is not None:
            main.close()
        main = None
    fallback: TtsEngine | None = None
    name = settings.tts.fallback_engine
    if name and name != settings.tts.engine:
        fallback = create_engine(name, settings)
    elif name and main is None:
        raise EngineError(error)
    if main is None and fallback is None:
        raise EngineError(error)
    if error:
        log.error("%s; %s speaks instead", error, fallback.name if fallback else "nothing")
    return main, fallback, error


def _gpu_hooks(settings: Settings, gpu: ResolvedGpuConfig | None) -> tuple[GpuHooks, ResolvedGpuConfig | None]:
    """GPU control when the engine runs on CUDA (XTTS); plain no-ops otherwise (no torch import)."""
    if gpu is None or settings.tts.engine != "xtts" or settings.xtts.device == "cpu":
        return GpuHooks(), None
    from actors.gpu.tiers import confirm_with_torch

    resolved = confirm_with_torch(settings, gpu)
    if not resolved.on_gpu:
        return GpuHooks(), resolved
    return GpuControlHooks(resolved), resolved  # pragma: no cover - needs a CUDA device torch can use


#: The stage's worker feeds what the table hears in real time: where permitted it runs above
#: ordinary work (a CPU hog, a browser, the gateway's clients), still below the audio consumer's
#: -10. At nice 0 on two cores, three HTTP renders and their clients beside the stage starved it
#: into a ring underrun in one run of 95 s; `stress-ng --cpu 2` alone takes two thirds of the CPU.
STAGE_NICE = -5


def run_tts_worker_process(spec: ActorSpec) -> None:
    """Entry point of the TTS worker process (the stage's)."""
    set_process_nice(STAGE_NICE)  # an unprivileged user keeps nice 0 (docs/troubleshooting.md)
    hold_freed_heap()
    run_actor(spec, TtsWorker)


#: How much the render worker defers to the stage: renders use what CPU the live narration leaves.
RENDER_NICENESS = 10


def run_tts_render_process(spec: ActorSpec) -> None:
    """Entry point of the render worker (``skald serve --http``): the same worker, for the HTTP
    gateway's renders, in a ring of its own and at a lower OS priority than the stage's worker."""
    if set_process_nice(RENDER_NICENESS) != RENDER_NICENESS:  # a container may forbid it
        log.warning("tts_render: cannot lower its priority; renders compete with the stage as equals")
    hold_freed_heap()
    run_actor(spec, TtsWorker)

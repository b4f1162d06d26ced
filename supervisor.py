"""skald supervisor: starts the actor processes, routes their messages, restarts the fallen.

Processes and the channels between them::

      orchestrator clients
        │  DEALER/REQ ─► control.sock (ROUTER)      SUB ◄─ events.sock (XPUB)
        ▼                                                  ▲
    ┌──────────────────────────── supervisor ──────────────┴─────────────┐
    │ validates requests, tracks request state, publishes events,        │
    │ owns the run dir and the PCM ring segment, watches child sentinels │
    └───┬───────────────┬───────────────────┬─────────────────────┬──────┘
        │ actors.sock (ROUTER; each actor is a DEALER named by its role)
        ▼               ▼                   ▼                     ▼
     prelude        narrative   ──TextPiece──► tts_worker ──Segment──► audio_consumer
     (LLM turns)     (LLM turns)                 │  push                 ▲ callback reads
                                                 └──── PcmRing (/dev/shm, lock-free SPSC) ┘

Every ZeroMQ message is ``[kind, msgpack payload]`` (``actors.wire``); the supervisor relays
actor-to-actor messages (one ipc hop, tens of microseconds) so it always knows each request's
state. The orchestrator's own text (``speak``/``append``/``end``) goes from here straight to the
worker as ``TextPiece``s; the text actors only write turns. PCM never crosses ZeroMQ.

The events socket is an XPUB: each new subscription is answered with a published ``subscribed``
event, so a client knows its subscription is live before it sends its first request.

Lifecycle: the children are started with the ``spawn`` context from the main thread and
must say READY before ``ready_timeout_s``; their ``proc.sentinel`` fds sit in the same poll
set as the sockets, so a child that dies (while loading or later) is noticed at once. A dead
child is reported as an ``actor_crashed`` error event, the requests it held are reported
``failed`` (or resume: see ``_hold_for_resume``), and it is restarted at once, then with
exponential backoff if it keeps crashing; past ``max_restarts`` the supervisor
reports ``actor_failed`` and exits non-zero. Shutdown (SIGINT/SIGTERM only set a flag) runs in
stages logged as ``skald.shutdown``: Shutdown messages, join, SIGTERM, SIGKILL, sockets closed,
ring unlinked, run dir removed. If the supervisor itself is SIGKILLed, the children notice
(parent-death signal + watchdog) and remove the ring and run dir on their way out.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from actors import wire
from actors.live_config import LiveSettings
from actors.logs import log_event
from actors.metrics import ServerMetrics
from actors.runtime import ActorSpec
from config.settings import ConfigError, Settings, metrics_address
from shm import pid_running

if TYPE_CHECKING:
    from actors.gpu.tiers import ResolvedGpuConfig

log = logging.getLogger("skald.supervisor")
shutdown_log = logging.getLogger("skald.shutdown")

Role = wire.Role
PRELUDE, NARRATIVE, TTS_WORKER, AUDIO_CONSUMER = Role.PRELUDE, Role.NARRATIVE, Role.TTS_WORKER, Role.AUDIO_CONSUMER
TTS_RENDER, WEB = Role.TTS_RENDER, Role.WEB
#: Start order: the sink first, the text actors last.
ROLES = (AUDIO_CONSUMER, TTS_WORKER, NARRATIVE, PRELUDE)
#: The actors of the live narration (the stage) and of the HTTP gateway's renders. A crash, a
#: ``cancel --all`` or a barge-in touches only its own side: a render never stops the stage.
STAGE_ROLES = ROLES
RENDER_ROLES = (WEB, TTS_RENDER)
PENDING_LIMIT = 10_000  # messages held for an actor that is restarting
HEALTHY_RESET_S = 60.0  # an actor alive this long gets its restart count back
#: How long a cancelled stage request waits for the consumer's ``Silenced`` before it is closed
#: anyway (the consumer answers within a callback block or two; this covers a hung one).
SILENCE_REPORT_S = 2.0

_SHM_NAME = re.compile(r"^skald-(\d+)-(?:pcm|render|stage)$")
#: The stage tee holds this much audio for the web actor; beyond it the consumer drops (web side only).
STAGE_TEE_S = 2.0
FINISHED_KEPT = 1000  # finished requests remembered (as summaries): late events, reused ids
FINISHED_DETAILED = 16  # of those, the newest keep their chunk records


class SupervisorError(RuntimeError):
    """The supervisor could not start or keep its actors running."""


def roles_for(settings: Settings) -> tuple[Role, ...]:
    """The actors a supervisor runs: the stage's, plus the gateway's when ``web.http`` is set."""
    return ROLES + RENDER_ROLES if settings.web.http else ROLES


def _entry(role: Role) -> Callable[[ActorSpec], None]:
    # Imported here so the supervisor itself never loads an engine module.
    if role == AUDIO_CONSUMER:
        from actors.audio_consumer import run_audio_consumer_process

        return run_audio_consumer_process
    if role == TTS_WORKER:
        from actors.tts_worker import run_tts_worker_process

        return run_tts_worker_process
    if role == TTS_RENDER:
        from actors.tts_worker import run_tts_render_process

        return run_tts_render_process
    if role == WEB:
        from actors.web_gateway import run_web_process

        return run_web_process
    from actors.text_source import run_narrative_process, run_prelude_process

    return run_prelude_process if role == PRELUDE else run_narrative_process


def default_run_dir(settings: Settings, shared: bool) -> Path:
    """``shared`` (``skald serve``) uses one well-known directory so clients can find it."""
    if settings.supervisor.run_dir:
        return Path(settings.supervisor.run_dir)
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
    if shared:
        return base / f"skald-{os.getuid()}"
    return base / f"skald-{os.getuid()}.{os.getpid()}"


def endpoints(settings: Settings, run_dir: Path) -> wire.Endpoints:
    """A supervisor's endpoints under ``settings`` (``wire.endpoints`` is the one rule)."""
    return wire.endpoints(str(run_dir), settings.supervisor.control_endpoint, settings.supervisor.events_endpoint)


def sweep_stale(run_dir_base: Path) -> list[str]:
    """Remove rings and run dirs left by supervisors that are gone (SIGKILL, power loss)."""
    removed: list[str] = []
    shm_dir = Path("/dev/shm")
    if shm_dir.is_dir():
        for entry in shm_dir.iterdir():
            match = _SHM_NAME.match(entry.name)
            if match and not pid_running(int(match.group(1))):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(str(entry))
    if run_dir_base.is_dir():
        for entry in run_dir_base.glob(f"skald-{os.getuid()}*"):
            pidfile = entry / "supervisor.pid"
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            if not pid_running(pid):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    return removed


@dataclass
class Child:
    role: Role
    proc: Any = None
    ready: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    started_at: float = 0.0
    ready_deadline: float = 0.0
    restart_at: float | None = None
    pending: list[list[bytes]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    last_error: str = ""


@dataclass
class ChunkRecord:
    """What the events told of one chunk: planned (text, estimate), then synthesized
    (``synth_ms``: engine compute; ``wait_ms``: the worker's wait for ring space, apart)."""

    text: str = ""
    est_s: float = 0.0
    dur_s: float = 0.0
    synth_ms: float = 0.0
    engine: str = ""
    wait_ms: float = 0.0
    span: wire.ChunkSpan | None = None
    source: str = ""  # as written (what a resumed request is lined up against)
    synthesized: bool = False  # all of its audio is in the ring


@dataclass
class RequestRecord:
    request_id: str
    client: list[bytes] | None
    t_accepted: float
    streaming: bool
    text_open: bool
    status: str = "active"  # "active", then a wire.RequestStatus
    output: wire.Output = "stage"
    turn: bool = False  # written by the text actors (a turn), not by the client (a speak)
    chunks: dict[int, ChunkRecord] = field(default_factory=dict)
    ttfa_ms: float = -1.0
    underruns: int = 0
    device_underflows: int = 0
    audio_s: float = 0.0
    reason: str = ""
    # Cancelled, its Silenced not yet reported: request_finished waits for it (until this deadline).
    silence_deadline: float | None = None
    # What the TTS worker was given, kept so a restarted worker can resume the request.
    opened: wire.OpenRequest | None = None
    texts: list[wire.TextPiece] = field(default_factory=list)
    resuming: bool = False  # its worker died; it resumes when the worker is READY again
    resumed: int = 0
    segments: list[wire.Segment] = field(default_factory=list)  # announced to the consumer, not yet played
    audio_before_s: float = 0.0  # played by consumers that died since (added to request_finished)


def _child_state(child: Child) -> str:
    """What ``status`` (and ``skald top``) says of a child: running, starting, restarting, failed."""
    if child.ready:
        return "running"
    if child.restart_at == float("inf"):
        return "failed"
    return "restarting" if child.restart_at is not None else "starting"


def _shutdown_children(children: Iterable[Child], timeout: float) -> None:
    """Join against one deadline, then SIGTERM, then SIGKILL. Module-level for ``weakref.finalize``."""
    procs = [c.proc for c in children if c.proc is not None]
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    if alive:
        shutdown_log.warning("skald.shutdown: terminating %s", [p.name for p in alive])
        for proc in alive:
            with contextlib.suppress(Exception):
                proc.terminate()
        for proc in alive:
            proc.join(1.0)
    alive = [p for p in procs if p.is_alive()]
    if alive:
        shutdown_log.warning("skald.shutdown: killing %s", [p.name for p in alive])
        for proc in alive:
            with contextlib.suppress(Exception):
                proc.kill()
        for proc in alive:
            proc.join(1.0)


class Supervisor:
    """Owns the actors, the sockets, the ring and the run dir. One per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        shared_run_dir: bool = False,
        log_level: int = logging.INFO,
        origins: dict[str, str] | None = None,
        log_format: str = "",
    ) -> None:
        self.settings = settings
        self.origins = origins or {}
        self.gpu: ResolvedGpuConfig | None = None  # from detection at start()
        self.log_level = log_level
        self.log_format = log_format or settings.log.format  # the actors log as this process does
        self.run_dir = default_run_dir(settings, shared_run_dir)
        self.shared_run_dir = shared_run_dir
        self.children: dict[str, Child] = {role: Child(role) for role in roles_for(settings)}
        self.requests: dict[str, RequestRecord] = {}
        self.listeners: list[Callable[[wire.Message], None]] = [log_event]
        self.ready_listeners: list[Callable[[str, dict[str, Any]], None]] = []  # (role, Ready info)
        self.metrics = ServerMetrics(self.status, default_engine=settings.tts.engine)  # actors/metrics.py
        self.listeners.append(self.metrics.observe)
        self.exit_code = 0
        self.stop_reason = ""
        self._stop = threading.Event()
        self._mp = multiprocessing.get_context("spawn")
        self._ctx: zmq.Context[Any] | None = None
        # None until start() binds it: a start that fails on that bind still shuts down cleanly.
        self._backend: Any = None
        self._ring: Any = None
        self._render_ring: Any = None
        self._curve: Any = None  # actors.security.CurveServer, with a tcp:// endpoint
        self._fronts: list[zmq.Socket[Any]] = []  # control ROUTERs: ipc, and tcp when configured
        self._pubs: list[zmq.Socket[Any]] = []  # events XPUBs: likewise
        self._stage_tee: Any = None
        self._started = time.monotonic()
        self._closed = False
        # Set once _claim_run_dir made the run dir ours: shutdown removes only a dir it owns, never
        # that of another live supervisor that refused this one its start.
        self._run_dir_claimed = False
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._poller: zmq.Poller | None = None
        self._sentinels: dict[int, Child] = {}
        self._replay_segments: list[wire.Segment] = []  # for a restarted consumer (_reannounce)
        self._poll_key: tuple[int, ...] = ()
        self.subscriptions = 0  # subscriptions seen on the events socket
        # skald config, SIGHUP: a change goes to every actor this server runs (stage and renders)
        self.live = LiveSettings(
            self, send=lambda msg: self._to_actors(msg, [c.role for c in self.children.values()]), publish=self._publish
        )

    # ------------------------------------------------------------------ endpoints
    @property
    def endpoints(self) -> wire.Endpoints:
        return endpoints(self.settings, self.run_dir)

    @property
    def control_endpoint(self) -> str:
        return self.endpoints.control

    @property
    def events_endpoint(self) -> str:
        return self.endpoints.events

    @property
    def backend_endpoint(self) -> str:
        return self.endpoints.actors

    @property
    def ring_name(self) -> str:
        return f"skald-{os.getpid()}-pcm"

    @property
    def render_ring_name(self) -> str:
        """The render worker -> gateway ring (only with ``web.http``)."""
        return f"skald-{os.getpid()}-render"

    @property
    def stage_tee_name(self) -> str:
        """The audio consumer -> gateway ring of what the stage plays (only with ``web.http``)."""
        return f"skald-{os.getpid()}-stage"

    @property
    def shm_names(self) -> tuple[str, ...]:
        """Every segment this supervisor creates (an orphaned actor removes them on its way out)."""
        if self.gateway:
            return (self.ring_name, self.render_ring_name, self.stage_tee_name)
        return (self.ring_name,)

    @property
    def gateway(self) -> bool:
        return WEB in self.children

    def _resolve_gpu(self) -> ResolvedGpuConfig:
        """Detect the GPU once (NVML: no torch in the supervisor) and resolve the tier's config;
        the actors get it in their spec. A bad GPU knob fails start-up with the key named."""
        from actors.gpu.tiers import detect_gpus, resolve_gpu_config

        try:
            resolved = resolve_gpu_config(self.settings, detect_gpus(use_torch=False), self.origins)
        except ConfigError as exc:
            raise SupervisorError(str(exc)) from None
        log.info(
            "GPU tier %s (profile %s)%s",
            resolved.tier.value,
            resolved.profile,
            f": {resolved.fallback_reason}" if resolved.fallback_reason else "",
        )
        return resolved

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Create the run dir, ring and sockets; start every actor and wait for READY."""
        from actors.tts import engine_sample_rate
        from shm import PcmRing

        removed = sweep_stale(self.run_dir.parent)
        if removed:
            log.info("removed leftovers of dead supervisors: %s", ", ".join(removed))
        self.gpu = self._resolve_gpu()
        if self.gateway:
            self._check_gateway_deps()
        self._claim_run_dir()
        # The ring's rate: audio.rate when set (the worker resamples each chunk to it), else
        # the voice's own, so nothing is resampled on the way to the device.
        rate = self.settings.audio.rate or engine_sample_rate(self.settings.tts.engine, self.settings.tts.voice)
        ring_cfg = self.settings.ring
        self._ring = PcmRing.create(self.ring_name, int(ring_cfg.capacity_s * rate), rate, ring_cfg.max_fill_s)
        if self.gateway:
            self._render_ring = PcmRing.create(
                self.render_ring_name, int(ring_cfg.capacity_s * rate), rate, ring_cfg.max_fill_s
            )
            self._stage_tee = PcmRing.create(self.stage_tee_name, int(STAGE_TEE_S * rate), rate, STAGE_TEE_S)
        self._ctx = zmq.Context()
        self._backend = self._bind(zmq.ROUTER, self.backend_endpoint)
        self._backend.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # The ipc sockets in the 0700 run dir always (the actors and local tools); a configured
        # other endpoint (tcp://) gets sockets of its own, CurveZMQ-only (actors/security.py).
        local = wire.endpoints(str(self.run_dir))
        self._frontend = self._bind(zmq.ROUTER, local.control)
        self._events = self._bind(zmq.XPUB, local.events)
        self._fronts, self._pubs = [self._frontend], [self._events]
        if self.control_endpoint != local.control:
            self._fronts.append(self._bind(zmq.ROUTER, self.control_endpoint))
        if self.events_endpoint != local.events:
            self._pubs.append(self._bind(zmq.XPUB, self.events_endpoint))
        for sock in self._fronts:
            sock.setsockopt(zmq.MAXMSGSIZE, wire.ABSOLUTE_MAX_PAYLOAD + 4096)
        for sock in self._pubs:
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription is seen, not only the first
        if self.settings.supervisor.metrics:
            self._serve_metrics(self.settings.supervisor.metrics)
        self._finalizer = weakref.finalize(self, _shutdown_children, list(self.children.values()), 1.0)
        for child in self.children.values():
            self._spawn(child)
        self._wait_all_ready()
        log.info(
            "ready: %s; control %s, events %s",
            ", ".join(f"{c.role}(pid {c.proc.pid})" for c in self.children.values()),
            self.control_endpoint,
            self.events_endpoint,
        )

    def _check_gateway_deps(self) -> None:
        import importlib.util

        missing = [m for m in ("fastapi", "uvicorn", "av") if importlib.util.find_spec(m) is None]
        if missing:
            raise SupervisorError(
                f"web.http = {self.settings.web.http!r} needs {', '.join(missing)}: pip install 'skald[web]' "
                "(or leave web.http empty / drop --http)"
            )
    def _serve_metrics(self, address: str) -> None:
        host, port = metrics_address(address)
        try:
            bound = self.metrics.serve(host, port)
        except OSError as exc:
            raise SupervisorError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} (supervisor.metrics, --metrics)"
            ) from None
        log.info("metrics on http://%s:%d/metrics", *bound)

    def _claim_run_dir(self) -> None:
        pidfile = self.run_dir / "supervisor.pid"
        if pidfile.exists():
            with contextlib.suppress(OSError, ValueError):
                other = int(pidfile.read_text().strip())
                if other != os.getpid() and pid_running(other):
                    raise SupervisorError(
                        f"another skald supervisor (pid {other}) owns {self.run_dir}; stop it or set "
                        "supervisor.run_dir (SKALD_SUPERVISOR_RUN_DIR) to another directory"
                    )
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        pidfile.write_text(str(os.getpid()))
        self._run_dir_claimed = True

    def _bind(self, kind: int, endpoint: str) -> zmq.Socket[Any]:
        assert self._ctx is not None
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if endpoint.startswith("tcp://"):
            from actors.security import CurveServer, SecurityError

            if self._curve is None:
                sup = self.settings.supervisor
                try:
                    self._curve = CurveServer(self._ctx, sup.curve_server_key, sup.curve_clients_dir)
                except SecurityError as exc:
                    sock.close()
                    raise SupervisorError(f"cannot bind {endpoint}: {exc}") from None
            self._curve.apply(sock)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise SupervisorError(f"cannot bind {endpoint}: {exc}") from None
        return sock

    def _spawn(self, child: Child) -> None:
        spec = ActorSpec(
            role=child.role,
            backend_endpoint=self.backend_endpoint,
            settings=self.settings.to_dict(),
            run_dir=str(self.run_dir),
            parent_pid=os.getpid(),
            ring_name=self.render_ring_name if child.role in RENDER_ROLES else self.ring_name,
            shm_names=self.shm_names,
            log_level=self.log_level,
            gpu=self.gpu,
            log_format=self.log_format,
            tee_name=self.stage_tee_name if self.gateway and child.role in (AUDIO_CONSUMER, WEB) else "",
        )
        child.proc = self._mp.Process(target=_entry(child.role), args=(spec,), name=f"skald::{child.role}")
        child.proc.start()
        child.ready = False
        child.started_at = time.monotonic()
        child.ready_deadline = child.started_at + self.settings.supervisor.ready_timeout_s
        child.restart_at = None
        log.debug("spawned %s as pid %d", child.role, child.proc.pid)

    def _wait_all_ready(self) -> None:
        deadline = time.monotonic() + self.settings.supervisor.ready_timeout_s
        poller = zmq.Poller()
        poller.register(self._backend, zmq.POLLIN)
        # Subscriptions are answered during start-up too: the web actor subscribes before READY.
        for pub in self._pubs:
            poller.register(pub, zmq.POLLIN)
        sentinels = {c.proc.sentinel: c for c in self.children.values()}
        for fd in sentinels:
            poller.register(fd, zmq.POLLIN)
        while not all(c.ready for c in self.children.values()):
            if self._stop.is_set():
                raise SupervisorError("interrupted while starting")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                late = [c.role for c in self.children.values() if not c.ready]
                raise SupervisorError(
                    f"actors not ready after {self.settings.supervisor.ready_timeout_s:g} s: {', '.join(late)} "
                    "(supervisor.ready_timeout_s)"
                )
            for sock, _ in poller.poll(min(100, int(remaining * 1000) + 1)):
                if sock is self._backend:
                    self._on_backend(self._backend.recv_multipart())
                elif sock in self._pubs:
                    self._on_subscription(sock.recv())
                elif sock in sentinels:
                    child = sentinels[sock]
                    # Drain messages first: its error report may already be queued.
                    while self._backend.poll(50):
                        self._on_backend(self._backend.recv_multipart())
                    child.proc.join(0.1)
                    why = child.last_error or "no error report"
                    raise SupervisorError(f"{child.role} died during startup (exit code {child.proc.exitcode}): {why}")

    # ------------------------------------------------------------------ main loop
    def request_stop(self, reason: str = "") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
        self._stop.set()

    def install_signal_handlers(self, reload_on_hangup: bool = False) -> None:
        def handler(signum: int, _frame: object) -> None:
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        if reload_on_hangup:  # skald serve: SIGHUP re-reads the config file (on the main loop)
            signal.signal(signal.SIGHUP, lambda _signum, _frame: self.live.request_reload())

    def run(self, until: Callable[[], bool] | None = None, timeout: float | None = None) -> bool:
        """Serve until ``until()`` is true (returns True), stop is requested or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            if until is not None and until():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            # Sockets and child sentinels wake the poll at once; the timeout only paces
            # housekeeping (restart backoff, READY deadlines), which needs no finer grain.
            self._poll_once(100)
        return until is not None and until()

    def _watch_set(self) -> tuple[zmq.Poller, dict[int, Child]]:
        """The poll set: both ROUTERs and the sentinel of every live child. Rebuilt only when a
        child is spawned or dies, not on every loop turn."""
        key = tuple(
            c.proc.sentinel if c.proc is not None and c.restart_at is None else -1 for c in self.children.values()
        )
        if self._poll_key != key or self._poller is None:
            poller = zmq.Poller()
            poller.register(self._backend, zmq.POLLIN)
            for sock in (*self._fronts, *self._pubs):
                poller.register(sock, zmq.POLLIN)
            sentinels: dict[int, Child] = {}
            for child in self.children.values():
                if child.proc is not None and child.restart_at is None:
                    sentinels[child.proc.sentinel] = child
                    poller.register(child.proc.sentinel, zmq.POLLIN)
            self._poller, self._sentinels, self._poll_key = poller, sentinels, key
        return self._poller, self._sentinels

    def _poll_once(self, timeout_ms: int) -> None:
        poller, sentinels = self._watch_set()
        try:
            events = poller.poll(timeout_ms)
        except zmq.ZMQError as exc:
            if exc.errno == errno.EINTR:
                return
            raise
        for sock, _ in events:
            if sock is self._backend:
                # Actor traffic first and in bulk: it carries the audio timeline.
                for _ in range(1000):
                    self._on_backend(self._backend.recv_multipart())
                    if not self._backend.poll(0):
                        break
            elif sock in self._fronts:
                self._on_client(sock.recv_multipart(), sock)
            elif sock in self._pubs:
                self._on_subscription(sock.recv())
            elif sock in sentinels:
                self._on_child_exit(sentinels[sock])
        self._housekeeping()

    def _housekeeping(self) -> None:
        self.live.poll()
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None and now >= child.restart_at:
                log.warning(
                    "restarting %s (restart %d of %d)",
                    child.role,
                    child.restarts,
                    self.settings.supervisor.max_restarts,
                )
                self._spawn(child)
            elif child.proc is not None and not child.ready and child.restart_at is None and now > child.ready_deadline:
                child.last_error = f"not ready within {self.settings.supervisor.ready_timeout_s:g} s"
                child.proc.kill()
            elif child.ready and child.restarts and now - child.started_at > HEALTHY_RESET_S:
                child.restarts = 0
        overdue = [r for r in self.requests.values() if r.silence_deadline is not None and now > r.silence_deadline]
        for rec in overdue:
            log.warning("no silence report for cancelled %s in %.1f s; closing it", rec.request_id, SILENCE_REPORT_S)
            self._publish(wire.Silenced(request_id=rec.request_id, t_silent=now, was_audible=False))
            self._finish(rec, "cancelled", rec.reason)

    def _on_subscription(self, frame: bytes) -> None:
        """XPUB hands us ``\x01topic`` for each subscribe (``\x00topic`` to unsubscribe). Any
        event a subscriber receives proves its subscription live; this one is sent for that."""
        if frame[:1] == b"\x01":
            self.subscriptions += 1
            self._publish(wire.Subscribed(subscribers=self.subscriptions))

    # ------------------------------------------------------------------ children
    def _on_child_exit(self, child: Child) -> None:
        child.proc.join(0.5)
        code = child.proc.exitcode
        # Collect anything it said before dying (its own error report).
        while self._backend.poll(0):
            self._on_backend(self._backend.recv_multipart())
        child.ready = False
        max_restarts = self.settings.supervisor.max_restarts
        detail = f" ({child.last_error})" if child.last_error else ""
        if child.restarts >= max_restarts:
            msg = (
                f"{child.role} (pid {child.proc.pid}) exited with code {code}{detail}; "
                f"gave up after {max_restarts} restarts"
            )
            log.error(msg)
            self._publish(wire.Error(kind="actor_failed", message=msg, actor=child.role))
            self._fail_active(f"{child.role} failed", child.role)
            self.exit_code = 1
            self.request_stop(f"{child.role} failed")
            child.restart_at = float("inf")
            return
        child.restarts += 1
        # The first restart is at once: one crash mid-narration costs the listener only the new
        # process's start (the resume tests bound the silence at 1.5 s). Repeated crashes of the
        # same actor back off, doubling from restart_backoff_s.
        first_backoff = self.settings.supervisor.restart_backoff_s
        backoff = 0.0 if child.restarts == 1 else first_backoff * (2 ** (child.restarts - 2))
        msg = (
            f"{child.role} (pid {child.proc.pid}) exited with code {code}{detail}; "
            f"restarting in {backoff:.2f} s (restart {child.restarts} of {max_restarts})"
        )
        if child.role == TTS_WORKER:
            resuming = self._hold_for_resume()
            if resuming:
                msg += f"; {resuming} request(s) resume when it is back"
        elif child.role == AUDIO_CONSUMER:
            resuming = self._hold_for_consumer()
            if resuming:
                msg += f"; {resuming} request(s) play on when it is back"
        log.error(msg)
        self._publish(wire.Error(kind="actor_crashed", message=msg, actor=child.role))
        self._fail_active(f"{child.role} crashed", child.role)
        child.last_error = ""
        child.pending.clear()
        child.restart_at = time.monotonic() + backoff

    def _keep_segment(self, seg: wire.Segment) -> None:
        """Remember what the consumer was told, until it is played: a new consumer is told again."""
        rec = self.requests.get(seg.request_id)
        if rec is None or rec.status != "active":
            return
        rec.segments.append(seg)
        if len(rec.segments) > 64 and self._ring is not None:
            played = self._ring.read_index
            rec.segments = [s for s in rec.segments if s.end > played or s.last]

    def _hold_for_consumer(self) -> int:
        """The consumer died: its requests wait for the new one, told again by ``_reannounce``
        what the ring holds from the start of the chunk the old one was playing. What the old one
        had taken of that chunk may never have left its device buffer, so the new one moves its
        read index back and the chunk is heard again from its start (as after a lost device),
        where the ring still holds it (``AudioConsumer`` decides). The worker waits meanwhile."""
        if self._ring is None:  # a child exits before start() made the ring only to fail start-up
            return 0
        held = [r for r in self.requests.values() if self._active(r.request_id) and r.output == "stage"]
        played, rate = self._ring.read_index, self._ring.sample_rate
        cut = next((s for rec in held for s in rec.segments if s.start < played < s.end), None)
        replay_from = played
        if cut is not None:
            replay_from = min(
                s.start
                for rec in held
                for s in rec.segments
                if s.request_id == cut.request_id and s.index == cut.index and s.start <= played
            )
        replay: list[wire.Segment] = []
        for rec in held:
            rec.audio_before_s += sum(max(0, min(s.end, replay_from) - s.start) for s in rec.segments) / rate
            replay += [
                msgspec.structs.replace(s, start=max(s.start, replay_from))
                for s in rec.segments
                if s.end > replay_from or s.last
            ]
            rec.segments = []
            rec.resumed += 1
        self._replay_segments = sorted(replay, key=lambda s: (s.start, not s.last))
        return len(held)

    def _reannounce(self) -> None:
        """A new consumer is READY: tell it, in ring order, what the dead one had not played."""
        replay, self._replay_segments = self._replay_segments, []
        for seg in replay:
            self._keep_segment(seg)
            self._to_actor(AUDIO_CONSUMER, seg)

    def _hold_for_resume(self) -> int:
        """The stage's worker died: its requests wait for the new one (``_resume``) instead of failing."""
        held = [r for r in self.requests.values() if self._active(r.request_id) and r.output == "stage"]
        for rec in held:
            rec.resuming = True
        return len(held)

    def _resume(self, rec: RequestRecord) -> None:
        """Hand a restarted worker the rest of ``rec``: the text after the chunks whose audio is
        already in the ring, numbered on from there. The chunk that was being synthesized is
        spoken again from its start (its first part may have been heard)."""
        from actors.text.resume import resume_point

        rec.resuming = False
        done = {i for i, c in rec.chunks.items() if c.synthesized}
        first = next((i for i in range(len(rec.chunks) + 1) if i not in done), 0)
        sources = [rec.chunks[i].source for i in range(first)]
        prelude = [p for p in rec.texts if p.source == "prelude"]
        narrative = [p for p in rec.texts if p.source == "narrative"]
        parts = ["".join(p.text for p in prelude), "".join(p.text for p in narrative)]
        point = resume_point(parts, sources) if rec.opened is not None else None
        if point is None or rec.opened is None:
            self._to_actor(TTS_WORKER, wire.Cancel(request_id=rec.request_id))
            self._finish(rec, "failed", "tts_worker crashed and its text could not be lined up to resume")
            return
        part, offset = point
        prelude_final = any(p.final for p in prelude)
        in_prelude = rec.opened.has_prelude and (part == 0 or not prelude_final)
        self._to_actor(
            TTS_WORKER, msgspec.structs.replace(rec.opened, has_prelude=in_prelude, first_index=first)
        )
        if in_prelude:
            rest = parts[0][offset:] if part == 0 else ""
            self._to_actor(TTS_WORKER, wire.TextPiece(request_id=rec.request_id, source="prelude", text=rest,
                                                      final=prelude_final))  # fmt: skip
        rest = parts[1][offset:] if part == 1 else parts[1]
        if rest or any(p.final for p in narrative):
            self._to_actor(TTS_WORKER, wire.TextPiece(request_id=rec.request_id, source="narrative", text=rest,
                                                      final=any(p.final for p in narrative)))  # fmt: skip
        rec.resumed += 1
        log.warning("%s resumes at chunk %d on the restarted tts_worker", rec.request_id, first)

    def _fail_active(self, reason: str, role: Role) -> None:
        """Requests in flight lose state held by a dead actor: report them failed and clear them
        from the others, so no half-spoken request lingers or resurfaces later. Only the dead
        actor's side is touched: a crashed gateway fails its renders, never the stage."""
        output: wire.Output = "render" if role in RENDER_ROLES else "stage"
        if role == AUDIO_CONSUMER:
            return  # its requests play on when the new consumer is READY (_hold_for_consumer)
        active = [
            r for r in self.requests.values() if r.status == "active" and r.output == output and not r.resuming
        ]
        if role in wire.TEXT_ROLES:
            # A language model's turn cannot be continued by another process mid-sentence (its
            # generation state died with it): turns end failed, with the reason. A speak never
            # passes through the text actors, so it plays on.
            for rec in [r for r in active if r.turn]:
                self._to_actors(wire.Cancel(request_id=rec.request_id), self._side_roles(output))
                self._finish(rec, "failed", reason)
            return
        if not active:
            return
        self._to_actors(wire.Cancel(all=True), self._side_roles(output))
        for rec in active:
            self._finish(rec, "failed", reason)

    def _to_actor(self, role: Role, msg: wire.Message) -> None:
        child = self.children[role]
        frames = wire.encode(msg)
        if not child.ready:
            if len(child.pending) < PENDING_LIMIT:
                child.pending.append(frames)
            return
        try:
            self._backend.send_multipart([role.encode(), *frames])
        except zmq.ZMQError:
            child.pending.append(frames)  # not connected yet (restarting); flushed on READY

    def _to_actors(self, msg: wire.Message, roles: Iterable[Role] = ROLES) -> None:
        for role in roles:
            self._to_actor(role, msg)

    def _side_roles(self, output: wire.Output) -> tuple[Role, ...]:
        """The actors holding a request of ``output``, the audio end first (it makes the silence)."""
        return RENDER_ROLES if output == "render" else (AUDIO_CONSUMER, TTS_WORKER, NARRATIVE, PRELUDE)

    def _worker_of(self, request_id: str) -> Role:
        rec = self.requests.get(request_id)
        return TTS_RENDER if rec is not None and rec.output == "render" else TTS_WORKER

    # ------------------------------------------------------------------ actor messages
    def _on_backend(self, frames: list[bytes]) -> None:
        if len(frames) < 3:
            return
        role = frames[0].decode(errors="replace")
        child = self.children.get(role)  # a str finds its Role key (StrEnum hashes as its value)
        try:
            msg = wire.decode(frames[1:])
        except wire.WireError as exc:
            log.error("bad message from %s: %s", role, exc.message)
            return
        if isinstance(msg, wire.Ready):
            if child is None:
                return
            child.ready = True
            child.info = dict(msg.info)
            log.info("%s ready (pid %d) %s", role, msg.pid, json.dumps(msg.info))
            if role == AUDIO_CONSUMER:
                self._reannounce()  # before what was held for it: the ring's order
            if role == TTS_WORKER:
                # Resumed requests first: they were accepted before anything held for the new worker.
                for held_rec in [r for r in self.requests.values() if r.resuming and self._active(r.request_id)]:
                    self._resume(held_rec)
            pending, child.pending = child.pending, []
            for held in pending:
                self._backend.send_multipart([role.encode(), *held])
            for on_ready in self.ready_listeners:
                on_ready(role, child.info)
        elif isinstance(msg, wire.TextPiece):
            if self._active(msg.request_id):
                self._text_piece(msg)
        elif isinstance(msg, (wire.Segment, wire.Skip)):
            # Each worker's ring has one reader: the stage's is the consumer, the renders' the gateway.
            if isinstance(msg, wire.Segment) and role == TTS_WORKER:
                self._keep_segment(msg)
            self._to_actor(WEB if role == TTS_RENDER else AUDIO_CONSUMER, msg)
        elif isinstance(msg, wire.PreludeDone):
            if self._active(msg.request_id):
                self._to_actor(NARRATIVE, msg)
        elif isinstance(msg, wire.Metrics):
            if child is not None:
                child.metrics = dict(msg.values)
        elif isinstance(msg, wire.Silenced):
            rec = self.requests.get(msg.request_id)
            if rec is None or rec.silence_deadline is None:
                return  # it ended on its own before the cancel reached the consumer: not cancelled
            self._publish(msg)
            self._finish(rec, "cancelled", rec.reason)
        elif isinstance(msg, wire.RequestFinished):
            rec = self.requests.get(msg.request_id)
            if rec is not None and rec.status == "active":
                rec.audio_s = msg.audio_s + rec.audio_before_s
                rec.underruns = msg.underruns
                rec.device_underflows = msg.device_underflows
                if msg.ttfa_ms >= 0:
                    rec.ttfa_ms = msg.ttfa_ms
                self._finish(rec, msg.status, msg.reason)
        else:
            if isinstance(msg, wire.Error) and child is not None:
                child.last_error = msg.message
            if isinstance(msg, wire.PlaybackStarted) and self._started_before(msg.request_id):
                return  # a restarted consumer starting a request the listener already hears
            self._track(msg)
            self._publish(msg)

    def _started_before(self, request_id: str) -> bool:
        rec = self.requests.get(request_id)
        return rec is not None and rec.ttfa_ms >= 0

    def _track(self, msg: wire.Message) -> None:
        rec = self.requests.get(getattr(msg, "request_id", ""))
        if rec is None or rec.status != "active":
            return  # a late event of a finished request: its summary is final
        if isinstance(msg, wire.ChunkPlanned):
            rec.chunks[msg.index] = ChunkRecord(text=msg.text, est_s=round(msg.est_s, 3), source=msg.source)
        elif isinstance(msg, wire.ChunkSynthesized):
            chunk = rec.chunks.setdefault(msg.index, ChunkRecord())
            chunk.synthesized = True
            chunk.dur_s = round(msg.dur_s, 3)
            chunk.synth_ms = round(msg.synth_ms, 2)
            chunk.wait_ms = round(msg.wait_ms, 2)
            chunk.engine = msg.engine
            chunk.span = msg.span
        elif isinstance(msg, wire.PlaybackStarted):
            rec.ttfa_ms = msg.ttfa_ms
        elif isinstance(msg, wire.Underrun):
            rec.underruns += 1

    def _active(self, request_id: str) -> bool:
        rec = self.requests.get(request_id)
        return rec is not None and rec.status == "active" and rec.silence_deadline is None

    def _finish(self, rec: RequestRecord, status: wire.RequestStatus, reason: str = "") -> None:
        rec.status = status
        rec.reason = reason
        rec.silence_deadline = None
        rec.resuming = False
        self._publish(
            wire.RequestFinished(
                request_id=rec.request_id,
                status=status,
                audio_s=rec.audio_s,
                underruns=rec.underruns,
                ttfa_ms=rec.ttfa_ms,
                reason=reason,
                device_underflows=rec.device_underflows,
                resumed=rec.resumed,
            )
        )
        # A finished record stays (bounded) so that late events and a reused id are recognised,
        # but as a summary: what only a resume needed goes now, the chunk records (the report of
        # ``skald speak``) once FINISHED_DETAILED newer requests have finished. Keeping it all
        # grew the supervisor by ~0.08 MB per request in the 60-minute soak.
        rec.texts = []
        rec.segments = []
        rec.opened = None
        finished = [r for r in self.requests.values() if r.status != "active"]
        for old in finished[: max(0, len(finished) - FINISHED_KEPT)]:
            self.requests.pop(old.request_id, None)
        for old in finished[max(0, len(finished) - FINISHED_KEPT) : max(0, len(finished) - FINISHED_DETAILED)]:
            old.chunks = {}

    def _publish(self, msg: wire.Message) -> None:
        for listener in self.listeners:
            try:
                listener(msg)
            except Exception:
                log.exception("event listener failed")
        if self._ctx is not None:
            frames = wire.encode(msg)
            for pub in self._pubs:
                pub.send_multipart(frames)

    # ------------------------------------------------------------------ client messages
    def _on_client(self, frames: list[bytes], sock: zmq.Socket[Any]) -> None:
        # ROUTER gives [identity, (empty delimiter from REQ), kind, payload]; the reply goes back
        # on the socket the request came in on (ipc or tcp).
        split = 2 if len(frames) >= 2 and frames[1] == b"" else 1
        envelope, body = frames[:split], frames[split:]
        reply = self.submit(body, envelope)
        for msg in reply:
            sock.send_multipart([*envelope, *wire.encode(msg)])

    def submit(self, frames: list[bytes] | wire.Message, client: list[bytes] | None = None) -> list[wire.Message]:
        """Handle one client request; return the direct replies. Never raises for bad input."""
        try:
            if isinstance(frames, wire.Message):
                frames = wire.encode(frames)
            msg = wire.decode(frames, self.settings.protocol.max_message_bytes)
            if msg.KIND not in wire.CLIENT_REQUESTS:
                raise wire.WireError("unknown_kind", f"{msg.KIND.decode()} is not a client request")
            return self._dispatch(msg, client)
        except wire.WireError as exc:
            err = wire.Error(kind=exc.kind, message=exc.message, actor="supervisor", request_id=exc.request_id)
            self._publish(err)
            return [err]
        except Exception as exc:  # a bug must not take the server down with it
            log.exception("internal error handling a client request")
            err = wire.Error(kind="internal", message=f"{type(exc).__name__}: {exc}", actor="supervisor")
            self._publish(err)
            return [err]

    def _dispatch(self, msg: wire.Message, client: list[bytes] | None) -> list[wire.Message]:
        limit = self.settings.protocol.max_text_chars
        if isinstance(msg, wire.Speak):
            return [self._speak(msg, client)]
        if isinstance(msg, wire.Turn):
            return [self._turn(msg, client)]
        if isinstance(msg, wire.Append):
            rec = self._open_stream(msg.request_id)
            wire.validate_text(msg.text, limit, allow_empty=True, request_id=msg.request_id)
            self._text_to_worker(msg.request_id, "narrative", msg.text, final=False)
            return [wire.Accepted(request_id=rec.request_id, t_accepted=time.monotonic())]
        if isinstance(msg, wire.End):
            rec = self._open_stream(msg.request_id)
            rec.text_open = False
            self._text_to_worker(msg.request_id, "narrative", "", final=True)
            return [wire.Accepted(request_id=rec.request_id, t_accepted=time.monotonic())]
        if isinstance(msg, wire.Cancel):
            return [self._cancel(msg)]
        if isinstance(msg, wire.StatusQuery):
            return [self.status()]
        if isinstance(msg, (wire.ConfigGet, wire.ConfigSet)):
            return [self.live.handle(msg)]
        if isinstance(msg, wire.MetricsQuery):
            return [wire.MetricsText(text=self.metrics.exposition())]
        raise wire.WireError("unknown_kind", f"{msg.KIND.decode()} is not a client request")

    def _new_request_id(self, requested: str) -> str:
        request_id = requested or uuid.uuid4().hex[:12]
        if len(request_id) > 128:
            raise wire.WireError("bad_request", "request_id is longer than 128 characters")
        if request_id in self.requests and self.requests[request_id].status == "active":
            raise wire.WireError("bad_request", f"request {request_id!r} is already active", request_id)
        return request_id

    def _text_to_worker(self, request_id: str, source: wire.TextSource, text: str, final: bool) -> None:
        """The orchestrator's own text, straight to the worker (no text actor in between). The
        worker orders prelude before narrative (``TtsWorker._text``), so this needs no care."""
        self._text_piece(wire.TextPiece(request_id=request_id, source=source, text=text, final=final))

    def _text_piece(self, piece: wire.TextPiece) -> None:
        """Hand a request's text to its worker, and keep it: a restarted worker resumes from it."""
        rec = self.requests.get(piece.request_id)
        if rec is not None and rec.output == "stage":
            rec.texts.append(piece)
            if rec.resuming:
                return  # sent with the rest when the worker is back (_resume)
        self._to_actor(self._worker_of(piece.request_id), piece)

    def _barge_in(self, policy: wire.BargeIn) -> None:
        """``interrupt``: everything still playing or queued on the stage stops before the new
        request starts (renders are not on the stage: they go on)."""
        if policy == "interrupt" and any(r.status == "active" and r.output == "stage" for r in self.requests.values()):
            self._cancel(wire.Cancel(all=True), reason="interrupted by a new request")

    def _turn(self, msg: wire.Turn, client: list[bytes] | None) -> wire.Message:
        limit = self.settings.protocol.max_text_chars
        request_id = self._new_request_id(msg.request_id)
        backends = {role: getattr(self.settings.actors, role).backend for role in (PRELUDE, NARRATIVE)}
        if "text" in backends.values():
            raise wire.WireError(
                "bad_request",
                "a turn needs language-model backends for both text actors; configured: "
                + ", ".join(f"actors.{role}.backend = {b!r}" for role, b in backends.items()),
                request_id,
            )
        wire.validate_text(msg.player_action, limit, request_id=request_id)
        wire.validate_text(msg.context, limit, allow_empty=True, request_id=request_id)
        self._barge_in(msg.barge_in)
        now = time.monotonic()
        self.requests[request_id] = RequestRecord(request_id, client, now, False, False, turn=True)
        opened = wire.OpenRequest(
            request_id=request_id, voice=msg.voice, priority=msg.priority, t_accepted=now, has_prelude=True
        )
        self.requests[request_id].opened = opened
        self._to_actor(TTS_WORKER, opened)
        forwarded = wire.Turn(
            request_id=request_id,
            context=msg.context,
            player_action=msg.player_action,
            voice=msg.voice,
            priority=msg.priority,
        )
        # Both models start at the same moment; the narrative gets the prelude's text later
        # (PreludeDone) and continues it.
        self._to_actors(forwarded, (PRELUDE, NARRATIVE))
        accepted = wire.Accepted(request_id=request_id, t_accepted=now)
        self._publish(accepted)
        return accepted

    def _speak(self, msg: wire.Speak, client: list[bytes] | None) -> wire.Message:
        limit = self.settings.protocol.max_text_chars
        request_id = self._new_request_id(msg.request_id)
        wire.validate_text(msg.text, limit, allow_empty=msg.streaming or bool(msg.prelude), request_id=request_id)
        if msg.prelude:
            wire.validate_text(msg.prelude, limit, request_id=request_id)
        if not 0.25 <= msg.speed <= 4.0:
            raise wire.WireError("bad_request", f"speed {msg.speed:g} is outside 0.25-4.0", request_id)
        render = msg.output == "render"
        if render and not self.gateway:
            raise wire.WireError(
                "bad_request", "output 'render' needs the HTTP gateway (skald serve --http HOST:PORT)", request_id
            )
        if not render:
            self._barge_in(msg.barge_in)
        now = time.monotonic()
        self.requests[request_id] = RequestRecord(
            request_id, client, now, msg.streaming, msg.streaming, output=msg.output
        )
        has_prelude = bool(msg.prelude)
        opened = wire.OpenRequest(
            request_id=request_id,
            voice=msg.voice,
            priority=msg.priority,
            t_accepted=now,
            has_prelude=has_prelude,
            speed=msg.speed,
        )
        self.requests[request_id].opened = opened
        self._to_actor(TTS_RENDER if render else TTS_WORKER, opened)
        if has_prelude:
            self._text_to_worker(request_id, "prelude", msg.prelude, final=True)
        if not msg.streaming:
            self._text_to_worker(request_id, "narrative", msg.text, final=True)
        elif msg.text:
            self._text_to_worker(request_id, "narrative", msg.text, final=False)
        accepted = wire.Accepted(request_id=request_id, t_accepted=now)
        self._publish(accepted)
        return accepted

    def _open_stream(self, request_id: str) -> RequestRecord:
        rec = self.requests.get(request_id)
        if rec is None or rec.status != "active":
            raise wire.WireError("bad_request", f"no active request {request_id!r}", request_id)
        if not rec.streaming or not rec.text_open:
            raise wire.WireError(
                "bad_request", f"request {request_id!r} takes no more text (not streaming, or ended)", request_id
            )
        return rec

    def _cancel(self, msg: wire.Cancel, reason: str = "cancelled by client") -> wire.Message:
        """``all`` stops the stage (a player's interrupt); a render is cancelled by its id only."""
        output: wire.Output = "stage"
        if msg.all:
            targets = [r for r in self.requests.values() if self._active(r.request_id) and r.output == "stage"]
            msg = wire.Cancel(all=True, request_ids=[r.request_id for r in targets])
        else:
            rec = self.requests.get(msg.request_id)
            if rec is None:
                raise wire.WireError("bad_request", f"no request {msg.request_id!r} to cancel", msg.request_id)
            targets = [rec] if self._active(rec.request_id) else []
            output = rec.output
        # The audio end first: it is the one that makes the silence.
        self._to_actors(msg, self._side_roles(output))
        now = time.monotonic()
        for rec in targets:
            if rec.output == "render":
                # No speaker: the render's bytes stop now. Silenced, then finished, as on the stage.
                self._publish(wire.Silenced(request_id=rec.request_id, t_silent=now, was_audible=bool(rec.chunks)))
                self._finish(rec, "cancelled", reason)
            else:
                # request_finished waits for the consumer's Silenced (docs/protocol.md: the contract).
                rec.reason = reason
                rec.silence_deadline = now + SILENCE_REPORT_S
        return wire.Accepted(request_id="*" if msg.all else msg.request_id, t_accepted=time.monotonic())

    def status(self) -> wire.Status:
        ring: dict[str, Any] = {}
        if self._ring is not None:
            ring = {
                "name": self.ring_name,
                "sample_rate": self._ring.sample_rate,
                "buffered_s": round(self._ring.buffer_length_seconds(), 3),
                "capacity_frames": self._ring.capacity_frames,
                "max_fill_s": self.settings.ring.max_fill_s,
            }
        return wire.Status(
            actors={
                c.role: {
                    "pid": c.proc.pid if c.proc is not None else None,
                    "ready": c.ready,
                    "state": _child_state(c),
                    "restarts": c.restarts,
                    "info": c.info,
                    "metrics": c.metrics,
                }
                for c in self.children.values()
            },
            requests=[self._request_status(r) for r in list(self.requests.values()) if r.status == "active"],
            ring=ring,
            uptime_s=round(time.monotonic() - self._started, 3),
            gpu=self.gpu.report() if self.gpu is not None else {},
            recent=self.metrics.recent(),
        )

    @staticmethod
    def _request_status(r: RequestRecord) -> dict[str, Any]:
        done = [c for c in list(r.chunks.values()) if c.engine]
        return {
            "request_id": r.request_id,
            "status": r.status,
            "chunks": len(r.chunks),
            "ttfa_ms": r.ttfa_ms,
            # Progress (``skald top``): chunks synthesized of those planned so far, and their audio.
            "chunks_synthesized": len(done),
            "audio_s": round(sum(c.dur_s for c in done), 3),
            "synth_ms": round(sum(c.synth_ms for c in done), 1),
            "wait_ms": round(sum(c.wait_ms for c in done), 1),
            "age_s": round(time.monotonic() - r.t_accepted, 3),
            "text_open": r.text_open,
            "output": r.output,  # stage, or render (the HTTP gateway's)
            "resumed": r.resumed,
        }

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop every actor and release every resource; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self.metrics.close()  # first: no scrape thread may read the ring once it is unmapped
        timeout = self.settings.supervisor.shutdown_timeout_s
        if self._ctx is not None:
            shutdown_log.info("skald.shutdown: stage 1, asking actors to stop (%s)", self.stop_reason or "done")
            for child in self.children.values():
                if child.ready and child.proc is not None and child.proc.is_alive():
                    with contextlib.suppress(zmq.ZMQError):
                        self._backend.send_multipart(
                            [child.role.encode(), *wire.encode(wire.Shutdown(reason=self.stop_reason))]
                        )
            shutdown_log.info("skald.shutdown: stage 2, joining actors (deadline %.1f s)", timeout)
            _shutdown_children(self.children.values(), timeout)
            shutdown_log.info("skald.shutdown: stage 3, closing sockets")
            for sock in (*self._fronts, *self._pubs, self._backend):
                if sock is not None:  # the backend is None when start() failed binding it
                    sock.close(linger=0)
            if self._curve is not None:
                self._curve.stop()
                self._curve = None
            self._ctx.term()
            self._ctx = None
        else:
            _shutdown_children(self.children.values(), timeout)
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._ring is not None:
            shutdown_log.info("skald.shutdown: stage 4, removing ring %s and %s", self.ring_name, self.run_dir)
            self._ring.close()
            self._ring.unlink()
            self._ring = None
        if self._render_ring is not None:
            self._render_ring.close()
            self._render_ring.unlink()
            self._render_ring = None
        if self._stage_tee is not None:
            self._stage_tee.close()
            self._stage_tee.unlink()
            self._stage_tee = None
        if self._run_dir_claimed:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        shutdown_log.info("skald.shutdown: done (exit code %d)", self.exit_code)

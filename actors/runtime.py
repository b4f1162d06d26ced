"""What every actor process shares: entry scaffolding, parent-death detection and socket IO.

Each role module has one ``run_<role>_process(spec)`` entry point that calls
``run_actor(spec, build)``. That function

1. sets the process title (``skald::<role>``) so ``ps`` shows what each process is;
2. arms parent-death detection: ``PR_SET_PDEATHSIG`` on Linux plus a watchdog thread that
   compares ``os.getppid()`` with the supervisor's pid. An orphaned actor stops its loop,
   and if the loop does not return within ``ORPHAN_EXIT_S`` it is ended with ``os._exit`` (and,
   should even that thread be frozen by interpreter finalization, by a kernel ``SIGALRM``) —
   after removing the run directory and shared-memory segments the dead supervisor owned,
   because nobody else is left to do it;
3. installs SIGINT/SIGTERM handlers that only set a flag;
4. starts an ``ActorIO`` thread that owns the DEALER socket to the supervisor: received frames
   are decoded and put on ``inbox`` (a ``queue.Queue``), urgent ones (cancel, shutdown) are
   also handed to the actor's ``on_eager`` hook at once so a long synthesis can be interrupted,
   and ``send()`` may be called from any thread (each thread gets its own inproc PUSH socket);
5. builds the actor (``Actor.from_spec``), sends ``Ready``, runs it, and on failure sends an
   ``Error`` before exiting non-zero. Errors cross the process boundary as data, never as
   tracebacks alone;
6. sends the actor's ``metrics()`` as a ``Metrics`` message every ``METRICS_PERIOD_S``, from a
   thread of its own, so no role loop carries a metrics clock.

Every role class (``TextSourceActor``, ``TtsWorker``, ``AudioConsumer``) implements ``Actor``
directly; in-process tests build the same classes with their plain constructors.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from actors import wire
from actors.logs import configure_logging
from config.settings import Settings

if TYPE_CHECKING:
    from typing import Self

    from actors.gpu.tiers import ResolvedGpuConfig

log = logging.getLogger("skald.actor")

#: An orphaned actor whose loop has not returned after this long is ended by force.
ORPHAN_EXIT_S = 1.0
_PR_SET_PDEATHSIG = 1
#: How often every actor reports its ``metrics()`` to the supervisor (``status`` shows them).
METRICS_PERIOD_S = 1.0

#: Sends one message to the supervisor; callable from any thread (``ActorIO.send`` in a process,
#: a list's ``append`` in in-process tests).
Send = Callable[[wire.Message], None]


@dataclass(frozen=True)
class ActorSpec:
    """Plain data handed to a spawned actor (it must pickle).

    ``gpu`` is the GPU configuration the supervisor resolved once (detection, tier, the values
    in force), typed: the worker hands it to GPU control, the consumer takes its pre-buffer.
    None when the supervisor resolved none (in-process tools)."""

    role: wire.Role
    backend_endpoint: str
    settings: dict[str, Any]
    run_dir: str
    parent_pid: int
    ring_name: str
    shm_names: tuple[str, ...] = ()
    log_level: int = logging.INFO
    gpu: ResolvedGpuConfig | None = None
    log_format: str = "text"  # "text" or "json" (``actors.logs``): every process logs alike
    #: The stage tee ring (audio consumer -> web actor), "" when no gateway runs.
    tee_name: str = ""

    @property
    def config(self) -> Settings:
        return Settings.from_dict(self.settings)


class Actor(Protocol):
    """The one contract every role class implements; ``run_actor`` drives it in a process.

    ``from_spec`` builds the actor in its process (attach the ring, load engines); ``send`` is
    thread-safe. ``ready_info`` goes out in ``Ready``. ``run`` handles ``inbox`` until ``stop``
    is set or a ``Shutdown`` arrives. ``on_eager`` is called on the IO thread the moment a
    ``Cancel`` or ``Shutdown`` arrives, before its ordered copy reaches ``inbox``; it must be
    quick and thread-safe. ``metrics`` is called every ``METRICS_PERIOD_S`` from another thread
    (read counters; take no lock the hot path holds for long). ``close`` frees what it holds.
    """

    @classmethod
    def from_spec(cls, spec: ActorSpec, send: Send) -> Self: ...

    def ready_info(self) -> dict[str, Any]: ...

    def run(self, stop: threading.Event, inbox: queue.Queue[wire.Message]) -> None: ...

    def on_eager(self, msg: wire.Message) -> None: ...

    def metrics(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


_EAGER_KINDS = frozenset({wire.Cancel.KIND, wire.Shutdown.KIND})


class ActorIO:
    """Owns the actor's DEALER socket on a thread of its own; the actor never touches it."""

    def __init__(
        self,
        role: wire.Role,
        endpoint: str,
        on_eager: Callable[[wire.Message], None] | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.role = role
        self.inbox: queue.Queue[wire.Message] = queue.Queue()
        self.on_eager = on_eager
        self._ctx = context or zmq.Context.instance()
        self._endpoint = endpoint
        self._outbox_addr = f"inproc://skald-actor-out-{id(self)}"
        self._local = threading.local()
        self._senders: list[zmq.Socket[Any]] = []
        self._senders_lock = threading.Lock()
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{role}-io", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._started.wait(5.0)

    def send(self, msg: wire.Message) -> None:
        """Queue ``msg`` for the supervisor; safe from any thread, never blocks on the network."""
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self._outbox_addr)
            self._local.sock = sock
            with self._senders_lock:
                self._senders.append(sock)
        sock.send_multipart(wire.encode(msg))

    def error(self, kind: wire.ErrorKind, message: str, request_id: str = "") -> None:
        self.send(wire.Error(kind=kind, message=message, actor=self.role, request_id=request_id))

    def _loop(self) -> None:
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, self.role.encode())
        dealer.setsockopt(zmq.LINGER, 500)
        dealer.connect(self._endpoint)
        outbox = self._ctx.socket(zmq.PULL)
        outbox.setsockopt(zmq.LINGER, 0)
        outbox.bind(self._outbox_addr)
        self._started.set()
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(outbox, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                # Both sockets wake the poll at once; the timeout only bounds how long close() waits.
                for sock, _ in poller.poll(200):
                    if sock is outbox:
                        dealer.send_multipart(outbox.recv_multipart())
                    else:
                        self._receive(dealer.recv_multipart())
            # Flush what the actor queued before stopping (final events, the error report).
            while outbox.poll(0):
                dealer.send_multipart(outbox.recv_multipart())
        finally:
            outbox.close()
            dealer.close()

    def _receive(self, frames: list[bytes]) -> None:
        try:
            msg = wire.decode(frames)
        except wire.WireError as exc:
            # Only the supervisor talks to us; a bad frame is a bug worth reporting, not dying for.
            self.error(exc.kind, f"{self.role} received a bad message: {exc.message}")
            return
        if isinstance(msg, wire.ConfigUpdate) and msg.log_level:
            logging.getLogger().setLevel(msg.log_level)  # log.level changed live: every role alike
        if msg.KIND in _EAGER_KINDS and self.on_eager is not None:
            try:
                self.on_eager(msg)
            except Exception:  # the eager hook must never kill the IO thread
                log.exception("%s: eager handler failed", self.role)
        self.inbox.put(msg)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        with self._senders_lock:
            for sock in self._senders:
                sock.close(linger=0)
            self._senders.clear()


def process_rss_mb() -> float:
    """This process's resident memory in MB for ``Metrics`` (-1.0 when it cannot be read)."""
    try:
        import psutil

        return round(psutil.Process(os.getpid()).memory_info().rss / 1e6, 1)
    except Exception:  # metrics must never take an actor down
        return -1.0


class HeapTrimmer:
    """Hands freed heap back to the OS (glibc ``malloc_trim``), at most once per ``interval_s``.

    Why: a synthesis process frees large, short-lived buffers (onnxruntime's op outputs, each
    chunk's PCM) from several threads; glibc keeps the freed pages in its per-thread arenas, and
    the 60-minute soak saw the TTS worker grow 410 -> 500 MB in steps that way. Trimming only
    where the worker waits anyway (for ring space: seconds of audio are queued) keeps it off the
    path to the next audio. ``release`` (an engine shrinking its arena) runs first, so what it
    frees goes back too; on a libc without ``malloc_trim`` (musl, macOS) only ``release`` runs."""

    def __init__(self, interval_s: float = 5.0, release: Callable[[], None] | None = None) -> None:
        self.interval_s = interval_s
        self.release = release  # run first: what it frees (an engine's arena) is trimmed with the rest
        self._last = float("-inf")
        self.trims = 0
        self._trim: Callable[[int], int] | None = None
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self._trim = None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def maybe_trim(self, now: float | None = None) -> bool:
        """Trim if the interval has passed; True when it did."""
        now = time.monotonic() if now is None else now
        if now - self._last < self.interval_s:
            return False
        self._last = now
        if self.release is not None:
            self.release()
        if self._trim is None:
            return False
        self._trim(0)
        self.trims += 1
        return True


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def hold_freed_heap() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it at every ``free``: the
    synthesis processes' allocation pattern (each chunk's PCM, an arena shrunk once a minute,
    torch's and numpy's temporaries) is many buffers of 1-30 MB, and glibc's defaults hand big
    ones back to the kernel and fault them in again for the next use (onnxruntime without its
    arena, measured: 24 % slower synthesis; 3-5 % with this). Memory goes back to the OS only
    through :class:`HeapTrimmer`. Process-wide: call it in a synthesis process's entry point.
    False on a libc without ``mallopt``."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) and libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    except (OSError, AttributeError):
        return False


def set_process_title(role: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(f"skald::{role}")
    except ImportError:
        pass


def process_thread_ids() -> list[int]:
    """The kernel ids of this process's threads (Linux; ``[0]``, the calling thread, elsewhere):
    scheduling priorities belong to threads, so a whole-process change visits each."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def set_process_nice(nice: int) -> int:
    """Set the nice value of every thread of this process (Linux nice values are per thread;
    threads started later inherit the creator's); returns the value in effect, unchanged where
    not permitted (an unprivileged user cannot go below 0)."""
    for tid in process_thread_ids():
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    return os.getpriority(os.PRIO_PROCESS, 0)


def arm_parent_death_signal() -> None:
    """Ask the kernel to send SIGTERM when our parent dies (Linux only; the watchdog covers others)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def orphan_cleanup(run_dir: str, shm_names: tuple[str, ...]) -> None:
    """Remove what a dead supervisor owned. Every orphaned child may run this; it is idempotent."""
    from shm import PcmRing

    for name in shm_names:
        with contextlib.suppress(Exception):
            PcmRing.unlink_name(name)
    if run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGINT/SIGTERM only set ``stop``; the loops notice it and unwind normally."""

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def start_metrics_tick(role: wire.Role, actor: Actor, send: Send, stop: threading.Event) -> threading.Thread:
    """Send ``actor.metrics()`` every ``METRICS_PERIOD_S`` until ``stop``; the first at once."""

    def tick() -> None:
        try:
            import psutil

            own: Any = psutil.Process(os.getpid())
            own.cpu_percent(None)  # the first call only starts the measurement
        except Exception:  # metrics must never take an actor down
            own = None
        while True:
            try:
                values = actor.metrics()
                if own is not None:
                    # CPU since the last tick, percent of one core (``skald top``).
                    values["cpu_percent"] = round(own.cpu_percent(None), 1)
                send(wire.Metrics(role=role, values=values))
            except Exception:  # metrics must never take an actor down
                log.exception("%s: metrics failed", role)
            if stop.wait(METRICS_PERIOD_S):
                return

    thread = threading.Thread(target=tick, name=f"{role}-metrics", daemon=True)
    thread.start()
    return thread


def start_parent_watchdog(spec: ActorSpec, stop: threading.Event) -> threading.Thread:
    def watch() -> None:
        while True:
            if os.getppid() != spec.parent_pid:
                # A kernel timer first: this thread is frozen once the main thread enters
                # interpreter finalization, and a finalization that blocks (a daemon thread
                # holding a lock it needs) would otherwise keep an orphan alive for ever.
                # SIGALRM's default action ends the process; nothing here installs a handler.
                signal.setitimer(signal.ITIMER_REAL, ORPHAN_EXIT_S + 0.5)
                stop.set()
                log.error("%s: supervisor (pid %d) is gone; exiting", spec.role, spec.parent_pid)
                orphan_cleanup(spec.run_dir, spec.shm_names)
                time.sleep(ORPHAN_EXIT_S)
                # The loop did not unwind in time (e.g. stuck in a long synthesis): end hard.
                orphan_cleanup(spec.run_dir, spec.shm_names)
                os._exit(3)
            time.sleep(0.1)

    thread = threading.Thread(target=watch, name=f"{spec.role}-parent-watch", daemon=True)
    thread.start()
    return thread


def run_actor(
    spec: ActorSpec, actor_class: type[Actor], prepare_threads: Callable[[], object] | None = None
) -> None:
    """Entry scaffolding shared by every ``run_<role>_process``; exits the process when done.

    ``prepare_threads`` runs before any other thread of the process exists (ZeroMQ's I/O and
    reaper threads included), for a scheduling change every later thread should inherit. It
    must run first: libzmq's new threads read their own policy and priority with two system
    calls and write them back, and abort (``Invalid argument (src/thread.cpp:315)``) when
    another thread changes them in between -- an audio consumer died at startup that way in CI."""
    if prepare_threads is not None:
        prepare_threads()
    configure_logging(spec.log_level, spec.log_format, actor=spec.role)
    set_process_title(spec.role)
    arm_parent_death_signal()
    stop = threading.Event()
    install_stop_handlers(stop)
    start_parent_watchdog(spec, stop)

    holder: dict[str, Actor] = {}

    def on_eager(msg: wire.Message) -> None:
        if isinstance(msg, wire.Shutdown):
            stop.set()
        actor = holder.get("actor")
        if actor is not None:
            actor.on_eager(msg)

    io = ActorIO(spec.role, spec.backend_endpoint, on_eager=on_eager)
    io.start()
    code = 0
    try:
        actor = actor_class.from_spec(spec, io.send)
        holder["actor"] = actor
        io.send(wire.Ready(role=spec.role, pid=os.getpid(), info=actor.ready_info()))
        log.info("%s ready (pid %d)", spec.role, os.getpid(), extra={"event": "actor_ready"})
        metrics_stop = threading.Event()
        ticker = start_metrics_tick(spec.role, actor, io.send, metrics_stop)
        try:
            actor.run(stop, io.inbox)
        finally:
            metrics_stop.set()
            ticker.join(2.0)
            actor.close()
            log.info("%s stopped", spec.role, extra={"event": "actor_stopped"})
    except Exception as exc:
        code = 1
        log.error("%s failed: %s\n%s", spec.role, exc, traceback.format_exc())
        with contextlib.suppress(Exception):
            io.error("actor_failed", f"{spec.role}: {type(exc).__name__}: {exc}")
    finally:
        io.close()
    if os.getppid() != spec.parent_pid:
        orphan_cleanup(spec.run_dir, spec.shm_names)
    # End without interpreter finalization, as multiprocessing's forked children do: the
    # actor has closed what it owns, and finalization only adds ways to hang (daemon threads
    # frozen while holding a lock, library atexit hooks) with nobody left to escalate when
    # the supervisor is gone.
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)

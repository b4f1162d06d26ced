"""The actor runtime's pieces in-process (``actors.runtime``): ``ActorIO`` against a real ROUTER
standing where the supervisor would (bad frames reported back, eager messages first, a failing
eager hook survived, a live log level, sends from many threads flushed at close), the metrics tick,
the resident-memory fallback, the orphan clean-up on a real shared-memory ring, and
``set_process_nice`` on every thread (in a child process: a nice value cannot be lowered again)."""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import actors.runtime as runtime
from actors import wire
from actors.runtime import ActorIO, orphan_cleanup, process_rss_mb, process_thread_ids, start_metrics_tick
from shm import PcmRing

ROOT = Path(__file__).resolve().parent.parent


class Supervisor:
    """The supervisor's actors ROUTER, as a test drives it: send to the actor, read what it sent."""

    def __init__(self, tmp_path: Path) -> None:
        self.ctx = zmq.Context()
        self.endpoint = f"ipc://{tmp_path}/actors.sock"
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(self.endpoint)

    def receive(self) -> tuple[bytes, wire.Message]:
        assert self.router.poll(30_000), "the actor sent nothing"
        identity, *frames = self.router.recv_multipart()
        return identity, wire.decode(frames)

    def send_frames(self, identity: bytes, frames: list[bytes]) -> None:
        self.router.send_multipart([identity, *frames])

    def close(self) -> None:
        self.router.close(0)
        self.ctx.term()


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    s = Supervisor(tmp_path)
    yield s
    s.close()


def _connected(sup: Supervisor, io: ActorIO) -> bytes:
    """The actor's identity on the ROUTER, once its first message arrived."""
    io.start()
    io.send(wire.Ready(role=io.role, pid=os.getpid()))
    identity, ready = sup.receive()
    assert isinstance(ready, wire.Ready) and identity == io.role.encode()
    return identity


def _next(inbox: queue.Queue[wire.Message]) -> wire.Message:
    return inbox.get(timeout=30)


def test_a_bad_frame_is_reported_back_and_the_actor_carries_on(sup: Supervisor) -> None:
    io = ActorIO(wire.Role.TTS_WORKER, sup.endpoint, context=sup.ctx)
    identity = _connected(sup, io)
    try:
        sup.send_frames(identity, [b"speak", b"\xc1 not msgpack"])
        _, reported = sup.receive()
        assert isinstance(reported, wire.Error) and reported.actor == "tts_worker"
        assert reported.message.startswith("tts_worker received a bad message: ")
        sup.send_frames(identity, wire.encode(wire.StatusQuery()))
        assert isinstance(_next(io.inbox), wire.StatusQuery)  # the loop lives on
        assert io.inbox.empty()  # the bad frame never reached the actor
    finally:
        io.close()


def test_eager_messages_reach_the_hook_before_the_inbox_even_when_it_fails(
    sup: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, bool]] = []

    def on_eager(msg: wire.Message) -> None:
        # (kind, whether this message is in the inbox yet: it must not be)
        seen.append((msg.KIND.decode(), any(m is msg for m in list(io.inbox.queue))))
        if isinstance(msg, wire.Shutdown):
            raise RuntimeError("hook broke")

    io = ActorIO(wire.Role.AUDIO_CONSUMER, sup.endpoint, on_eager=on_eager, context=sup.ctx)
    identity = _connected(sup, io)
    try:
        with caplog.at_level(logging.ERROR, logger="skald.actor"):
            for msg in (wire.Cancel(request_id="r"), wire.End(request_id="r"), wire.Shutdown()):
                sup.send_frames(identity, wire.encode(msg))
            kinds = [type(_next(io.inbox)) for _ in range(3)]
        assert kinds == [wire.Cancel, wire.End, wire.Shutdown]  # everything in order in the inbox
        assert seen == [("cancel", False), ("shutdown", False)]  # the hook first; End is not eager
        assert "audio_consumer: eager handler failed" in caplog.text and "hook broke" in caplog.text
    finally:
        io.close()


def test_a_config_update_with_a_log_level_sets_the_root_logger(sup: Supervisor) -> None:
    root = logging.getLogger()
    before = root.level
    io = ActorIO(wire.Role.PRELUDE, sup.endpoint, context=sup.ctx)
    identity = _connected(sup, io)
    try:
        sup.send_frames(identity, wire.encode(wire.ConfigUpdate(changed=["log.level"], log_level=logging.DEBUG)))
        assert isinstance(_next(io.inbox), wire.ConfigUpdate)
        assert root.level == logging.DEBUG
    finally:
        io.close()
        root.setLevel(before)


def test_sends_from_many_threads_all_arrive_and_close_flushes_them(sup: Supervisor) -> None:
    io = ActorIO(wire.Role.NARRATIVE, sup.endpoint, context=sup.ctx)
    _connected(sup, io)

    def burst(n: int) -> None:
        for i in range(50):
            io.send(wire.Underrun(request_id=f"t{n}", frames=i, count=i))

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    io.error("engine_failed", "last words", request_id="t0")
    io.close()  # what was queued before close still goes out
    got = [sup.receive()[1] for _ in range(201)]
    underruns = [m for m in got if isinstance(m, wire.Underrun)]
    for n in range(4):  # each thread's messages in its own order
        assert [m.frames for m in underruns if m.request_id == f"t{n}"] == list(range(50))
    # (Each thread has its own socket: order holds per thread, not across them.)
    assert [m for m in got if isinstance(m, wire.Error)] == [
        wire.Error(kind="engine_failed", message="last words", actor="narrative", request_id="t0")
    ]


def test_rss_is_minus_one_without_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    assert process_rss_mb() > 0
    monkeypatch.setitem(sys.modules, "psutil", None)
    assert process_rss_mb() == -1.0


class CountingActor:
    """The part of the ``Actor`` contract the metrics tick uses; its second call fails."""

    def __init__(self) -> None:
        self.calls = 0

    def metrics(self) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 2:
            raise ValueError("counter unreadable")
        return {"calls": self.calls}


@pytest.mark.parametrize("with_psutil", [True, False])
def test_the_metrics_tick_survives_a_failing_call_and_stops_when_told(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, with_psutil: bool
) -> None:
    monkeypatch.setattr(runtime, "METRICS_PERIOD_S", 0.01)
    if not with_psutil:
        monkeypatch.setitem(sys.modules, "psutil", None)
    sent: list[wire.Message] = []
    third = threading.Event()

    def send(msg: wire.Message) -> None:
        sent.append(msg)
        if len(sent) == 2:
            third.set()

    stop = threading.Event()
    with caplog.at_level(logging.ERROR, logger="skald.actor"):
        thread = start_metrics_tick(wire.Role.TTS_WORKER, CountingActor(), send, stop)  # type: ignore[arg-type]
        assert third.wait(30)
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    first, after_failure = sent[0], sent[1]
    assert isinstance(first, wire.Metrics) and first.role == "tts_worker" and first.values["calls"] == 1
    assert isinstance(after_failure, wire.Metrics) and after_failure.values["calls"] == 3
    assert ("cpu_percent" in first.values) is with_psutil
    assert "tts_worker: metrics failed" in caplog.text


def test_orphan_cleanup_removes_the_ring_and_run_dir_and_may_run_twice(tmp_path: Path) -> None:
    name = f"skald-test-orphan-{uuid.uuid4().hex[:8]}"
    ring = PcmRing.create(name, 1024, 1000, 1.0)
    ring.close()
    run_dir = tmp_path / "run"
    (run_dir / "sub").mkdir(parents=True)
    assert Path(f"/dev/shm/{name}").exists()
    orphan_cleanup(str(run_dir), (name, "skald-test-never-created"))
    assert not Path(f"/dev/shm/{name}").exists() and not run_dir.exists()
    orphan_cleanup(str(run_dir), (name,))  # another orphan got there first: nothing to do, no error
    orphan_cleanup("", ())


def test_process_nice_reaches_every_thread_and_cannot_go_back_down() -> None:
    # In a child: a raised nice value cannot be lowered again by an unprivileged process.
    code = (
        "import os, threading, json\n"
        "from actors.runtime import set_process_nice, process_thread_ids\n"
        "ready, done = threading.Event(), threading.Event()\n"
        "t = threading.Thread(target=lambda: (ready.set(), done.wait())); t.start(); ready.wait()\n"
        "raised = set_process_nice(os.getpriority(os.PRIO_PROCESS, 0) + 5)\n"
        "each = [os.getpriority(os.PRIO_PROCESS, tid) for tid in process_thread_ids()]\n"
        "lowered = set_process_nice(raised - 10)\n"
        "done.set(); t.join()\n"
        # CAP_SYS_NICE (bit 23 of the effective set) is what lowering needs: root without it
        # (a container's default set) is refused like any user.
        "cap = int(next(l for l in open('/proc/self/status') if l.startswith('CapEff')).split()[1], 16)\n"
        "print(json.dumps([raised, each, lowered, bool(cap >> 23 & 1)]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    raised, each, lowered, may_lower = json.loads(out.stdout)
    assert len(each) >= 2 and set(each) == {raised}  # the main thread and the other one
    assert lowered == (raised - 10 if may_lower else raised)


def test_thread_ids_are_this_process_threads() -> None:
    ids = process_thread_ids()
    assert threading.get_native_id() in ids


CHILD = """
import os, sys, threading
from actors import wire
from actors.runtime import ActorSpec, run_actor

class BrokenActor:
    '''An actor whose build fails, as one whose model file is missing.'''
    @classmethod
    def from_spec(cls, spec, send):
        raise RuntimeError("model file missing")

THREADS_AT_PREPARE = []

def count_threads():
    THREADS_AT_PREPARE.append(len(os.listdir("/proc/self/task")))

class IdleActor:
    '''An actor that only waits for its stop.'''
    @classmethod
    def from_spec(cls, spec, send):
        return cls()
    def ready_info(self): return {"threads_at_prepare": THREADS_AT_PREPARE}
    def run(self, stop, inbox): stop.wait(60)
    def on_eager(self, msg): pass
    def metrics(self): return {}
    def close(self): pass

endpoint, run_dir, shm, kind, parent = sys.argv[1:6]
spec = ActorSpec(role=wire.Role.TTS_WORKER, backend_endpoint=endpoint, settings={}, run_dir=run_dir,
                 parent_pid=int(parent), ring_name=shm, shm_names=(shm,))
run_actor(spec, BrokenActor if kind == "broken" else IdleActor,
          prepare_threads=count_threads if kind == "prepared" else None)
"""


def _actor_process(sup: Supervisor, run_dir: Path, shm: str, kind: str, parent: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", CHILD, sup.endpoint, str(run_dir), shm, kind, str(parent)]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_an_actor_that_fails_to_build_reports_it_as_data_and_exits_1(sup: Supervisor, tmp_path: Path) -> None:
    child = _actor_process(sup, tmp_path / "run", "skald-test-none", "broken", os.getpid())
    try:
        identity, error = sup.receive()
        assert identity == b"tts_worker"
        assert error == wire.Error(
            kind="actor_failed", message="tts_worker: RuntimeError: model file missing", actor="tts_worker"
        )
        assert child.wait(30) == 1
        assert "model file missing" in (child.stderr.read() if child.stderr else "")  # the traceback, logged
    finally:
        _reap(child)


def test_prepare_threads_runs_while_the_process_has_one_thread(sup: Supervisor, tmp_path: Path) -> None:
    """The audio consumer's scheduling change (SCHED_FIFO, nice -10) must come before ZeroMQ
    starts its I/O threads: a libzmq thread that saw its policy change between reading and writing
    it back aborted the process (CI: ``Invalid argument (src/thread.cpp:315)``). So the hook runs
    once, before the actor's sockets exist, while the main thread is the only one."""
    child = _actor_process(sup, tmp_path / "run", "skald-test-none", "prepared", os.getpid())
    try:
        identity, ready = sup.receive()
        assert identity == b"tts_worker"
        assert isinstance(ready, wire.Ready)
        assert ready.info == {"threads_at_prepare": [1]}
        sup.send_frames(identity, wire.encode(wire.Shutdown()))
        assert child.wait(30) == 0
    finally:
        _reap(child)


def _reap(child: subprocess.Popen[str]) -> None:
    """Kill an actor process a test started (if still running) and close its pipes."""
    child.kill()
    child.wait()
    for stream in (child.stdout, child.stderr):
        if stream:
            stream.close()


def test_an_orphaned_actor_removes_what_its_supervisor_owned(sup: Supervisor, tmp_path: Path) -> None:
    name = f"skald-test-orphan-{uuid.uuid4().hex[:8]}"
    PcmRing.create(name, 1024, 1000, 1.0).close()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # A parent pid that is not its parent: to the watchdog, the supervisor is already gone.
    not_parent = os.getppid()
    child = _actor_process(sup, run_dir, name, "idle", not_parent)
    try:
        assert child.wait(30) in (0, 3)  # its loop unwound (0) or the watchdog ended it hard (3)
        assert not run_dir.exists() and not Path(f"/dev/shm/{name}").exists()
    finally:
        _reap(child)
        if Path(f"/dev/shm/{name}").exists():  # the test failed: leave no segment behind
            PcmRing.unlink_name(name)


def test_the_heap_trimmer_gives_memory_back_at_most_once_per_interval() -> None:
    trimmer = runtime.HeapTrimmer(interval_s=5.0)
    assert trimmer.available  # glibc: CI and this image
    assert trimmer.maybe_trim(now=100.0) is True
    assert trimmer.maybe_trim(now=104.9) is False  # inside the interval: no second walk of the heap
    assert trimmer.maybe_trim(now=105.0) is True
    assert trimmer.trims == 2


def test_the_heap_trimmer_runs_its_release_first_once_per_interval() -> None:
    order: list[str] = []
    trimmer = runtime.HeapTrimmer(interval_s=5.0, release=lambda: order.append("release"))
    real_trim = trimmer._trim
    assert real_trim is not None

    def trim(pad: int) -> int:
        order.append("trim")
        return real_trim(pad)

    trimmer._trim = trim
    assert trimmer.maybe_trim(now=100.0) is True
    assert trimmer.maybe_trim(now=101.0) is False
    assert order == ["release", "trim"]  # what the release frees (an engine's arena) is trimmed too


def test_the_heap_trimmer_does_nothing_without_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(_name: str) -> Any:
        raise OSError("libc.so.6: cannot open shared object file")  # musl, macOS

    monkeypatch.setattr(runtime.ctypes, "CDLL", no_libc)
    released: list[int] = []
    trimmer = runtime.HeapTrimmer(release=lambda: released.append(1))
    assert not trimmer.available
    assert trimmer.maybe_trim(now=100.0) is False and trimmer.trims == 0
    assert released == [1]  # the engine still shrinks its arena; only the trim is missing


def test_a_synthesis_process_holds_freed_heap_for_reuse() -> None:
    # In a child: the setting is process-wide and must not change the test process's malloc.
    code = "from actors.runtime import hold_freed_heap; print(hold_freed_heap())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "True"

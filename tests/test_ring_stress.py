"""shm.PcmRing across real processes, driven the way production drives it.

The stress test runs three processes as skald does: this one creates the ring (the supervisor),
a spawned producer pushes as ``TtsWorker._push`` does (``push``; on a short push
``wait_for_space(min(rest, 4096), timeout=0.05, cancel=...)``; then one ``Segment``-like
announcement of the frames it wrote), and a spawned consumer reads as the audio callback does
(``tests/support/ring_reader.WindowedReader``: announced frames only, skip windows jumped,
``read_into(start_index=r)`` per piece, one ``commit_read`` per block). The announcements and the
cancels travel over a pipe, as ``Segment`` and ``Cancel`` travel over ZeroMQ. The consumer checks
every frame it plays against the frame pushed at that ring index, and also reads right up to the
write index (frames not announced yet, which only the ring's own ordering protects).

The liveness tests kill or stop a real peer process and check what production relies on: the
worker's ``wait_for_space`` raises ``PeerDeadError`` instead of waiting on a dead consumer, and
a restarted actor takes over a dead one's role where it left off.
"""

from __future__ import annotations

import glob
import itertools
import multiprocessing
import os
import signal
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from shm import PcmRing, PeerDeadError
from tests.support.ring_reader import PATTERN_PERIOD, WindowedReader, pattern
from tests.support.untraced import coverage_paused

_SPAWN = multiprocessing.get_context("spawn")
_seq = itertools.count()

STRESS_FRAMES = 12_000_000  # pushed; about 10 % is skipped, the rest is played and checked
MIN_PLAYED = 10_000_000
MAX_PUSH = 4096  # the worker pushes joiner output blocks; at most half the ring here
MAX_CALLBACK = 1024  # the callback's block (128 in production; hosts may hand out more)
CAPACITY = 8192  # max_fill == capacity: the producer writes right behind the consumer
# Generous bound on the whole stress run (spawn + 1.2e7 frames on a loaded 2-core machine takes
# well under a minute); only a hang reaches it.
STRESS_TIMEOUT_S = 900


def seg_name() -> str:
    """Unique per test process, so concurrent test runs never collide."""
    return f"skald-test-{os.getpid()}-{next(_seq)}"


@pytest.fixture(autouse=True)
def no_leftover_segments() -> Iterator[None]:
    """Every test must remove the segments it made."""
    yield
    left = sorted(glob.glob(f"/dev/shm/skald-test-{os.getpid()}-*"))
    for path in left:  # clean up anyway so one failure does not cascade
        PcmRing.unlink_name(os.path.basename(path))
    assert not left, f"test left shared-memory segments behind: {left}"


@pytest.fixture
def owner() -> Iterator[PcmRing]:
    """The ring as the supervisor holds it: created, no role, unlinked at the end."""
    ring = PcmRing.create(seg_name(), CAPACITY, CAPACITY, 1.0)
    yield ring
    ring.close()
    ring.unlink()


@pytest.fixture
def children() -> Iterator[list[BaseProcess]]:
    """Processes started by a test; whatever is still running at the end gets SIGKILLed."""
    procs: list[BaseProcess] = []
    yield procs
    for proc in procs:
        if proc.pid is not None:
            try:
                os.kill(proc.pid, signal.SIGCONT)  # a stopped child must be able to die
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.join(30)


def _wait_dead(proc: BaseProcess) -> None:
    """Block until ``proc`` has exited, without reaping it: it stays a zombie, as a crashed actor
    does until the supervisor reaps it, and the ring must already read it as dead."""
    assert proc.pid is not None
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)


# ----------------------------------------------------------------------------------------
# stress: every frame, in order, through the production calls
# ----------------------------------------------------------------------------------------


def _stress_producer(name: str, announce: Connection, total: int, seed: int) -> None:
    with coverage_paused():  # the hard cases depend on the two processes' relative speeds
        _produce(name, announce, total, seed)


def _produce(name: str, announce: Connection, total: int, seed: int) -> None:
    # Prepare everything before attaching: numpy holds the GIL while building these, which
    # would starve the heartbeat thread and make the consumer's side rightly call us dead.
    table = pattern(0, PATTERN_PERIOD + MAX_PUSH)  # pushes are views into this
    rng = np.random.default_rng(seed)
    n_blocks = 4 * total // MAX_PUSH + 64  # ~2x the expected count with mean size MAX_PUSH / 2
    sizes = rng.integers(1, MAX_PUSH + 1, size=n_blocks).tolist()
    cancelled = (rng.random(n_blocks) < 0.04).tolist()  # segments of a cancelled request
    ring = PcmRing.attach(name, "producer")
    ring.start_heartbeat()
    short_pushes = waits = 0
    pos = 0
    for size, skip in zip(sizes, cancelled, strict=True):
        if pos >= total:
            break
        audio = table[pos % PATTERN_PERIOD :][: min(size, total - pos)]
        # As TtsWorker._push: push, wait for room for (part of) the rest, push again.
        start = ring.write_index
        offset = 0
        while offset < len(audio):
            offset += ring.push(audio[offset:])
            if offset < len(audio):
                short_pushes += 1
                ok = ring.wait_for_space(min(len(audio) - offset, 4096), timeout=0.05, cancel=lambda: False)
                waits += not ok
        assert ring.write_index == start + offset == start + len(audio)
        announce.send((start, start + offset, skip))  # the Segment, after the frames are in
        pos += offset
    assert pos == total, f"ran out of block sizes at {pos}"
    announce.send(("end", short_pushes, waits))
    ring.close()


class ExpectedStream:
    """What the consumer must play, worked out apart from the reader: frame indices in order,
    minus the skipped ones (a mask over every index), each carrying its ``pattern`` value."""

    def __init__(self, total: int) -> None:
        self.skip = np.zeros(total, dtype=np.bool_)
        self.next = 0  # first index not yet played or passed over

    def take(self, k: int) -> npt.NDArray[np.float32]:
        span = k
        while True:
            idx = np.flatnonzero(~self.skip[self.next : self.next + span])
            if len(idx) >= k or self.next + span >= len(self.skip):
                break
            span *= 2
        idx = idx[:k] + self.next
        assert len(idx) == k, "played more frames than were pushed and not skipped"
        if k:
            self.next = int(idx[-1]) + 1
        return ((idx % PATTERN_PERIOD) / PATTERN_PERIOD).astype(np.float32)


def _stress_consumer(name: str, announce: Connection, report: Connection, total: int, seed: int) -> None:
    try:
        with coverage_paused():  # as in the producer
            result = _consume(name, announce, report, total, seed)
        report.send(result)
    except BaseException as exc:
        report.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def _consume(name: str, announce: Connection, report: Connection, total: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    expected = ExpectedStream(total)
    buf = np.empty(MAX_CALLBACK, np.float32)
    peek = np.empty(MAX_PUSH, np.float32)
    ring = PcmRing.attach(name, "consumer")
    ring.start_heartbeat()
    ring.clear()  # as AudioConsumer does at start (nothing is there yet)
    reader = WindowedReader(ring)
    report.send("ready")
    played = blocks = short_blocks = peeked = cancels = segment_skips = 0
    end: tuple[Any, ...] | None = None
    while True:
        # Control: every announcement that has arrived (Segment; a cancelled request's segment
        # becomes a skip window at once).
        while announce.poll():
            msg = announce.recv()
            if msg[0] == "end":
                end = msg
                continue
            lo, hi, skip = msg
            reader.announce(hi)
            if skip:
                reader.skip(lo, hi)
                expected.skip[lo:hi] = True
                segment_skips += 1
        r = ring.read_index
        if reader.limit > r and rng.random() < 0.002:
            # Cancel: from a random point ahead of the read index to all that was announced.
            lo = r + int(rng.integers(0, reader.limit - r + 1))
            reader.skip(lo, reader.limit)
            expected.skip[lo : reader.limit] = True
            cancels += 1
        # The callback.
        n = int(rng.integers(1, MAX_CALLBACK + 1))
        k = reader.read_block(buf[:n])
        want = expected.take(k)
        if not np.array_equal(buf[:k], want):
            bad = int(np.flatnonzero(buf[:k] != want)[0])
            raise AssertionError(
                f"block {blocks} (read index {r}): frame {bad} is {buf[bad]!r}, want {want[bad]!r} "
                f"(index {round(float(want[bad]) * PATTERN_PERIOD)} mod 2**20)"
            )
        assert not buf[k:n].any(), "a short block must be zero-filled"
        played += k
        blocks += 1
        # Right behind the producer: the newest frames, published but not yet announced.
        w = ring.write_index
        m = int(rng.integers(1, MAX_PUSH + 1))
        s = max(ring.read_index, w - m)
        got = ring.read_into(peek, m, start_index=s)
        assert min(m, w - s) <= got <= m  # the producer may have pushed more since
        np.testing.assert_array_equal(peek[:got], pattern(s, got))
        peeked += got
        if k < n:  # played all that was announced
            short_blocks += 1
            if end is not None and ring.read_index >= total:
                break
            if end is None:
                # Wait for the next announcement (a handshake, not a sleep): the producer
                # announces every push, and only a hang leaves it silent this long.
                assert announce.poll(120), f"no announcement for 120 s at read index {ring.read_index}"
    assert ring.read_index == ring.write_index == total
    ring.close()
    assert end is not None
    return {
        "played": played,
        "skipped": reader.skipped,
        "expected_skipped": int(expected.skip.sum()),
        "peeked": peeked,
        "blocks": blocks,
        "short_blocks": short_blocks,
        "cancels": cancels,
        "segment_skips": segment_skips,
        "short_pushes": end[1],
        "wait_timeouts": end[2],
    }


def test_stress_production_calls_across_processes(owner: PcmRing, children: list[BaseProcess]) -> None:
    """1.2*10^7 frames from a worker-like producer process to a callback-like consumer process
    through a ring with no slack; every played frame is checked, and so is the newest one."""
    announce_rx, announce_tx = _SPAWN.Pipe(duplex=False)
    report_rx, report_tx = _SPAWN.Pipe(duplex=False)
    consumer = _SPAWN.Process(
        target=_stress_consumer, args=(owner.name, announce_rx, report_tx, STRESS_FRAMES, 4242), name="consumer"
    )
    producer = _SPAWN.Process(
        target=_stress_producer, args=(owner.name, announce_tx, STRESS_FRAMES, 777), name="producer"
    )
    children.extend((consumer, producer))
    consumer.start()
    assert report_rx.poll(120) and report_rx.recv() == "ready", "consumer did not attach"
    producer.start()
    assert report_rx.poll(STRESS_TIMEOUT_S), "stress run did not finish (hung?)"
    result = report_rx.recv()
    producer.join(60)
    consumer.join(60)
    assert "error" not in result, result["error"]
    assert producer.exitcode == 0, "producer process failed (see its stderr)"
    assert consumer.exitcode == 0, "consumer process failed (see its stderr)"
    print(f"\nstress: {result}")
    assert owner.write_index == owner.read_index == STRESS_FRAMES
    assert result["played"] + result["skipped"] == STRESS_FRAMES
    assert result["skipped"] == result["expected_skipped"]
    assert result["played"] >= MIN_PLAYED
    # The hard cases really happened: the ring ran full (the producer wrote right behind the
    # reader), both kinds of skip window were jumped, and the callback ran dry.
    assert result["short_pushes"] > 100
    assert result["cancels"] > 10 and result["segment_skips"] > 10
    assert result["short_blocks"] > 100


# ----------------------------------------------------------------------------------------
# liveness: what production does when a peer dies or hangs
# ----------------------------------------------------------------------------------------


def _attach_then_hang(name: str, role: str, frames: int, ready: Connection) -> None:
    ring = PcmRing.attach(name, role)  # type: ignore[arg-type]
    ring.start_heartbeat()
    if frames:
        assert ring.push(pattern(0, frames)) == frames
    ready.send("ready")
    signal.pause()  # until killed


def _start(children: list[BaseProcess], name: str, role: str, frames: int = 0) -> BaseProcess:
    rx, tx = _SPAWN.Pipe(duplex=False)
    proc = _SPAWN.Process(target=_attach_then_hang, args=(name, role, frames, tx))
    children.append(proc)
    proc.start()
    assert rx.poll(120) and rx.recv() == "ready", "child did not attach"
    return proc


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_dead_or_hung_consumer_fails_the_workers_wait(owner: PcmRing, children: list[BaseProcess], how: str) -> None:
    """The worker waits for space with a 50 ms timeout in a loop; a consumer that was killed
    (pid gone or zombie) or hangs (heartbeat stale) must turn that into ``PeerDeadError``, or
    the worker would spin forever. A restarted consumer then continues from the read index."""
    proc = _start(children, owner.name, "consumer")
    prod = PcmRing.attach(owner.name, "producer")
    try:
        assert prod.push(pattern(0, CAPACITY + 10)) == CAPACITY
        assert not prod.wait_for_space(1, timeout=0.05), "a live consumer: just a timeout"
        assert proc.pid is not None
        if how == "SIGKILL":
            os.kill(proc.pid, signal.SIGKILL)
            _wait_dead(proc)
        else:
            os.kill(proc.pid, signal.SIGSTOP)  # pid exists and is no zombie, but nothing beats
        with pytest.raises(PeerDeadError) as info:
            while prod.wait_for_space(1, timeout=0.05, cancel=lambda: False) is False:
                pass  # as TtsWorker._push loops: only the error may end this
        assert info.value.side == "consumer" and info.value.pid == proc.pid
        if how == "SIGSTOP":
            os.kill(proc.pid, signal.SIGKILL)
            os.kill(proc.pid, signal.SIGCONT)
        proc.join(30)
        cons = PcmRing.attach(owner.name, "consumer")
        try:
            out = np.empty(CAPACITY, np.float32)
            assert cons.read_into(out, CAPACITY) == CAPACITY
            np.testing.assert_array_equal(out, pattern(0, CAPACITY))
            cons.commit_read(CAPACITY)
            assert prod.wait_for_space(CAPACITY, timeout=0)
        finally:
            cons.close()
    finally:
        prod.close()


def test_killed_producer_is_replaced_where_it_stopped(owner: PcmRing, children: list[BaseProcess]) -> None:
    """A live worker's role cannot be taken; once it is killed (still a zombie: not reaped) the
    restarted worker attaches, continues at its write index, and nothing pushed is lost."""
    proc = _start(children, owner.name, "producer", frames=100)
    cons = PcmRing.attach(owner.name, "consumer")
    try:
        with pytest.raises(RuntimeError, match="already has a live producer"):
            PcmRing.attach(owner.name, "producer")
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        _wait_dead(proc)
        again = PcmRing.attach(owner.name, "producer")
        try:
            assert again.write_index == 100
            assert again.push(pattern(100, 50)) == 50
            out = np.empty(200, np.float32)
            assert cons.read_into(out, 200) == 150
            np.testing.assert_array_equal(out[:150], pattern(0, 150))
        finally:
            again.close()
        proc.join(30)
    finally:
        cons.close()

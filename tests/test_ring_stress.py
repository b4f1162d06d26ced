"""shm.PcmRing across real processes: sequence integrity under stress, and peer-death detection."""

from __future__ import annotations

import glob
import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

import numpy as np
import numpy.typing as npt
import pytest

from shm import PcmRing, PeerDeadError

_SPAWN = multiprocessing.get_context("spawn")
_seq = itertools.count()

STRESS_FRAMES = 50_000_000
MAX_BLOCK = 4096


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
def children() -> Iterator[list[BaseProcess]]:
    """Processes started by a test; whatever is still running at the end gets SIGKILLed."""
    procs: list[BaseProcess] = []
    yield procs
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)


def seq(start: int, n: int) -> npt.NDArray[np.float32]:
    """Frames start..start+n of the check sequence: (k mod 2**20) / 2**20, exact in float32."""
    return ((np.arange(start, start + n, dtype=np.int64) % 2**20) / 2**20).astype(np.float32)


def as_int16(x: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    return np.clip(x * np.float32(32767), -32768, 32767).astype(np.int16)


# ----------------------------------------------------------------------------------------
# stress: no loss, duplication or reordering across processes
# ----------------------------------------------------------------------------------------


def _stress_producer(name: str, total: int, seed: int) -> None:
    # Prepare everything before attaching: numpy holds the GIL while building these, which
    # would starve the heartbeat thread and make the consumer rightly declare us dead.
    period = 2**20  # seq() repeats with this period, so one period (+ a block) serves any offset
    table = seq(0, period + MAX_BLOCK)  # pushes are views into this: no per-block generation
    rng = np.random.default_rng(seed)
    n_blocks = 4 * total // MAX_BLOCK + 64  # ~2x the expected count with mean size MAX_BLOCK / 2
    sizes = rng.integers(1, MAX_BLOCK + 1, size=n_blocks).tolist()
    styles = rng.integers(0, 3, size=n_blocks).tolist()
    ring = PcmRing.attach(name, "producer")
    ring.start_heartbeat(0.05)
    pos = 0
    for size, style in zip(sizes, styles, strict=True):
        if pos >= total:
            break
        start = pos % period
        block = table[start : start + min(size, total - pos)]
        while block.shape[0]:
            accepted = ring.push(block)
            assert 0 <= accepted <= block.shape[0]
            pos += accepted
            block = block[accepted:]
            if block.shape[0] and accepted == 0:
                if style == 0:  # wait for room for the whole rest
                    assert ring.wait_for_space(min(block.shape[0], ring.max_fill_frames), timeout=30)
                elif style == 1:  # or for any room at all
                    assert ring.wait_for_space(1, timeout=30)
                else:  # or just yield and retry
                    time.sleep(0)
    assert pos == total == ring.write_index, f"ran out of block sizes at {pos}"
    ring.close_producer()
    ring.close()


def test_stress_sequence_across_processes(children: list[BaseProcess]) -> None:
    """5*10^7 frames, random block sizes both sides, four read styles; checks every sample."""
    rng = np.random.default_rng(12345)
    # max_fill == capacity (no slack) and blocks up to half the ring: the producer really does
    # write right behind the consumer's read index, so ordering bugs would corrupt data.
    with PcmRing.create(seg_name(), 8192, 8192, 1.0, role="consumer") as cons:
        assert cons.max_fill_frames == cons.capacity_frames
        producer = _SPAWN.Process(target=_stress_producer, args=(cons.name, STRESS_FRAMES, 777))
        children.append(producer)
        out32 = np.empty(MAX_BLOCK, np.float32)
        out16 = np.empty(MAX_BLOCK, np.int16)
        t0 = time.perf_counter()
        producer.start()
        got = 0
        t_first = 0.0
        deadline = time.monotonic() + 120
        while True:
            n = int(rng.integers(1, MAX_BLOCK + 1))
            style = int(rng.integers(0, 4))
            if style == 0:  # peek then commit
                k = cons.read_into(out32, n)
                np.testing.assert_array_equal(out32[:k], seq(got, k))
                cons.commit_read(got + k)
            elif style == 1:  # callback-style float32
                k = cons.read_nonblocking(out32[:n])
                np.testing.assert_array_equal(out32[:k], seq(got, k))
                assert not out32[k:n].any()
            elif style == 2:  # callback-style int16
                k = cons.read_nonblocking(out16[:n])
                np.testing.assert_array_equal(out16[:k], as_int16(seq(got, k)))
                assert not out16[k:n].any()
            else:  # blocking int16
                block = cons.pop_block(n, timeout=30)
                k = block.shape[0]
                np.testing.assert_array_equal(block, as_int16(seq(got, k)))
                if k < n:
                    assert cons.producer_closed
            if got == 0 and k:
                t_first = time.perf_counter()
            got += k
            assert cons.read_index == got
            if k == 0:
                if cons.producer_closed and cons.available_frames() == 0:
                    break
                assert time.monotonic() < deadline, f"stalled at {got} of {STRESS_FRAMES} frames"
                time.sleep(0.0002)
        t_end = time.perf_counter()
        elapsed, streaming = t_end - t0, t_end - t_first
        producer.join(30)
        assert producer.exitcode == 0, "producer process failed (see its stderr)"
        assert got == STRESS_FRAMES
        assert cons.write_index == STRESS_FRAMES
        print(
            f"\nstress: {got} frames in {elapsed:.2f} s incl. spawn, {streaming:.2f} s streaming = "
            f"{got / streaming / 1e6:.1f} Mframes/s ({got / streaming / 48000:.0f}x real time at 48 kHz, "
            f"checked); underruns {cons.underruns}"
        )


# ----------------------------------------------------------------------------------------
# liveness: a killed or hung peer is noticed within a second
# ----------------------------------------------------------------------------------------


def _producer_then_hang(name: str, frames: int, ready: Event) -> None:
    ring = PcmRing.attach(name, "producer")
    ring.start_heartbeat(0.05)
    assert ring.push(seq(0, frames)) == frames
    ready.set()
    time.sleep(120)  # until killed


def _consumer_then_hang(name: str, ready: Event) -> None:
    ring = PcmRing.attach(name, "consumer")
    ring.start_heartbeat(0.05)
    ready.set()
    time.sleep(120)  # until killed


def _start(children: list[BaseProcess], target: Callable[..., None], *args: object) -> BaseProcess:
    ready = _SPAWN.Event()
    proc = _SPAWN.Process(target=target, args=(*args, ready))
    children.append(proc)
    proc.start()
    assert ready.wait(60), "child did not attach"
    return proc


def _seconds_until(predicate: Callable[[], bool], limit: float = 5.0) -> float:
    """Poll ``predicate`` every ms; return how long it took to become true (fails after ``limit``)."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < limit, "condition never became true"
        time.sleep(0.001)
    return time.monotonic() - t0


def test_sigkilled_producer_is_detected(children: list[BaseProcess]) -> None:
    with PcmRing.create(seg_name(), 4096, 48000, 0.05, role="consumer") as cons:
        assert cons.peer_state() == "absent"
        proc = _start(children, _producer_then_hang, cons.name, 100)
        assert cons.peer_alive()
        # Hold on long enough that a live producer would have gone stale without its heartbeat.
        time.sleep(0.6)
        assert cons.peer_alive(), "heartbeat thread should keep the producer alive"
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)  # not joined: it stays a zombie, which must read as dead
        assert _seconds_until(lambda: not cons.peer_alive()) < 1.0
        # Its heartbeat is not 30 s old: only the pid/zombie check can call it dead here.
        assert not cons.peer_alive(timeout_s=30)
        assert cons.peer_state() == "dead"
        # What it pushed before dying is still delivered, then the death is reported.
        t0 = time.monotonic()
        got = cons.pop_block(1000, timeout=10)
        np.testing.assert_array_equal(got, as_int16(seq(0, 100)))
        with pytest.raises(PeerDeadError) as info:
            cons.pop_block(1000, timeout=10)
        assert time.monotonic() - t0 < 1.0, "pop_block should fail fast, not wait for its timeout"
        assert info.value.side == "producer" and info.value.pid == proc.pid
        proc.join(10)
        # A restarted producer may take over the dead one's role.
        again = PcmRing.attach(cons.name, "producer")
        try:
            assert again.write_index == 100 and cons.peer_alive()
        finally:
            again.close()


def test_blocked_pop_block_notices_producer_death(children: list[BaseProcess]) -> None:
    """A consumer already waiting in pop_block must wake with PeerDeadError, not spin."""
    with PcmRing.create(seg_name(), 4096, 48000, 0.05, role="consumer") as cons:
        proc = _start(children, _producer_then_hang, cons.name, 0)
        pid = proc.pid
        assert pid is not None
        killed_at: list[float] = []

        def kill() -> None:
            killed_at.append(time.monotonic())
            os.kill(pid, signal.SIGKILL)

        timer = threading.Timer(0.3, kill)
        timer.start()
        try:
            with pytest.raises(PeerDeadError):
                cons.pop_block(10, timeout=30)
        finally:
            timer.join()
        assert time.monotonic() - killed_at[0] < 1.0, "pop_block was slow to notice the death"


def test_hung_producer_is_detected_by_stale_heartbeat(children: list[BaseProcess]) -> None:
    with PcmRing.create(seg_name(), 4096, 48000, 0.05, role="consumer") as cons:
        proc = _start(children, _producer_then_hang, cons.name, 0)
        assert proc.pid is not None and cons.peer_alive()
        os.kill(proc.pid, signal.SIGSTOP)  # pid exists and is no zombie, but nothing beats
        try:
            assert _seconds_until(lambda: not cons.peer_alive()) < 1.0
        finally:
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)


def test_sigkilled_consumer_unblocks_producer(children: list[BaseProcess]) -> None:
    with PcmRing.create(seg_name(), 4096, 48000, 0.05, role="producer") as prod:
        proc = _start(children, _consumer_then_hang, prod.name)
        assert prod.peer_alive()
        assert prod.push(seq(0, 10_000)) == prod.max_fill_frames
        assert not prod.wait_for_space(1, timeout=0.05), "live consumer: just a timeout"
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(PeerDeadError) as info:
            prod.wait_for_space(1, timeout=10)
        assert time.monotonic() - t0 < 1.0
        assert info.value.side == "consumer"
        proc.join(10)
        # A restarted consumer takes over from the dead one's read index.
        cons = PcmRing.attach(prod.name, "consumer")
        try:
            out = np.empty(prod.max_fill_frames, np.float32)
            assert cons.read_nonblocking(out) == prod.max_fill_frames
            np.testing.assert_array_equal(out, seq(0, prod.max_fill_frames))
            assert prod.wait_for_space(1, timeout=0)
        finally:
            cons.close()

"""In-process unit tests of shm.PcmRing (plus one spawned attacher for the unlink rule)."""

from __future__ import annotations

import _posixshmem
import glob
import itertools
import mmap
import multiprocessing
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shm import HEADER_BYTES, LAYOUT_VERSION, PcmRing, PeerDeadError

_seq = itertools.count()


def seg_name() -> str:
    """Unique per test process, so concurrent test runs never collide."""
    return f"skald-test-{os.getpid()}-{next(_seq)}"


def _leftovers() -> list[str]:
    return sorted(glob.glob(f"/dev/shm/skald-test-{os.getpid()}-*"))


@pytest.fixture(autouse=True)
def no_leftover_segments() -> Iterator[None]:
    """Every test must remove the segments it made."""
    yield
    left = _leftovers()
    for path in left:  # clean up anyway so one failure does not cascade
        PcmRing.unlink_name(os.path.basename(path))
    assert not left, f"test left shared-memory segments behind: {left}"


Pair = tuple[PcmRing, PcmRing]


@pytest.fixture
def make_pair() -> Iterator[Callable[..., Pair]]:
    """Factory: (producer, consumer) attached to a fresh ring owned by an observer handle."""
    owned: list[PcmRing] = []

    def make(capacity: int = 1024, rate: int = 1000, max_fill_s: float = 1.0) -> Pair:
        owner = PcmRing.create(seg_name(), capacity, rate, max_fill_s)
        owned.append(owner)
        prod = PcmRing.attach(owner.name, "producer")
        cons = PcmRing.attach(owner.name, "consumer")
        owned.extend((prod, cons))
        return prod, cons

    yield make
    for ring in reversed(owned):
        ring.close()
        if ring.is_owner:
            ring.unlink()


def seq(start: int, n: int) -> npt.NDArray[np.float32]:
    """Frames start..start+n of the check sequence; exact in float32."""
    return ((np.arange(start, start + n, dtype=np.int64) % 2**20) / 2**20).astype(np.float32)


# ----------------------------------------------------------------------------------------
# creation, layout, ownership
# ----------------------------------------------------------------------------------------


def test_create_rounds_capacity_and_publishes_config() -> None:
    with PcmRing.create(seg_name(), 3000, 48000, 0.05) as owner:
        assert owner.capacity_frames == 4096
        assert owner.max_fill_frames == 2400
        assert owner.sample_rate == 48000
        assert os.path.getsize(f"/dev/shm/{owner.name}") == HEADER_BYTES + 4096 * 4
        cons = PcmRing.attach(owner.name, "consumer")
        try:
            assert (cons.capacity_frames, cons.max_fill_frames, cons.sample_rate) == (4096, 2400, 48000)
            assert cons.write_index == cons.read_index == 0
            assert cons.underruns == (0, 0)
        finally:
            cons.close()
    assert not os.path.exists(f"/dev/shm/{owner.name}"), "owner's context exit must unlink"


def test_unlink_name_is_idempotent_and_only_owner_unlinks() -> None:
    name = seg_name()
    PcmRing.unlink_name(name)  # missing: ignored
    owner = PcmRing.create(name, 1024, 1000, 1.0)
    prod = PcmRing.attach(name, "producer")
    with pytest.raises(RuntimeError, match="only the creator"):
        prod.unlink()
    prod.close()
    PcmRing.unlink_name(name)
    assert not os.path.exists(f"/dev/shm/{name}")
    PcmRing.unlink_name(name)  # again: still fine
    owner.unlink()  # owner's unlink is idempotent too
    owner.close()
    owner.close()  # close twice is safe


def test_create_existing_name_fails_without_touching_it() -> None:
    with PcmRing.create(seg_name(), 1024, 1000, 1.0, role="producer") as owner:
        owner.push(seq(0, 10))
        with pytest.raises(FileExistsError):
            PcmRing.create(owner.name, 1024, 1000, 1.0)
        assert os.path.exists(f"/dev/shm/{owner.name}")
        assert owner.available_frames() == 10


def _attach_and_exit(name: str, role: str) -> None:
    ring = PcmRing.attach(name, role)  # type: ignore[arg-type]
    if role == "producer":
        assert ring.push(seq(0, 100)) == 100
    # Exit without close(): the crash-like path is the one a resource tracker would act on.


@pytest.mark.parametrize("role", ["producer", "consumer"])
def test_attacher_exit_does_not_unlink(role: str) -> None:
    with PcmRing.create(seg_name(), 1024, 1000, 1.0) as owner:
        proc = multiprocessing.get_context("spawn").Process(target=_attach_and_exit, args=(owner.name, role))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
        assert os.path.exists(f"/dev/shm/{owner.name}"), "attacher's exit removed the segment"
        again = PcmRing.attach(owner.name, role)  # type: ignore[arg-type]
        again.close()
        if role == "producer":
            assert owner.available_frames() == 100


# ----------------------------------------------------------------------------------------
# data path
# ----------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    max_fill=st.integers(1, 1024),
    ops=st.lists(
        st.tuples(st.sampled_from(["push", "into", "nonblock", "pop"]), st.integers(0, 2500)),
        min_size=1,
        max_size=60,
    ),
)
def test_wrap_around_matches_model(max_fill: int, ops: list[tuple[str, int]]) -> None:
    """Random push/read sizes around a 1024-frame ring: output is exactly the input, in order."""
    with PcmRing.create(seg_name(), 1024, 1024, max_fill / 1024, role="producer") as prod:
        cons = PcmRing.attach(prod.name, "consumer")
        try:
            pushed = 0  # frames accepted so far
            got: list[npt.NDArray[np.float32]] = []
            read = 0
            for op, n in ops:
                if op == "push":
                    accepted = prod.push(seq(pushed, n))
                    assert accepted == min(n, max_fill - (pushed - read))
                    pushed += accepted
                elif op == "into":
                    out = np.full(n, -7.0, dtype=np.float32)
                    k = cons.read_into(out, n)
                    assert k == min(n, pushed - read)
                    assert np.all(out[k:] == -7.0), "read_into wrote past k"
                    cons.commit_read(read + k)
                    got.append(out[:k].copy())
                    read += k
                elif op == "nonblock":
                    out = np.full(n, -7.0, dtype=np.float32)
                    k = cons.read_nonblocking(out)
                    assert k == min(n, pushed - read)
                    assert np.all(out[k:] == 0.0)
                    got.append(out[:k].copy())
                    read += k
                else:
                    n = min(n, max_fill)
                    if pushed - read >= n:
                        block = cons.pop_block(n, timeout=1.0)
                        expect = np.clip(seq(read, n) * 32767, -32768, 32767).astype(np.int16)
                        np.testing.assert_array_equal(block, expect)
                        read += n
                        got.append(seq(read - n, n))  # verified above as int16
                assert prod.write_index == cons.write_index == pushed
                assert cons.read_index == prod.read_index == read
                assert cons.available_frames() == pushed - read
                assert prod.free_frames() == max_fill - (pushed - read)
            stream = np.concatenate([np.zeros(0, np.float32), *got])
            np.testing.assert_array_equal(stream, seq(0, read))
        finally:
            cons.close()


def test_overfill_guard_never_overwrites_unread(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair(capacity=1024, rate=1000, max_fill_s=0.9)  # max_fill 900 < capacity
    assert prod.push(seq(0, 1000)) == 900
    assert prod.push(seq(900, 10)) == 0
    assert prod.free_frames() == 0
    out = np.empty(400, np.float32)
    assert cons.read_nonblocking(out) == 400
    assert prod.push(seq(900, 1000)) == 400  # only what was consumed is reusable
    rest = np.empty(900, np.float32)
    assert cons.read_nonblocking(rest) == 900
    np.testing.assert_array_equal(np.concatenate([out, rest]), seq(0, 1300))


def test_float64_is_converted(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair()
    assert prod.push(seq(0, 50).astype(np.float64)) == 50
    out = np.empty(50, np.float32)
    assert cons.read_nonblocking(out) == 50
    np.testing.assert_array_equal(out, seq(0, 50))


def test_int16_conversion_clips_instead_of_wrapping(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair()
    x = np.array([1.5, -1.5, 1.0, -1.0, 0.5, -0.5, 0.0, 1.0001, -1.0001, 3e9, -3e9], np.float32)
    assert prod.push(x) == len(x)
    out = np.zeros(len(x), np.int16)
    assert cons.read_into(out, len(x)) == len(x)
    np.testing.assert_array_equal(out, [32767, -32768, 32767, -32767, 16383, -16383, 0, 32767, -32768, 32767, -32768])
    np.testing.assert_array_equal(out, np.clip(x.astype(np.float64) * 32767, -32768, 32767).astype(np.int16))
    out2 = np.zeros(len(x), np.int16)
    assert cons.read_nonblocking(out2) == len(x)
    np.testing.assert_array_equal(out2, out)


def test_int16_conversion_of_long_wrapped_reads() -> None:
    """Longer than the conversion scratch buffer, and wrapping: chunking must not shift data."""
    with PcmRing.create(seg_name(), 65536, 48000, 1.3, role="producer") as prod:
        cons = PcmRing.attach(prod.name, "consumer")
        try:
            rng = np.random.default_rng(1)
            prod.push(np.zeros(50000, np.float32))
            cons.clear()
            x = rng.uniform(-1.6, 1.6, 60000).astype(np.float32)  # wraps at 65536
            assert prod.push(x) == 60000
            got = cons.pop_block(60000, timeout=1)
            np.testing.assert_array_equal(got, np.clip(x * np.float32(32767), -32768, 32767).astype(np.int16))
        finally:
            cons.close()


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_callback_path_allocates_no_sample_buffers(make_pair: Callable[..., Pair], dtype: type) -> None:
    """read_into/read_nonblocking run in the audio callback: no buffer may be allocated there."""
    prod, cons = make_pair(capacity=8192, rate=8192, max_fill_s=1.0)
    block = 4096
    out: npt.NDArray[np.generic] = np.zeros(block, dtype)
    src = seq(0, 3000)
    for _ in range(3):  # warm up (and wrap the ring)
        prod.push(src)
        cons.read_nonblocking(out)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(20):
            cons.read_nonblocking(out)  # short: zero-fill + underrun path too
            prod.push(src)
            cons.read_into(out, block)
            cons.commit_read(cons.write_index)
            prod.push(src)
        # push may allocate (it is not the callback), so measure consumer calls alone too.
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            cons.read_into(out, block)
            cons.read_nonblocking(out)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # One block would be 8-16 KiB; a few small Python objects are far below 2 KiB.
    assert peak < 2048, f"consumer read path allocated {peak} bytes"


# ----------------------------------------------------------------------------------------
# consumer API
# ----------------------------------------------------------------------------------------


def test_read_nonblocking_zero_fills_and_counts_underruns(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair()
    prod.push(seq(0, 30))
    out = np.full(100, 9.0, np.float32)
    assert cons.read_nonblocking(out) == 30
    np.testing.assert_array_equal(out[:30], seq(0, 30))
    assert np.all(out[30:] == 0.0)
    assert cons.underruns == (1, 70)
    out16 = np.full(50, 9, np.int16)
    assert cons.read_nonblocking(out16) == 0
    assert np.all(out16 == 0)
    assert cons.underruns == (2, 120)
    assert prod.underruns == (2, 120), "counters must be visible to the other side"
    prod.push(seq(30, 100))
    assert cons.read_nonblocking(out) == 100
    assert cons.underruns == (2, 120), "a full read is not an underrun"
    prod.push(seq(130, 10))
    prod.close_producer()
    assert cons.read_nonblocking(out) == 10
    np.testing.assert_array_equal(out[:10], seq(130, 10))
    assert np.all(out[10:] == 0.0)
    assert cons.underruns == (2, 120), "no underrun once the producer closed the stream"


def test_read_into_peeks_without_consuming(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair()
    prod.push(seq(0, 200))
    out = np.empty(100, np.float32)
    assert cons.read_into(out, 100) == 100
    assert cons.read_index == 0 and cons.available_frames() == 200
    assert cons.read_into(out, 100, start_index=150) == 50  # only 50 published after 150
    np.testing.assert_array_equal(out[:50], seq(150, 50))
    assert cons.read_into(out, 100, start_index=200) == 0
    with pytest.raises(ValueError, match="start_index"):
        cons.read_into(out, 10, start_index=201)
    cons.commit_read(120)
    with pytest.raises(ValueError, match="start_index"):
        cons.read_into(out, 10, start_index=119)  # may already be overwritten
    with pytest.raises(ValueError, match="len"):
        cons.read_into(out, 101)
    with pytest.raises(TypeError, match="float32 or int16"):
        cons.read_into(np.empty(10, np.float64), 10)
    with pytest.raises(TypeError, match="1-D"):
        cons.read_into(np.empty((10, 2), np.float32), 10)


def test_commit_read_and_skip_to_validate(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair()
    prod.push(seq(0, 100))
    cons.commit_read(40)
    assert cons.read_index == 40 and prod.read_index == 40
    with pytest.raises(ValueError, match="read_index=40"):
        cons.commit_read(39)
    with pytest.raises(ValueError, match="write_index=100"):
        cons.commit_read(101)
    with pytest.raises(ValueError):
        cons.skip_to(101)
    cons.skip_to(100)
    assert cons.available_frames() == 0
    assert prod.free_frames() == prod.max_fill_frames


def test_clear_discards_everything_buffered(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair()
    prod.push(seq(0, 300))
    cons.commit_read(50)
    assert cons.clear() == 250
    assert cons.available_frames() == 0 and prod.free_frames() == prod.max_fill_frames
    assert cons.clear() == 0
    prod.push(seq(300, 5))
    out = np.empty(5, np.float32)
    assert cons.read_nonblocking(out) == 5
    np.testing.assert_array_equal(out, seq(300, 5))


def test_pop_block_waits_times_out_and_drains_after_close(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair()
    prod.start_heartbeat(0.02)
    prod.push(seq(0, 10))
    with pytest.raises(TimeoutError):
        cons.pop_block(20, timeout=0.05)
    assert cons.available_frames() == 10, "a timed-out pop consumes nothing"
    assert len(cons.pop_block(0)) == 0
    prod.push(seq(10, 5))
    prod.close_producer()
    assert cons.producer_closed
    rest = cons.pop_block(20, timeout=1)
    np.testing.assert_array_equal(rest, np.clip(seq(0, 15) * 32767, -32768, 32767).astype(np.int16))
    assert len(cons.pop_block(20, timeout=1)) == 0
    with pytest.raises(RuntimeError, match="close_producer"):
        prod.push(seq(0, 1))


def test_pop_block_raises_when_producer_gone_and_drained(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair()
    prod.push(seq(0, 10))
    prod.close()  # detached without ending the stream: reads as dead
    assert cons.peer_state() == "dead"
    assert len(cons.pop_block(100, timeout=1)) == 10  # what was pushed is still delivered
    with pytest.raises(PeerDeadError) as info:
        cons.pop_block(100, timeout=1)
    assert info.value.side == "producer" and info.value.pid == os.getpid()


def test_producer_reattach_clears_closed_and_continues(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair()
    prod.push(seq(0, 100))
    prod.close_producer()
    with pytest.raises(RuntimeError, match="already has a live producer"):
        PcmRing.attach(prod.name, "producer")
    prod.close()
    prod2 = PcmRing.attach(cons.name, "producer")
    try:
        assert not cons.producer_closed
        assert prod2.write_index == 100
        prod2.push(seq(100, 50))
        out = np.empty(150, np.float32)
        assert cons.read_nonblocking(out) == 150
        np.testing.assert_array_equal(out, seq(0, 150))
    finally:
        prod2.close()


def test_consumer_reattach_continues_from_read_index(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair()
    prod.push(seq(0, 100))
    cons.commit_read(60)
    cons.close()
    cons2 = PcmRing.attach(prod.name, "consumer")
    try:
        out = np.empty(40, np.float32)
        assert cons2.read_nonblocking(out) == 40
        np.testing.assert_array_equal(out, seq(60, 40))
    finally:
        cons2.close()


# ----------------------------------------------------------------------------------------
# liveness (in-process; the cross-process kill tests live in test_ring_stress.py)
# ----------------------------------------------------------------------------------------


def test_peer_states_absent_alive_dead() -> None:
    with PcmRing.create(seg_name(), 1024, 1000, 1.0) as owner:
        assert owner.side_state("producer") == "absent"
        cons = PcmRing.attach(owner.name, "consumer")
        try:
            assert cons.peer_state() == "absent" and not cons.peer_alive()
            prod = PcmRing.attach(owner.name, "producer")
            assert cons.peer_state() == "alive" and prod.peer_alive()
            assert cons.peer_pid() == os.getpid()
            # Without heartbeats the producer goes stale; with them it stays alive.
            assert cons.peer_state(timeout_s=0.0) == "dead"
            prod.start_heartbeat(0.005)
            prod.start_heartbeat(0.005)  # idempotent
            deadline = time.monotonic() + 5
            while not cons.peer_alive(timeout_s=0.05):
                assert time.monotonic() < deadline
                time.sleep(0.005)
            prod.close()
            assert cons.peer_state() == "dead", "a closed handle must read as detached"
            assert owner.side_state("consumer") == "alive"
        finally:
            cons.close()


def test_wait_for_space(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair()
    assert prod.wait_for_space(prod.max_fill_frames, timeout=0)
    prod.push(seq(0, prod.max_fill_frames))
    cons.start_heartbeat(0.02)
    assert not prod.wait_for_space(1, timeout=0.02)
    calls: list[int] = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert not prod.wait_for_space(1, timeout=None, cancel=cancel)
    assert len(calls) == 3
    cons.commit_read(10)
    assert prod.wait_for_space(10, timeout=0)
    cons.close()
    with pytest.raises(PeerDeadError):
        prod.wait_for_space(11, timeout=1)
    with pytest.raises(ValueError, match="max_fill_frames"):
        prod.wait_for_space(prod.max_fill_frames + 1)


def test_wait_for_space_waits_for_absent_consumer() -> None:
    with PcmRing.create(seg_name(), 1024, 1000, 1.0, role="producer") as prod:
        prod.push(seq(0, 1000))
        assert prod.peer_state() == "absent"
        assert not prod.wait_for_space(1, timeout=0.02)  # waits, does not raise


# ----------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------


def test_bad_create_arguments() -> None:
    name = seg_name()
    with pytest.raises(ValueError, match=">= 1024"):
        PcmRing.create(name, 1000, 1000, 0.5)
    with pytest.raises(ValueError, match="more than the ring holds"):
        PcmRing.create(name, 1024, 1000, 1.1)
    with pytest.raises(ValueError, match="max_fill_s must be a finite number > 0"):
        PcmRing.create(name, 1024, 1000, 0)
    with pytest.raises(ValueError, match="max_fill_s must be a finite number > 0"):
        PcmRing.create(name, 1024, 1000, float("nan"))
    with pytest.raises(ValueError, match="sample_rate"):
        PcmRing.create(name, 1024, 0, 1.0)
    with pytest.raises(ValueError, match="role"):
        PcmRing.create(name, 1024, 1000, 1.0, role="speaker")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid ring name"):
        PcmRing.create("a/b", 1024, 1000, 1.0)
    with pytest.raises(TypeError):
        PcmRing.create(name, 1024.0, 1000, 1.0)  # type: ignore[arg-type]
    assert not os.path.exists(f"/dev/shm/{name}"), "a rejected create must not leave a segment"


def test_bad_attach_arguments() -> None:
    with pytest.raises(FileNotFoundError, match="no PCM ring"):
        PcmRing.attach(seg_name(), "consumer")
    with (
        PcmRing.create(seg_name(), 1024, 1000, 1.0) as owner,
        pytest.raises(ValueError, match="role must be"),
    ):
        PcmRing.attach(owner.name, "listener")  # type: ignore[arg-type]


def _raw_segment(name: str, size: int, fill: bytes = b"\0") -> None:
    fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    try:
        os.ftruncate(fd, size)
        if size:
            with mmap.mmap(fd, size) as m:
                m[:] = fill * size
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [0, 100, 8192])
def test_attach_rejects_foreign_segment(size: int) -> None:
    name = seg_name()
    _raw_segment(name, size, b"\x5a")
    try:
        with pytest.raises(ValueError, match="not a skald PCM ring"):
            PcmRing.attach(name, "consumer")
    finally:
        PcmRing.unlink_name(name)


def test_attach_rejects_other_layout_version() -> None:
    with PcmRing.create(seg_name(), 1024, 1000, 1.0) as owner:
        fd = _posixshmem.shm_open("/" + owner.name, os.O_RDWR, mode=0)
        try:
            with mmap.mmap(fd, HEADER_BYTES) as m:
                m[64:72] = (LAYOUT_VERSION + 1).to_bytes(8, "little")
        finally:
            os.close(fd)
        with pytest.raises(ValueError, match="not a skald PCM ring of layout version"):
            PcmRing.attach(owner.name, "producer")


def test_push_rejects_bad_blocks(make_pair: Callable[..., Pair]) -> None:
    prod, _ = make_pair()
    with pytest.raises(ValueError, match="1-D mono"):
        prod.push(np.zeros((10, 2), np.float32))
    with pytest.raises(TypeError, match="float32"):
        prod.push(np.zeros(10, np.int16))
    with pytest.raises(TypeError, match="numpy"):
        prod.push([0.0, 0.1])  # type: ignore[arg-type]
    assert prod.write_index == 0
    assert prod.push(np.zeros(0, np.float32)) == 0


def test_role_methods_are_guarded(make_pair: Callable[..., Pair]) -> None:
    prod, cons = make_pair()
    with pytest.raises(RuntimeError, match="producer role"):
        cons.push(seq(0, 1))
    with pytest.raises(RuntimeError, match="consumer role"):
        prod.read_nonblocking(np.zeros(4, np.float32))
    with pytest.raises(RuntimeError, match="consumer role"):
        prod.clear()
    with pytest.raises(RuntimeError, match="producer role"):
        cons.close_producer()
    with pytest.raises(ValueError, match="max_fill_frames"):
        cons.pop_block(cons.max_fill_frames + 1)
    cons.close()
    with pytest.raises(ValueError, match="closed"):
        cons.read_nonblocking(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="closed"):
        _ = cons.available_frames()

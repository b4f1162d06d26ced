"""In-process unit tests of shm.PcmRing (plus one spawned attacher for the unlink rule).

The ring's API is what the worker and the consumer call (see ``shm/ring.py``); readers that
tests want beyond it are in ``tests/support/ring_reader.py``, built on that API and tested here.
"""

from __future__ import annotations

import _posixshmem
import glob
import itertools
import mmap
import multiprocessing
import os
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shm import HEADER_BYTES, LAYOUT_VERSION, PcmRing, PeerDeadError
from tests.support.ring_reader import WindowedReader, pattern, take
from tests.support.untraced import allocations

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


class Rings:
    """Handles made by one test; all closed, and the owners' segments unlinked, at its end."""

    def __init__(self) -> None:
        self.handles: list[PcmRing] = []
        self.owners: list[PcmRing] = []

    def create(self, capacity: int = 1024, rate: int = 1000, max_fill_s: float = 1.0) -> PcmRing:
        """A fresh ring owned by an observer handle, as the supervisor owns the real one."""
        owner = PcmRing.create(seg_name(), capacity, rate, max_fill_s)
        self.owners.append(owner)
        return owner

    def attach(self, name: str, role: str) -> PcmRing:
        ring = PcmRing.attach(name, role)  # type: ignore[arg-type]
        self.handles.append(ring)
        return ring

    def pair(self, capacity: int = 1024, rate: int = 1000, max_fill_s: float = 1.0) -> tuple[PcmRing, PcmRing]:
        """(producer, consumer) attached to a fresh ring."""
        owner = self.create(capacity, rate, max_fill_s)
        return self.attach(owner.name, "producer"), self.attach(owner.name, "consumer")

    def close(self) -> None:
        for ring in reversed(self.handles):
            ring.close()
        for owner in self.owners:
            owner.close()
            owner.unlink()


@pytest.fixture
def rings() -> Iterator[Rings]:
    made = Rings()
    yield made
    made.close()


# ----------------------------------------------------------------------------------------
# creation, layout, ownership
# ----------------------------------------------------------------------------------------


def test_create_rounds_capacity_and_publishes_config(rings: Rings) -> None:
    owner = rings.create(3000, 48000, 0.05)
    assert owner.capacity_frames == 4096
    assert owner.sample_rate == 48000
    assert os.path.getsize(f"/dev/shm/{owner.name}") == HEADER_BYTES + 4096 * 4
    prod, cons = rings.attach(owner.name, "producer"), rings.attach(owner.name, "consumer")
    assert (cons.capacity_frames, cons.sample_rate) == (4096, 48000)
    assert cons.write_index == cons.read_index == owner.write_index == 0
    # max_fill_s = 0.05 s at 48 kHz: the overfill guard is 2400 frames, below the capacity.
    assert prod.push(pattern(0, 4096)) == 2400
    assert owner.buffer_length_seconds() == pytest.approx(0.05)
    assert not prod.wait_for_space(1, timeout=0)


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


def test_create_existing_name_fails_without_touching_it(rings: Rings) -> None:
    prod, _ = rings.pair()
    prod.push(pattern(0, 10))
    with pytest.raises(FileExistsError):
        PcmRing.create(prod.name, 1024, 1000, 1.0)
    assert os.path.exists(f"/dev/shm/{prod.name}")
    assert prod.write_index == 10 and prod.read_index == 0


def _attach_and_exit(name: str, role: str) -> None:
    ring = PcmRing.attach(name, role)  # type: ignore[arg-type]
    if role == "producer":
        assert ring.push(pattern(0, 100)) == 100
    # Exit without close(): the crash-like path is the one a resource tracker would act on.


@pytest.mark.parametrize("role", ["producer", "consumer"])
def test_attacher_exit_does_not_unlink(rings: Rings, role: str) -> None:
    owner = rings.create()
    proc = multiprocessing.get_context("spawn").Process(target=_attach_and_exit, args=(owner.name, role))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert os.path.exists(f"/dev/shm/{owner.name}"), "attacher's exit removed the segment"
    rings.attach(owner.name, role)  # its role is free again: the holder is gone
    if role == "producer":
        assert owner.write_index == 100


# ----------------------------------------------------------------------------------------
# data path
# ----------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    max_fill=st.integers(1, 1024),
    ops=st.lists(
        st.tuples(st.sampled_from(["push", "read", "peek", "skip"]), st.integers(0, 2500), st.integers(0, 2500)),
        min_size=1,
        max_size=60,
    ),
)
def test_wrap_around_matches_model(max_fill: int, ops: list[tuple[str, int, int]]) -> None:
    """Random pushes, reads, peeks at any start index and skips around a 1024-frame ring: every
    frame read is the frame pushed at that index, and the indices follow the model."""
    owner = PcmRing.create(seg_name(), 1024, 1024, max_fill / 1024)
    prod = PcmRing.attach(owner.name, "producer")
    cons = PcmRing.attach(owner.name, "consumer")
    try:
        pushed = read = 0  # the model: frames accepted, frames consumed
        for op, a, b in ops:
            if op == "push":
                accepted = prod.push(pattern(pushed, a))
                assert accepted == min(a, max_fill - (pushed - read))
                pushed += accepted
            elif op == "read":  # the consumer's block: read then commit
                out = np.full(a, -7.0, dtype=np.float32)
                k = cons.read_into(out, a)
                assert k == min(a, pushed - read)
                assert np.all(out[k:] == -7.0), "read_into wrote past k"
                np.testing.assert_array_equal(out[:k], pattern(read, k))
                cons.commit_read(read + k)
                read += k
            elif op == "peek":  # a piece after a skip window: any start in [read, pushed]
                start = read + b % (pushed - read + 1)
                out = np.full(a, -7.0, dtype=np.float32)
                k = cons.read_into(out, a, start_index=start)
                assert k == min(a, pushed - start)
                np.testing.assert_array_equal(out[:k], pattern(start, k))
                assert cons.read_index == read, "read_into must not consume"
            else:  # skip: consume without reading
                to = read + a % (pushed - read + 1)
                cons.commit_read(to)
                read = to
            assert prod.write_index == cons.write_index == owner.write_index == pushed
            assert cons.read_index == prod.read_index == owner.read_index == read
            assert owner.buffer_length_seconds() == (pushed - read) / 1024
    finally:
        cons.close()
        prod.close()
        owner.close()
        owner.unlink()


def test_overfill_guard_never_overwrites_unread(rings: Rings) -> None:
    prod, cons = rings.pair(capacity=1024, rate=1000, max_fill_s=0.9)  # max_fill 900 < capacity
    assert prod.push(pattern(0, 1000)) == 900
    assert prod.push(pattern(900, 10)) == 0
    first = take(cons, 400)
    assert prod.push(pattern(900, 1000)) == 400  # only what was consumed is reusable
    rest = take(cons, 900)
    np.testing.assert_array_equal(np.concatenate([first, rest]), pattern(0, 1300))


def test_skipped_frames_are_reused_only_after_the_commit(rings: Rings) -> None:
    """A block that reads, jumps a skip window and reads on holds every frame it spanned until
    its one commit: the producer cannot overwrite the window's frames or the ones after it."""
    prod, cons = rings.pair(capacity=1024, rate=1024, max_fill_s=1.0)  # max_fill == capacity
    assert prod.push(pattern(0, 1024)) == 1024
    out = np.empty(300, np.float32)
    assert cons.read_into(out[:100], 100, start_index=0) == 100
    assert cons.read_into(out[100:], 200, start_index=700) == 200  # [100, 700) skipped
    assert prod.push(pattern(1024, 10)) == 0, "nothing is free before the commit"
    cons.commit_read(900)
    np.testing.assert_array_equal(out, np.concatenate([pattern(0, 100), pattern(700, 200)]))
    assert prod.push(pattern(1024, 1000)) == 900  # now the whole span is
    assert cons.read_into(out, 124) == 124
    np.testing.assert_array_equal(out[:124], pattern(900, 124))


def test_float64_is_converted(rings: Rings) -> None:
    prod, cons = rings.pair()
    assert prod.push(pattern(0, 50).astype(np.float64)) == 50
    np.testing.assert_array_equal(take(cons, 50), pattern(0, 50))


def test_consumer_read_path_allocates_no_sample_buffers(rings: Rings) -> None:
    """read_into and commit_read run in the audio callback: no buffer may be allocated there."""
    prod, cons = rings.pair(capacity=8192, rate=8192, max_fill_s=1.0)
    block = 4096
    out = np.zeros(block, np.float32)
    src = pattern(0, 3000)
    for _ in range(2):  # warm up: the read index ends at 6000, so the reads below wrap
        prod.push(src)
        k = cons.read_into(out, block)
        cons.commit_read(cons.read_index + k)
    prod.push(src)
    prod.push(src)
    with allocations() as allocated:
        r = cons.read_index
        for _ in range(20):
            k = cons.read_into(out, block, start_index=r)
            cons.read_into(out[:100], 100, start_index=r + 17)
            cons.commit_read(r)
        cons.commit_read(r + k)
    peak = allocated.peak
    # One block would be 16 KiB; a few small Python objects are far below 2 KiB.
    assert peak < 2048, f"consumer read path allocated {peak} bytes"


# ----------------------------------------------------------------------------------------
# consumer API
# ----------------------------------------------------------------------------------------


def test_read_into_peeks_without_consuming(rings: Rings) -> None:
    prod, cons = rings.pair()
    prod.push(pattern(0, 200))
    out = np.empty(100, np.float32)
    assert cons.read_into(out, 100) == 100
    assert cons.read_index == 0 and prod.read_index == 0
    assert cons.read_into(out, 100, start_index=150) == 50  # only 50 published after 150
    np.testing.assert_array_equal(out[:50], pattern(150, 50))
    assert cons.read_into(out, 100, start_index=200) == 0
    with pytest.raises(ValueError, match="start_index"):
        cons.read_into(out, 10, start_index=201)
    cons.commit_read(120)
    with pytest.raises(ValueError, match="start_index"):
        cons.read_into(out, 10, start_index=119)  # may already be overwritten
    with pytest.raises(ValueError, match="len"):
        cons.read_into(out, 101)
    with pytest.raises(TypeError, match="float32"):
        cons.read_into(np.empty(10, np.int16), 10)  # int16 is the output converter's job
    with pytest.raises(TypeError, match="1-D"):
        cons.read_into(np.empty((10, 2), np.float32), 10)


def test_commit_read_validates(rings: Rings) -> None:
    prod, cons = rings.pair()
    prod.push(pattern(0, 100))
    cons.commit_read(np.int64(40))  # type: ignore[arg-type]  # numpy ints, as the consumer computes them
    assert cons.read_index == 40 and prod.read_index == 40
    with pytest.raises(ValueError, match="read_index=40"):
        cons.commit_read(39)
    with pytest.raises(ValueError, match="write_index=100"):
        cons.commit_read(101)
    cons.commit_read(100)
    assert prod.push(pattern(100, 1000)) == 1000  # max_fill: everything was released


def test_clear_discards_everything_buffered(rings: Rings) -> None:
    prod, cons = rings.pair()
    prod.push(pattern(0, 300))
    cons.commit_read(50)
    assert cons.clear() == 250
    assert cons.read_index == prod.read_index == 300
    assert cons.clear() == 0
    prod.push(pattern(300, 5))
    np.testing.assert_array_equal(take(cons, 5), pattern(300, 5))


def test_producer_reattach_continues_after_its_predecessor(rings: Rings) -> None:
    prod, cons = rings.pair()
    prod.push(pattern(0, 100))
    with pytest.raises(RuntimeError, match="already has a live producer"):
        PcmRing.attach(prod.name, "producer")
    prod.close()
    prod2 = rings.attach(cons.name, "producer")
    assert prod2.write_index == 100
    prod2.push(pattern(100, 50))
    np.testing.assert_array_equal(take(cons, 150), pattern(0, 150))


def test_consumer_reattach_continues_from_read_index(rings: Rings) -> None:
    prod, cons = rings.pair()
    prod.push(pattern(0, 100))
    cons.commit_read(60)
    with pytest.raises(RuntimeError, match="already has a live consumer"):
        PcmRing.attach(prod.name, "consumer")
    cons.close()
    cons2 = rings.attach(prod.name, "consumer")
    np.testing.assert_array_equal(take(cons2, 100), pattern(60, 40))


# ----------------------------------------------------------------------------------------
# the test reader (tests/support/ring_reader.py) against the ring
# ----------------------------------------------------------------------------------------


def test_windowed_reader_plays_announced_frames_and_jumps_windows(rings: Rings) -> None:
    prod, cons = rings.pair(capacity=1024, rate=1024, max_fill_s=1.0)
    reader = WindowedReader(cons)
    prod.push(pattern(0, 1000))
    out = np.full(300, 9.0, np.float32)
    assert reader.read_block(out) == 0, "nothing announced yet: nothing played"
    assert np.all(out == 0.0) and cons.read_index == 0
    reader.announce(600)
    reader.skip(100, 250)
    reader.skip(200, 300)  # overlapping: merged into [100, 300)
    reader.skip(350, 400)
    assert reader.windows == [(100, 300), (350, 400)]
    assert reader.read_block(out) == 300
    np.testing.assert_array_equal(out, np.concatenate([pattern(0, 100), pattern(300, 50), pattern(400, 150)]))
    assert cons.read_index == 550 and reader.skipped == 250
    assert reader.read_block(out) == 50  # up to the announced 600, then zeros
    np.testing.assert_array_equal(out[:50], pattern(550, 50))
    assert np.all(out[50:] == 0.0)
    reader.announce(1000)
    reader.skip(600, 1000)  # a cancel of everything announced
    assert reader.read_block(out) == 0 and cons.read_index == 1000


# ----------------------------------------------------------------------------------------
# liveness (in-process; killed and hung processes are in test_ring_stress.py)
# ----------------------------------------------------------------------------------------


def test_wait_for_space(rings: Rings) -> None:
    prod, cons = rings.pair()
    assert prod.wait_for_space(1000, timeout=0)
    prod.push(pattern(0, 1000))
    cons.start_heartbeat(0.02)
    cons.start_heartbeat(0.02)  # idempotent
    assert not prod.wait_for_space(1, timeout=0.02), "a live consumer: just a timeout"
    calls: list[int] = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert not prod.wait_for_space(1, timeout=None, cancel=cancel)
    assert len(calls) == 3
    cons.commit_read(10)
    assert prod.wait_for_space(10, timeout=0)
    cons.close()  # a closed consumer reads as dead at once: the producer must not wait on it
    with pytest.raises(PeerDeadError) as info:
        prod.wait_for_space(11, timeout=30)
    assert info.value.side == "consumer" and info.value.pid == os.getpid()
    with pytest.raises(ValueError, match="max_fill_frames"):
        prod.wait_for_space(1001)


def test_wait_for_space_waits_for_absent_consumer(rings: Rings) -> None:
    owner = rings.create()
    prod = rings.attach(owner.name, "producer")
    prod.push(pattern(0, 1000))
    assert not prod.wait_for_space(1, timeout=0.02)  # nobody attached yet: waits, does not raise


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


def test_bad_attach_arguments(rings: Rings) -> None:
    with pytest.raises(FileNotFoundError, match="no PCM ring"):
        PcmRing.attach(seg_name(), "consumer")
    owner = rings.create()
    with pytest.raises(ValueError, match="role must be"):
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


@pytest.mark.parametrize("version", [1, LAYOUT_VERSION + 1])
def test_attach_rejects_other_layout_version(rings: Rings, version: int) -> None:
    """Version 1 had the underrun counters and end-of-stream flag where the epochs are now."""
    owner = rings.create()
    fd = _posixshmem.shm_open("/" + owner.name, os.O_RDWR, mode=0)
    try:
        with mmap.mmap(fd, HEADER_BYTES) as m:
            m[64:72] = version.to_bytes(8, "little")
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="not a skald PCM ring of layout version"):
        PcmRing.attach(owner.name, "producer")


def test_push_rejects_bad_blocks(rings: Rings) -> None:
    prod, _ = rings.pair()
    with pytest.raises(ValueError, match="1-D mono"):
        prod.push(np.zeros((10, 2), np.float32))
    with pytest.raises(TypeError, match="float32"):
        prod.push(np.zeros(10, np.int16))
    with pytest.raises(TypeError, match="numpy"):
        prod.push([0.0, 0.1])  # type: ignore[arg-type]
    assert prod.write_index == 0
    assert prod.push(np.zeros(0, np.float32)) == 0


def test_role_methods_are_guarded(rings: Rings) -> None:
    owner = rings.create()
    prod, cons = rings.attach(owner.name, "producer"), rings.attach(owner.name, "consumer")
    out: npt.NDArray[np.float32] = np.zeros(4, np.float32)
    with pytest.raises(RuntimeError, match="producer role"):
        cons.push(pattern(0, 1))
    with pytest.raises(RuntimeError, match="producer role"):
        cons.wait_for_space(1)
    with pytest.raises(RuntimeError, match="consumer role"):
        prod.read_into(out, 4)
    with pytest.raises(RuntimeError, match="consumer role"):
        prod.commit_read(0)
    with pytest.raises(RuntimeError, match="consumer role; this handle is observer-only"):
        owner.clear()
    with pytest.raises(RuntimeError, match="no role"):
        owner.start_heartbeat()
    cons.close()
    with pytest.raises(ValueError, match="closed"):
        cons.read_into(out, 4)
    with pytest.raises(ValueError, match="closed"):
        _ = cons.read_index

"""Edge cases of the PCM ring (shm/ring.py) that tests/test_ring.py leaves out: bad names and
sizes, segments that cannot be mapped, corrupt headers, a failed construction or claim cleaning
up after itself, two attachers racing for one role, a superseded handle closing, the stage tee's
clock, rewinding after a lost device, and liveness through psutil where /proc is not used.

All on real POSIX shared memory. A few tests subclass ``PcmRing`` to make one step fail (a
construction or a claim that cannot fail on demand otherwise): the subclass is a test fake, the
cleanup it exercises is the real one.
"""

from __future__ import annotations

import _posixshmem
import mmap
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import shm.ring as ring_module
from shm import HEADER_BYTES, LAYOUT_VERSION, MAGIC, PcmRing, pid_running
from tests.support.ring_reader import pattern, take
from tests.test_ring import Rings, _leftovers, seg_name


@pytest.fixture(autouse=True)
def no_leftover_segments() -> Iterator[None]:
    """Every test must remove the segments it made (as in tests/test_ring.py)."""
    yield
    left = _leftovers()
    for path in left:
        PcmRing.unlink_name(os.path.basename(path))
    assert not left, f"test left shared-memory segments behind: {left}"


@pytest.fixture
def rings() -> Iterator[Rings]:
    made = Rings()
    yield made
    made.close()


def _segment_exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


# ----------------------------------------------------------------------------------------
# names and sizes
# ----------------------------------------------------------------------------------------


def test_name_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="ring name must be a str, got int"):
        PcmRing.create(123, 1024, 1000, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ring name must be a str, got NoneType"):
        PcmRing.attach(None, "consumer")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "/", "a\0b", "x" * 251])
def test_bad_names_are_refused_before_anything_is_created(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid ring name"):
        PcmRing.create(bad, 1024, 1000, 1.0)


def test_leading_slash_names_the_same_segment(rings: Rings) -> None:
    owner = rings.create()
    prod = rings.attach("/" + owner.name, "producer")
    assert prod.name == owner.name


def test_bool_sizes_are_refused() -> None:
    name = seg_name()
    with pytest.raises(TypeError, match="capacity_frames must be an int"):
        PcmRing.create(name, True, 1000, 1.0)
    with pytest.raises(TypeError, match="sample_rate must be an int"):
        PcmRing.create(name, 1024, True, 1.0)
    assert not _segment_exists(name)


def test_overfill_guard_below_one_frame_is_refused() -> None:
    name = seg_name()
    with pytest.raises(ValueError, match="less than one frame at 1000 Hz"):
        PcmRing.create(name, 1024, 1000, 0.0004)  # rounds to 0 frames
    assert not _segment_exists(name)


@pytest.mark.parametrize(
    "capacity",
    [
        2**61,  # the segment size does not fit a C off_t: ftruncate raises OverflowError
        2**50,  # 4 PiB: tmpfs takes the size (sparse) but no address space holds the mapping
    ],
)
def test_unmappable_capacity_fails_and_leaves_no_segment(capacity: int) -> None:
    name = seg_name()
    with pytest.raises((OSError, OverflowError)):
        PcmRing.create(name, capacity, 1000, 1.0)
    assert not _segment_exists(name), "a failed create must unlink the segment it made"


# ----------------------------------------------------------------------------------------
# failures part-way through create / attach clean up
# ----------------------------------------------------------------------------------------


class _InitFails(PcmRing):
    """Test fake: constructing a handle fails (as a failed atomics view would)."""

    def __init__(self, name: str, mapping: mmap.mmap, *, owner: bool) -> None:
        raise MemoryError("no views (test fake)")


class _BindFails(PcmRing):
    """Test fake: binding the data array fails after the header was published."""

    def _bind_layout(self, capacity: int, sample_rate: int, max_fill: int) -> None:
        raise MemoryError("no data view (test fake)")


def test_create_that_fails_to_build_a_handle_unlinks_its_segment() -> None:
    name = seg_name()
    with pytest.raises(MemoryError, match="test fake"):
        _InitFails.create(name, 1024, 1000, 1.0)
    assert not _segment_exists(name)


def test_create_that_fails_after_publishing_unlinks_its_segment() -> None:
    name = seg_name()
    with pytest.raises(MemoryError, match="test fake"):
        _BindFails.create(name, 1024, 1000, 1.0, role="producer")
    assert not _segment_exists(name)


def test_attach_that_fails_to_build_a_handle_leaves_the_ring_usable(rings: Rings) -> None:
    owner = rings.create()
    with pytest.raises(MemoryError, match="test fake"):
        _InitFails.attach(owner.name, "producer")
    # Nothing was claimed: a real producer attaches and pushes.
    prod = rings.attach(owner.name, "producer")
    assert prod.push(pattern(0, 10)) == 10


def test_a_mapping_too_small_for_the_header_is_refused_and_released() -> None:
    mapping = mmap.mmap(-1, 100)  # anonymous, smaller than the 14 header fields
    with pytest.raises(Exception):  # noqa: B017  (atomics' own error type for a short buffer)
        PcmRing("skald-not-a-segment", mapping, owner=False)
    assert mapping.closed, "the views made before the failure must be released and the mapping closed"


def _write_header(name: str, fields: dict[int, int], size: int) -> None:
    """A raw segment of ``size`` bytes with header field i (64-byte lines) set to fields[i]."""
    fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as m:
            for i, value in fields.items():
                m[i * 64 : i * 64 + 8] = value.to_bytes(8, "little")
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("capacity", "rate", "max_fill", "data_frames"),
    [
        (1000, 1000, 500, 1024),  # capacity below the minimum
        (1536, 1000, 500, 2048),  # not a power of two
        (2048, 1000, 500, 1024),  # the segment is too short for its capacity
        (1024, 1000, 0, 1024),  # no overfill guard
        (1024, 1000, 2048, 1024),  # guard above the capacity
        (1024, 0, 500, 1024),  # no rate
    ],
)
def test_attach_rejects_a_corrupt_header(capacity: int, rate: int, max_fill: int, data_frames: int) -> None:
    name = seg_name()
    header = {0: MAGIC, 1: LAYOUT_VERSION, 2: capacity, 3: rate, 4: max_fill}
    _write_header(name, header, HEADER_BYTES + data_frames * 4)
    try:
        with pytest.raises(ValueError, match=f"not a skald PCM ring \\(corrupt header: capacity={capacity}, "):
            PcmRing.attach(name, "consumer")
    finally:
        PcmRing.unlink_name(name)


# ----------------------------------------------------------------------------------------
# claiming a role
# ----------------------------------------------------------------------------------------


class _LosesTheRace(PcmRing):
    """Test fake: another process stores its pid into the role between the liveness check and
    the compare-and-swap (the race the CAS exists for), deterministically."""

    def _side_state(self, side: Any) -> Any:
        state = super()._side_state(side)
        self._a_pid[side].store(1)  # pid 1: somebody else's
        return state


def test_two_attachers_racing_for_a_role_only_one_wins(rings: Rings) -> None:
    owner = rings.create()
    with pytest.raises(RuntimeError, match=r"another producer attached to ring .* concurrently"):
        _LosesTheRace.attach(owner.name, "producer")


def _stop_heart(ring: PcmRing, role: str) -> None:
    """Make ``ring``'s side read as dead: a heartbeat of 0 (what a hung side looks like, at once)."""
    ring._a_hb[role].store(0)


def test_closing_a_superseded_handle_does_not_detach_its_successor(rings: Rings) -> None:
    owner = rings.create()
    old = PcmRing.attach(owner.name, "producer")
    _stop_heart(old, "producer")  # the old worker hangs
    new = rings.attach(owner.name, "producer")  # its restart takes the role over
    old.close()  # the hung worker finally exits: it must not mark the new one detached
    assert owner._a_hb["producer"].load() != 0  # (no heartbeat thread yet that could hide a 0)
    new.start_heartbeat(0.02)
    with pytest.raises(RuntimeError, match="already has a live producer"):
        PcmRing.attach(owner.name, "producer")
    assert new.push(pattern(0, 5)) == 5


def test_closing_the_current_holder_frees_the_role(rings: Rings) -> None:
    owner = rings.create()
    first = PcmRing.attach(owner.name, "consumer")
    first.start_heartbeat(0.02)
    first.close()
    first.close()  # twice: no error
    second = rings.attach(owner.name, "consumer")  # at once: a clean close reads as dead
    assert second.read_index == 0


# ----------------------------------------------------------------------------------------
# repr, clock, rewind, heartbeat arguments
# ----------------------------------------------------------------------------------------


def test_repr_names_role_and_layout(rings: Rings) -> None:
    owner = rings.create(2000, 1000, 1.5)
    prod = rings.attach(owner.name, "producer")
    assert repr(owner) == f"PcmRing({owner.name!r}, observer, capacity=2048, max_fill=1500, rate=1000, owner=True)"
    assert repr(prod) == f"PcmRing({owner.name!r}, producer, capacity=2048, max_fill=1500, rate=1000, owner=False)"
    prod.close()
    assert repr(prod).startswith(f"PcmRing({owner.name!r}, closed, ")


def test_stage_clock_is_published_by_the_producer_and_read_by_anyone(rings: Rings) -> None:
    prod, cons = rings.pair()
    assert cons.clock_epoch_ns() == 0  # none published yet
    prod.publish_clock(123_456_789_012)
    assert cons.clock_epoch_ns() == 123_456_789_012
    assert prod.clock_epoch_ns() == 123_456_789_012
    with pytest.raises(RuntimeError, match="publish_clock\\(\\) needs the producer role; this handle is consumer"):
        cons.publish_clock(1)
    cons.close()
    with pytest.raises(ValueError, match="closed"):
        cons.clock_epoch_ns()


def test_rewind_replays_what_the_device_never_played(rings: Rings) -> None:
    # capacity 1024, guard 500 frames: every frame at or above read_index - 524 is intact.
    prod, cons = rings.pair(1024, 1000, 0.5)
    out: npt.NDArray[np.float32] = np.zeros(1024, np.float32)
    assert cons.rewind_floor == 0
    assert prod.push(pattern(0, 500)) == 500
    assert cons.read_into(out, 500) == 500
    cons.commit_read(500)
    assert prod.push(pattern(500, 500)) == 500
    assert cons.read_into(out, 300) == 300
    cons.commit_read(800)
    assert cons.rewind_floor == 800 - 524
    with pytest.raises(ValueError, match=r"rewind_read\(275\): must be in \[rewind_floor=276, read_index=800\]"):
        cons.rewind_read(275)
    with pytest.raises(ValueError, match=r"rewind_read\(801\)"):
        cons.rewind_read(801)
    cons.rewind_read(np.int64(276))  # type: ignore[arg-type]  # numpy ints are indexes too
    assert cons.read_index == 276
    assert prod.read_index == 276  # the producer sees the moved index (less free space)
    # The fill is now above the guard: the producer stops until the replay is consumed.
    assert prod.push(pattern(1000, 10)) == 0
    np.testing.assert_array_equal(take(cons, 1024), pattern(276, 724))
    assert prod.push(pattern(1000, 600)) == 500  # then it fills up to the guard again (wrapping)
    np.testing.assert_array_equal(take(cons, 1024), pattern(1000, 500))
    with pytest.raises(RuntimeError, match="rewind_read\\(\\) needs the consumer role"):
        prod.rewind_read(0)


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
def test_heartbeat_interval_must_be_positive(rings: Rings, interval: float) -> None:
    prod, _ = rings.pair()
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        prod.start_heartbeat(interval)


# ----------------------------------------------------------------------------------------
# liveness without /proc (psutil), as on a system that has none
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("have_proc", [True, False])
def test_pid_running_sees_live_zombie_and_reaped_processes(monkeypatch: pytest.MonkeyPatch, have_proc: bool) -> None:
    # have_proc=False takes the psutil path a system without /proc takes (the flag is set at
    # import from os.path.isdir("/proc/self")); the processes are real either way.
    monkeypatch.setattr(ring_module, "_HAVE_PROC", have_proc)
    assert pid_running(os.getpid())
    child = subprocess.Popen(["true"])
    try:
        # Wait for the exit without reaping: the child stays a zombie.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert not pid_running(child.pid), "a zombie is not running"
    finally:
        child.wait()
    assert not pid_running(child.pid), "a reaped pid is gone"


def test_owner_may_hold_a_role_too() -> None:
    name = seg_name()
    owner = PcmRing.create(name, 1024, 1000, 1.0, role="producer")
    try:
        assert owner.push(pattern(0, 10)) == 10
        with pytest.raises(RuntimeError, match="already has a live producer"):
            PcmRing.attach(name, "producer")
        cons = PcmRing.attach(name, "consumer")
        np.testing.assert_array_equal(take(cons, 10), pattern(0, 10))
        cons.close()
    finally:
        owner.close()
        owner.unlink()


def test_direct_atomics_are_the_c11_operations_of_the_atomics_views() -> None:
    """``DirectAtomic`` calls the ``atomics`` package's own C functions without its Python
    wrapping: what it stores, the package's view loads, and the other way round, over the whole
    unsigned 64-bit range and in every memory order the ring uses. Every hot field of a real ring
    takes the direct path (a silent fallback would put ~5 µs back on each operation in the audio
    callback); an object offering only ``load``/``store`` (a changed package) still works."""
    import types

    import atomics
    from atomics import MemoryOrder

    from shm.ring import DirectAtomic

    buf = bytearray(16)
    ctx = atomics.atomicview(buffer=memoryview(buf)[:8], atype=atomics.UINT)
    view = ctx.__enter__()
    try:
        direct = DirectAtomic(view)
        assert direct._load is not None and direct._store is not None
        for value in (0, 1, 48_000, 2**32 + 7, 2**63 + 12_345, 2**64 - 1):
            direct.store(value, MemoryOrder.RELEASE)
            assert view.load(MemoryOrder.ACQUIRE) == value
            view.store(value ^ 0x5A5A, MemoryOrder.SEQ_CST)
            assert direct.load(MemoryOrder.ACQUIRE) == value ^ 0x5A5A
            assert direct.load() == value ^ 0x5A5A
        assert bytes(buf[8:]) == bytes(8), "nothing written past the field"
        narrow_ctx = atomics.atomicview(buffer=memoryview(buf)[8:12], atype=atomics.UINT)
        narrow = narrow_ctx.__enter__()
        try:
            four = DirectAtomic(narrow)  # not 8 bytes: the view's own methods
            assert four._load is None
            four.store(2**32 - 1, MemoryOrder.RELEASE)
            assert four.load(MemoryOrder.ACQUIRE) == 2**32 - 1 == int.from_bytes(buf[8:12], "little")
        finally:
            narrow_ctx.__exit__(None, None, None)
        buf[8:12] = bytes(4)
        plain = DirectAtomic(types.SimpleNamespace(load=view.load, store=view.store))
        assert plain._load is None
        plain.store(99, MemoryOrder.RELEASE)
        assert plain.load(MemoryOrder.ACQUIRE) == 99 == direct.load()
    finally:
        ctx.__exit__(None, None, None)
    ring = PcmRing.create(seg_name(), 1024, 22050, 0.04)
    try:
        assert all(a._load is not None for a in (ring._a_write, ring._a_read, ring._a_clock))
    finally:
        ring.close()
        ring.unlink()

"""Lock-free single-producer single-consumer float32 PCM ring in POSIX shared memory.

The TTS worker process (producer) pushes mono float32 audio; the audio-consumer process
(consumer) reads it from its PortAudio callback. Nothing here takes a lock, and the consumer's
read path allocates no sample buffer. The API is what production calls, and no more:

    supervisor   create(name, capacity_frames, rate, max_fill_s)   unlink()   close()
                 sample_rate, capacity_frames, buffer_length_seconds()
    worker       attach(name, "producer")   start_heartbeat()   push(block)
                 wait_for_space(n, timeout, cancel)   write_index, read_index   close()
    consumer     attach(name, "consumer")   start_heartbeat()   clear()   read_index
                 read_into(out, n, start_index)   commit_read(index)   close()
                 rewind_read(index)   rewind_floor   (a lost device: replay what it never played)
    stage tee    producer (audio consumer): push(block)   publish_clock(epoch_ns)
                 consumer (web actor): read_into, commit_read   clock_epoch_ns()
    cleanup      PcmRing.unlink_name(name)   (a crashed run's leftover, an orphaned child)

Layout of the segment ``/dev/shm/<name>`` (layout version 3)::

    offset  size   field                    owner      notes
    ------  -----  -----------------------  ---------  --------------------------------------
         0  u64    magic  "SKALDPCM"        creator    stored LAST at create (publishes header)
        64  u64    layout version           creator    == LAYOUT_VERSION
       128  u64    capacity_frames          creator    power of two, >= 1024
       192  u64    sample_rate              creator    Hz
       256  u64    max_fill_frames          creator    <= capacity_frames (overfill guard)
       320  u64    write_index              producer   frames ever written (never wraps)
       384  u64    read_index               consumer   frames ever consumed (never wraps)
       448  u64    producer_pid             producer   0 = never attached
       512  u64    producer_heartbeat_ns    producer   CLOCK_MONOTONIC; 0 = detached cleanly
       576  u64    producer_epoch           producer   +1 per producer attach (restarts)
       640  u64    consumer_pid             consumer   0 = never attached
       704  u64    consumer_heartbeat_ns    consumer   CLOCK_MONOTONIC; 0 = detached cleanly
       768  u64    consumer_epoch           consumer   +1 per consumer attach (restarts)
       832  u64    clock_epoch_ns           producer   stage tee: DAC time of frame 0; 0 = none
       896  ...    unused                              (header is one 4096-byte page)
      4096  f32    data[capacity_frames]               sample k lives at data[k & (capacity-1)]

    +-------------- header page (4096 B), one field per 64-byte cache line -------------+
    | magic | version | capacity | rate | max_fill | WRITE | READ | p.pid | p.hb | ...   |
    +------------------------------------------------------------------------------------+
    | data[0] data[1] ...                       float32 x capacity_frames               |
    |          ^ read_index & mask              ^ write_index & mask                     |
    |          [------ readable: write_index - read_index <= max_fill_frames ------)    |
    +------------------------------------------------------------------------------------+

Every field sits on its own 64-byte cache line so the producer's stores (write_index,
heartbeat) and the consumer's stores (read_index, heartbeat) never false-share.

Indices, as in PortAudio's ``pa_ringbuffer.c``: both indices only ever grow (u64 frames: 2**64
frames at 48 kHz is ~12 million years), are masked with ``capacity - 1`` on access, and the
fill level is simply ``write_index - read_index``. The producer never lets it exceed
``max_fill_frames`` (<= capacity), so it never overwrites unread data.

Reading is split in two, because the consumer plays only what the worker announced and skips
what was cancelled: :meth:`PcmRing.read_into` copies frames from any ``start_index`` in
``[read_index, write_index]`` without consuming them (so one callback block may read up to a
skip window, jump over it and read on after it), and :meth:`PcmRing.commit_read` then moves
``read_index`` once, past everything the block played or skipped. Until that commit the
producer may not reuse any frame of the block, read or skipped.

Memory ordering. Every header field shared across processes is read and written only through
an ``atomics`` view (a C11 atomic on the shared page); plain numpy/struct stores to the header
would give no ordering guarantee at all. The sample data itself is copied with plain numpy
(memcpy) and ordered by the indices:

* Producer (:meth:`push`): ``r = read_index.load(acquire)``; copy samples into
  ``data[w .. w+k)``; ``write_index.store(w+k, release)``. The release store makes the copy
  visible before the new index: the memcpy happens-before the store.
* Consumer (:meth:`read_into`): ``w = write_index.load(acquire)``; copy ``data[s .. s+k)`` out
  for ``s + k <= w``. The acquire load synchronises with the producer's release store, so the
  consumer's reads of the data happen-after the producer's writes of it.
* Consumer (:meth:`commit_read`, :meth:`clear`): ``read_index.store(r, release)`` after the
  copies of the frames below ``r``. The producer's acquire load of ``read_index`` synchronises
  with it, so the consumer's reads of a region happen-before the producer reuses it: unread (or
  still-being-read) data is never overwritten. Frames in ``[read_index, r)`` that were skipped,
  not read, are released the same way.
* The immutable config fields are written before ``magic`` (a seq_cst store); an attacher
  loads ``magic`` first and rejects the segment unless it matches.

The atomic calls are opaque C calls, so neither Python nor the C compiler can move the numpy
copies across them; the release/acquire semantics order them on the CPU (on x86 TSO this is
free, on ARM it emits the barriers). Each hot call uses at most two: one load of the peer's
index and one store of our own, with our own index cached locally (only its owner ever writes
it). The hot fields (``write_index``, ``read_index``, ``clock_epoch_ns``) go through
:class:`DirectAtomic`: the same C11 operations of ``atomics`` (its ``patomic`` functions, same
memory orders), called without the package's per-call Python wrapping (4.6 µs a load, 5.9 µs a
store, measured; 0.4 µs direct) and without releasing the GIL: the audio callback makes several
per block, and each GIL release was a moment another thread of the consumer could take the
interpreter from it. ``tests/test_ring_stress.py`` proves the argument across processes,
driving this API the way the worker and the consumer do.

Ownership. The creator (:meth:`PcmRing.create`) owns the segment and is the only one that
unlinks it (:meth:`PcmRing.unlink`; :meth:`PcmRing.unlink_name` for a cleanup path). The
segment is opened with ``shm_open`` + ``mmap`` directly instead of
``multiprocessing.shared_memory.SharedMemory``: in Python 3.11 that class registers every
attacher with the resource tracker, which unlinks the segment under everyone else when the
attacher exits. No resource tracker ever learns about these segments.

Liveness. Each side stores its pid and a CLOCK_MONOTONIC heartbeat (system-wide on Linux),
refreshed by a daemon thread (:meth:`PcmRing.start_heartbeat`). A side is alive when its pid
exists and is not a zombie and its heartbeat is fresh; a SIGKILLed process is seen as dead at
once (its pid vanishes or turns zombie), a hung one once its heartbeat goes stale. Two calls
ask: :meth:`wait_for_space` raises ``PeerDeadError`` when the consumer died (the worker never
spins on a full ring nobody drains), and :meth:`attach` refuses a role whose holder is alive but
takes over a dead one's (a restarted actor). The heartbeat thread needs the GIL: a process that
holds it longer than the peer's timeout (0.5 s; one long numpy or C-extension call that does
not release it) reads as dead.
"""

from __future__ import annotations

import _posixshmem
import ctypes
import math
import mmap
import operator
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, NoReturn, cast

import atomics
import numpy as np
import numpy.typing as npt
import psutil
from atomics import MemoryOrder

__all__ = [
    "HEADER_BYTES",
    "LAYOUT_VERSION",
    "MAGIC",
    "MIN_CAPACITY_FRAMES",
    "PcmRing",
    "PeerDeadError",
    "Role",
    "pid_running",
]

Role = Literal["producer", "consumer"]
_PeerState = Literal["absent", "alive", "dead"]

MAGIC: int = int.from_bytes(b"SKALDPCM", "little")
# 2: the underrun counters and the end-of-stream flag left the header (nothing in production
# wrote them), so the epochs moved; a version-1 segment is refused, never misread.
# 3: clock_epoch_ns (the stage tee's clock) in a line that was unused.
LAYOUT_VERSION: int = 3
HEADER_BYTES: int = 4096
MIN_CAPACITY_FRAMES: int = 1024
_CACHE_LINE = 64
_FRAME_BYTES = 4  # float32 mono

# Header fields in layout order; field i lives at byte offset i * _CACHE_LINE.
_FIELDS: tuple[str, ...] = (
    "magic",
    "version",
    "capacity_frames",
    "sample_rate",
    "max_fill_frames",
    "write_index",
    "read_index",
    "producer_pid",
    "producer_heartbeat_ns",
    "producer_epoch",
    "consumer_pid",
    "consumer_heartbeat_ns",
    "consumer_epoch",
    "clock_epoch_ns",
)
assert len(_FIELDS) * _CACHE_LINE <= HEADER_BYTES

_ACQ = MemoryOrder.ACQUIRE
_REL = MemoryOrder.RELEASE

# A side whose heartbeat is older than this is dead. Five missed beats of the default 0.1 s
# interval: a loaded machine may delay a beat or two, never five.
_PEER_TIMEOUT_S = 0.5
# Poll period of wait_for_space, and how often it asks whether the consumer still lives (a
# /proc read costs ~20 us, pointless every millisecond).
_POLL_S = 0.001
_LIVENESS_EVERY_NS = 10_000_000
_HAVE_PROC = os.path.isdir("/proc/self")


class PeerDeadError(RuntimeError):
    """The other side of the ring died (process gone, zombie, or heartbeat stale)."""

    def __init__(self, message: str, *, side: Role, pid: int) -> None:
        super().__init__(message)
        self.side: Role = side
        self.pid: int = pid


def pid_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a SIGKILLed child stays a zombie until reaped)."""
    if _HAVE_PROC:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except FileNotFoundError:
            return False
        except OSError:  # pragma: no cover - needs a hidepid /proc mount (root, system-wide)
            pass  # e.g. hidepid mounts: fall through to psutil
        else:
            # The command name may contain spaces and parentheses; the state follows the last ')'.
            state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
            return state not in (b"Z", b"X", b"x")
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # pragma: no cover - Linux: /proc/PID/stat is world-readable
        return True  # it exists; we just may not look at it


def _shm_name(name: str) -> str:
    """Validate a segment name and return its POSIX form (leading slash)."""
    if not isinstance(name, str):
        raise TypeError(f"ring name must be a str, got {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if not bare or "/" in bare or "\0" in bare or len(bare) > 250:
        raise ValueError(f"invalid ring name {name!r}: want 1-250 characters without '/' or NUL")
    return "/" + bare


def _check_role(role: object) -> Role:
    if role not in ("producer", "consumer"):
        raise ValueError(f"role must be 'producer' or 'consumer', got {role!r}")
    return cast(Role, role)


_LOAD_FN = ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)  # (obj, order, out)
_STORE_FN = ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)  # (obj, desired, order)


class DirectAtomic:
    """Load and store of one 8-byte ``atomics`` view by calling its C functions directly.

    ``atomics`` implements each operation with ``patomic`` (C11 ``atomic_load_explicit`` and
    ``atomic_store_explicit``), but wraps every call in Python: the memory order and width are
    validated and the operands wrapped in buffer objects, ~50 Python calls per operation, and
    the call itself releases the GIL. Here the same function pointers are re-typed as
    ``PYFUNCTYPE`` (the GIL stays held over a one-instruction operation) and called with a
    ``c_uint64`` operand made per call (no buffer shared between threads). Should the package's
    internals ever change shape, the view's own ``load``/``store`` are used instead."""

    __slots__ = ("_address", "_load", "_store", "view")

    def __init__(self, view: Any) -> None:
        self.view = view
        self._load: Any = None
        self._store: Any = None
        self._address = 0
        try:
            from atomics._impl.atomic.core import OpType

            core = view._core
            load_at = ctypes.cast(core.get_op_func(OpType.LOAD), ctypes.c_void_p).value or 0
            store_at = ctypes.cast(core.get_op_func(OpType.STORE), ctypes.c_void_p).value or 0
            # Only an 8-byte view with both functions (the ring's views are unsigned 64-bit); any
            # other keeps the view's own methods.
            direct = core.width == 8 and bool(load_at) and bool(store_at)
            self._address = int(core.address)
            self._load = _LOAD_FN(load_at) if direct else None
            self._store = _STORE_FN(store_at) if direct else None
        except (ImportError, AttributeError, TypeError):
            self._load = self._store = None

    def load(self, order: MemoryOrder = MemoryOrder.SEQ_CST) -> int:
        if self._load is None:
            return int(self.view.load(order))
        out = ctypes.c_uint64()
        self._load(self._address, order.value, ctypes.addressof(out))
        return out.value

    def store(self, value: int, order: MemoryOrder = MemoryOrder.SEQ_CST) -> None:
        if self._store is None:
            self.view.store(value, order)
            return
        desired = ctypes.c_uint64(value)
        self._store(self._address, ctypes.addressof(desired), order.value)


class PcmRing:
    """A lock-free SPSC ring of mono float32 PCM in POSIX shared memory.

    Get one with :meth:`create` (the owner, who later calls :meth:`unlink`) or :meth:`attach`.
    A handle acts as at most one role: ``"producer"`` (push side) or ``"consumer"`` (read
    side); the owner is an observer (fill level, rate) unless ``create(..., role=...)`` gives it
    a role too (tests that play both owner and worker). Calling a method of the other role
    raises ``RuntimeError``. One producer and one consumer at a time: attaching a role whose
    current holder is still alive raises ``RuntimeError``.

    The module docstring draws the layout and gives the memory-ordering argument.
    """

    # ------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------

    def __init__(self, name: str, mapping: mmap.mmap, *, owner: bool) -> None:
        """Private: use :meth:`create` or :meth:`attach`."""
        self._name = name.lstrip("/")
        self._mm: mmap.mmap | None = mapping
        self._owner = owner
        self._role: Role | None = None
        # The role methods check this one attribute; it turns None when the handle closes.
        self._active: Role | None = None
        self._buf: memoryview | None = memoryview(mapping)
        self._slices: list[memoryview] = []
        self._ctxs: list[Any] = []
        self._data: npt.NDArray[np.float32] | None = None
        self._hb_thread: threading.Thread | None = None
        self._hb_stop: threading.Event | None = None
        self._capacity = 0
        self._mask = 0
        self._max_fill = 0
        self._sample_rate = 0
        self._w = 0  # producer's cached write_index (it is the only writer)
        self._r = 0  # consumer's cached read_index (it is the only writer)
        self._epoch = 0
        views: dict[str, Any] = {}
        try:
            for i, field in enumerate(_FIELDS):
                sl = self._buf[i * _CACHE_LINE : i * _CACHE_LINE + 8]
                self._slices.append(sl)
                ctx = atomics.atomicview(buffer=sl, atype=atomics.UINT)
                views[field] = ctx.__enter__()
                self._ctxs.append(ctx)
        except BaseException:
            self._release_mapping()
            raise
        # One attribute per field: the hot paths avoid a dict lookup per op.
        self._a_magic = views["magic"]
        self._a_version = views["version"]
        self._a_capacity = views["capacity_frames"]
        self._a_rate = views["sample_rate"]
        self._a_max_fill = views["max_fill_frames"]
        self._a_write = DirectAtomic(views["write_index"])
        self._a_read = DirectAtomic(views["read_index"])
        self._a_pid = {"producer": views["producer_pid"], "consumer": views["consumer_pid"]}
        self._a_hb = {"producer": views["producer_heartbeat_ns"], "consumer": views["consumer_heartbeat_ns"]}
        self._a_epoch = {"producer": views["producer_epoch"], "consumer": views["consumer_epoch"]}
        self._a_clock = DirectAtomic(views["clock_epoch_ns"])

    @classmethod
    def create(
        cls,
        name: str,
        capacity_frames: int,
        sample_rate: int,
        max_fill_s: float,
        *,
        role: Role | None = None,
    ) -> PcmRing:
        """Create the segment ``/dev/shm/<name>``; the returned handle owns it.

        ``capacity_frames`` is rounded up to a power of two (minimum 1024). ``max_fill_s``
        caps how much audio may be buffered (``round(max_fill_s * sample_rate)`` frames, which
        must not exceed the rounded capacity). ``role`` optionally makes this handle the
        producer or consumer too. Raises ``FileExistsError`` if the name is taken (a crashed
        run's leftover: remove it with :meth:`unlink_name`). Attach only after this returns.
        """
        posix_name = _shm_name(name)
        if isinstance(capacity_frames, bool):
            raise TypeError("capacity_frames must be an int")
        capacity_frames = operator.index(capacity_frames)
        if isinstance(sample_rate, bool):
            raise TypeError("sample_rate must be an int")
        sample_rate = operator.index(sample_rate)
        if capacity_frames < MIN_CAPACITY_FRAMES:
            raise ValueError(f"capacity_frames must be >= {MIN_CAPACITY_FRAMES}, got {capacity_frames}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if role is not None:
            _check_role(role)
        capacity = 1 << (capacity_frames - 1).bit_length()
        if not 0 < max_fill_s < math.inf:  # also rejects NaN
            raise ValueError(f"max_fill_s must be a finite number > 0, got {max_fill_s}")
        max_fill = round(max_fill_s * sample_rate)
        if max_fill > capacity:
            raise ValueError(
                f"max_fill_s={max_fill_s} is {max_fill} frames at {sample_rate} Hz, more than the ring "
                f"holds ({capacity} frames = {capacity / sample_rate:.3f} s after rounding "
                f"capacity_frames={capacity_frames} up to a power of two)"
            )
        if max_fill < 1:
            raise ValueError(f"max_fill_s={max_fill_s} is less than one frame at {sample_rate} Hz")
        size = HEADER_BYTES + capacity * _FRAME_BYTES
        fd = _posixshmem.shm_open(posix_name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            PcmRing.unlink_name(name)
            raise
        os.close(fd)  # the mapping keeps the segment referenced
        try:
            ring = cls(name, mapping, owner=True)
        except BaseException:
            mapping.close()
            PcmRing.unlink_name(name)
            raise
        try:
            # ftruncate zero-filled everything: indices, pids and flags start at 0.
            ring._a_version.store(LAYOUT_VERSION)
            ring._a_capacity.store(capacity)
            ring._a_rate.store(sample_rate)
            ring._a_max_fill.store(max_fill)
            ring._a_magic.store(MAGIC)  # last: publishes the header to attachers
            ring._bind_layout(capacity, sample_rate, max_fill)
            if role is not None:
                ring._claim(role)
        except BaseException:
            ring.close()
            PcmRing.unlink_name(name)
            raise
        return ring

    @classmethod
    def attach(cls, name: str, role: Role) -> PcmRing:
        """Attach to an existing ring as ``"producer"`` or ``"consumer"``.

        A producer continues from the current ``write_index`` (a restarted worker resumes the
        stream); a consumer continues from ``read_index``. Raises ``FileNotFoundError`` if there
        is no such segment, ``ValueError`` if it is not a skald PCM ring of this layout version,
        ``RuntimeError`` if the role's current holder is still alive.
        """
        posix_name = _shm_name(name)
        role = _check_role(role)
        try:
            fd = _posixshmem.shm_open(posix_name, os.O_RDWR, mode=0)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no PCM ring named {name!r} (/dev/shm{posix_name})") from e
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES:
                raise ValueError(f"{name!r} is not a skald PCM ring (segment is only {size} bytes)")
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        try:
            ring = cls(name, mapping, owner=False)
        except BaseException:
            mapping.close()
            raise
        try:
            ring._validate(size)
            ring._claim(role)
        except BaseException:
            ring.close()
            raise
        return ring

    def _validate(self, size: int) -> None:
        magic = self._a_magic.load()  # first: it publishes the rest of the header
        if magic != MAGIC:
            raise ValueError(f"{self._name!r} is not a skald PCM ring (bad magic {magic:#018x})")
        version = self._a_version.load()
        if version != LAYOUT_VERSION:
            raise ValueError(
                f"{self._name!r} is not a skald PCM ring of layout version {LAYOUT_VERSION} "
                f"(segment has version {version})"
            )
        capacity = self._a_capacity.load()
        rate = self._a_rate.load()
        max_fill = self._a_max_fill.load()
        if (
            capacity < MIN_CAPACITY_FRAMES
            or capacity & (capacity - 1)
            or HEADER_BYTES + capacity * _FRAME_BYTES > size
            or not 0 < max_fill <= capacity
            or rate == 0
        ):
            raise ValueError(
                f"{self._name!r} is not a skald PCM ring (corrupt header: capacity={capacity}, "
                f"max_fill={max_fill}, sample_rate={rate}, segment {size} bytes)"
            )
        self._bind_layout(capacity, rate, max_fill)

    def _bind_layout(self, capacity: int, sample_rate: int, max_fill: int) -> None:
        assert self._mm is not None
        self._capacity = capacity
        self._mask = capacity - 1
        self._sample_rate = sample_rate
        self._max_fill = max_fill
        self._data = np.frombuffer(self._mm, dtype=np.float32, count=capacity, offset=HEADER_BYTES)

    def _claim(self, role: Role) -> None:
        """Take ``role``: refuse a live holder, then publish heartbeat before pid."""
        pid_view = self._a_pid[role]
        old_pid = pid_view.load()
        if self._side_state(role) == "alive":
            raise RuntimeError(f"ring {self._name!r} already has a live {role} (pid {old_pid})")
        if role == "producer":
            self._w = self._a_write.load(_ACQ)
        else:
            self._r = self._a_read.load(_ACQ)
        # Heartbeat before pid: a peer that sees the new pid must not see a stale heartbeat
        # (which would read as "dead" on the very first attach).
        self._a_hb[role].store(time.monotonic_ns())
        # Compare-and-swap so two processes racing to take over a dead holder cannot both win.
        if not pid_view.cmpxchg_strong(expected=old_pid, desired=os.getpid()).success:
            raise RuntimeError(f"another {role} attached to ring {self._name!r} concurrently")
        self._epoch = self._a_epoch[role].fetch_add(1) + 1
        self._role = role
        self._active = role

    # ------------------------------------------------------------------------------------
    # lifetime
    # ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the heartbeat, mark this side detached, release views and the mapping.

        Safe to call twice. Does not unlink (see :meth:`unlink`). A side that closed reads to
        its peer as dead, so a worker waiting for space gets ``PeerDeadError`` instead of
        waiting forever, and a restarted actor may take the role over at once.
        """
        if self._mm is None:
            return
        self._active = None
        self._stop_heartbeat()
        role = self._role
        # Mark detached, unless a successor already took the role over. (The views are live here:
        # they are released only together with the mapping, and _mm is not None.)
        if role is not None and self._a_pid[role].load() == os.getpid() and self._a_epoch[role].load() == self._epoch:
            self._a_hb[role].store(0)
        self._release_mapping()

    def _release_mapping(self) -> None:
        # Exported buffers (numpy arrays, memoryview slices, cffi buffers) must all be
        # released before mmap.close(), or it raises BufferError.
        self._data = None
        for ctx in self._ctxs:
            ctx.__exit__(None, None, None)
        self._ctxs.clear()
        for sl in self._slices:
            sl.release()
        self._slices.clear()
        # Called once per handle (close() returns early after it), with both still set.
        assert self._buf is not None and self._mm is not None
        self._buf.release()
        self._buf = None
        self._mm.close()
        self._mm = None

    def unlink(self) -> None:
        """Remove the segment name (owner only; idempotent). Mappings stay valid until closed."""
        if not self._owner:
            raise RuntimeError(
                f"only the creator of ring {self._name!r} unlinks it; a cleanup path that lost the "
                "owner handle can use PcmRing.unlink_name()"
            )
        PcmRing.unlink_name(self._name)

    @staticmethod
    def unlink_name(name: str) -> None:
        """Remove the segment ``name`` without attaching. Idempotent: a missing one is ignored."""
        try:
            _posixshmem.shm_unlink(_shm_name(name))
        except FileNotFoundError:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._mm is None else (self._role or "observer")
        return (
            f"PcmRing({self._name!r}, {state}, capacity={self._capacity}, "
            f"max_fill={self._max_fill}, rate={self._sample_rate}, owner={self._owner})"
        )

    # ------------------------------------------------------------------------------------
    # read-only properties
    # ------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Segment name, without the leading slash (what attachers are given)."""
        return self._name

    @property
    def capacity_frames(self) -> int:
        """Ring size in frames (a power of two)."""
        return self._capacity

    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz (metadata; the ring itself counts frames)."""
        return self._sample_rate

    @property
    def write_index(self) -> int:
        """Total frames ever pushed."""
        self._check_open()
        return self._w if self._role == "producer" else int(self._a_write.load(_ACQ))

    @property
    def read_index(self) -> int:
        """Total frames ever consumed (played or skipped)."""
        self._check_open()
        return self._r if self._role == "consumer" else int(self._a_read.load(_ACQ))

    def buffer_length_seconds(self) -> float:
        """Audio pushed but not yet consumed, in seconds."""
        r = self.read_index  # first: read_index <= write_index at any moment, so never negative
        return (self.write_index - r) / self._sample_rate

    # ------------------------------------------------------------------------------------
    # producer
    # ------------------------------------------------------------------------------------

    def push(self, block: npt.NDArray[np.floating[Any]]) -> int:
        """Copy as many frames of ``block`` as fit under ``max_fill_frames``; return that count.

        Never blocks. Returns 0 when full; the caller retries the rest (``block[accepted:]``),
        e.g. after :meth:`wait_for_space`, so no sample is dropped silently. ``block`` must be
        a 1-D float32 array; float64 is accepted and converted to float32 (one temporary
        copy). Other dtypes and multi-channel (2-D) blocks are rejected.
        """
        if self._active != "producer":
            self._wrong_role("producer", "push")
        if not isinstance(block, np.ndarray):
            raise TypeError(f"push() takes a numpy float32 array, got {type(block).__name__}")
        if block.ndim != 1:
            raise ValueError(f"push() takes a 1-D mono block, got shape {block.shape}")
        if block.dtype != np.float32:
            if block.dtype != np.float64:
                raise TypeError(f"push() takes float32 PCM (float64 is converted), got {block.dtype}")
            block = block.astype(np.float32)
        n = block.shape[0]
        w = self._w
        r = self._a_read.load(_ACQ)  # before the copy: frames below r are free to reuse
        k = min(n, self._max_fill - (w - r))
        if k <= 0:
            return 0
        data = self._data
        assert data is not None
        pos = w & self._mask
        first = min(k, self._capacity - pos)
        data[pos : pos + first] = block[:first]
        if k > first:  # wrapped
            data[: k - first] = block[first:k]
        w += k
        self._a_write.store(w, _REL)  # publishes the copy above
        self._w = w
        return k

    def wait_for_space(
        self,
        n: int,
        timeout: float | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> bool:
        """Sleep-poll (~1 ms) until ``n`` frames fit; True then.

        Returns False on timeout or when ``cancel()`` returns True. Raises
        ``PeerDeadError`` if the consumer died (a dead consumer never leaves the producer
        spinning); an absent consumer (not attached yet) is waited for.
        """
        if self._active != "producer":
            self._wrong_role("producer", "wait_for_space")
        if not 0 <= n <= self._max_fill:
            raise ValueError(f"wait_for_space(n={n}): n must be in 0..max_fill_frames={self._max_fill}")
        deadline = None if timeout is None else time.monotonic_ns() + int(timeout * 1e9)
        next_liveness = 0
        while True:
            if self._max_fill - (self._w - self._a_read.load(_ACQ)) >= n:
                return True
            if cancel is not None and cancel():
                return False
            now = time.monotonic_ns()
            if now >= next_liveness:
                self._raise_if_peer_dead("consumer")
                next_liveness = now + _LIVENESS_EVERY_NS
            if deadline is not None and now >= deadline:
                return False
            time.sleep(_POLL_S)

    def publish_clock(self, epoch_ns: int) -> None:
        """Publish when frame 0 of this ring would be heard (CLOCK_MONOTONIC ns): frame ``i`` is
        heard at ``epoch_ns + i * 1e9 / sample_rate``. The stage tee's producer (the audio
        consumer) publishes it from the DAC times of its device, so the reader can pace what it
        forwards by the device's clock. One atomic store; never waits."""
        if self._active != "producer":
            self._wrong_role("producer", "publish_clock")
        self._a_clock.store(epoch_ns, _REL)

    def clock_epoch_ns(self) -> int:
        """The last :meth:`publish_clock` value (0: none published yet)."""
        self._check_open()
        return int(self._a_clock.load(_ACQ))

    # ------------------------------------------------------------------------------------
    # consumer
    # ------------------------------------------------------------------------------------

    def read_into(self, out: npt.NDArray[np.float32], n: int, start_index: int | None = None) -> int:
        """Copy ``min(n, write_index - start)`` frames into ``out[:k]`` without consuming them.

        ``start`` is ``start_index`` or the read index; it must lie in
        ``[read_index, write_index]`` (below ``read_index`` the producer may already have
        reused the frames). ``out`` is a 1-D float32 array with at least ``n`` elements.
        Allocates no sample buffer: callable from an audio callback. Returns the frames copied.
        """
        if self._active != "consumer":
            self._wrong_role("consumer", "read_into")
        if not isinstance(out, np.ndarray) or out.ndim != 1 or out.dtype != np.float32:
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise TypeError(f"out must be a 1-D float32 numpy array, got {got}")
        if not 0 <= n <= out.shape[0]:
            raise ValueError(f"read_into(n={n}): n must be in 0..len(out)={out.shape[0]}")
        w = self._a_write.load(_ACQ)  # before the copy: frames below w are published
        start = self._r if start_index is None else operator.index(start_index)
        if not self._r <= start <= w:
            raise ValueError(
                f"read_into(start_index={start_index}): must be in [read_index={self._r}, write_index={w}]"
            )
        k = min(n, w - start)
        if k <= 0:
            return 0
        data = self._data
        assert data is not None
        pos = start & self._mask
        first = min(k, self._capacity - pos)
        out[:first] = data[pos : pos + first]
        if k > first:  # wrapped
            out[first:k] = data[: k - first]
        return k

    def commit_read(self, new_read_index: int) -> None:
        """Consume up to ``new_read_index``: frames before it, read or skipped, may be overwritten.

        Raises ``ValueError`` unless ``read_index <= new_read_index <= write_index``.
        """
        if self._active != "consumer":
            self._wrong_role("consumer", "commit_read")
        new_read_index = operator.index(new_read_index)  # numpy ints have no to_bytes()
        w = self._a_write.load(_ACQ)
        if not self._r <= new_read_index <= w:
            raise ValueError(f"commit_read({new_read_index}): must be in [read_index={self._r}, write_index={w}]")
        self._a_read.store(new_read_index, _REL)  # after the block's copies (module docstring)
        self._r = new_read_index

    @property
    def rewind_floor(self) -> int:
        """The lowest index :meth:`rewind_read` may move the read index back to.

        The producer keeps ``write_index - read_index <= max_fill_frames``, so the frame it
        overwrites when it writes frame ``w`` is ``w - capacity``, and ``w < read_index +
        max_fill_frames``: every frame at or above ``read_index - (capacity - max_fill_frames)``
        is still intact, whatever the producer does meanwhile (it loads ``read_index`` before each
        copy, and a read index moved back only makes it stop sooner). With the default 60-s ring
        and 30-s overfill guard that is over 60 s of audio behind the speaker."""
        self._check_open()
        return max(0, self._r - (self._capacity - self._max_fill))

    def rewind_read(self, new_read_index: int) -> None:
        """Move the read index back to ``new_read_index`` (>= :attr:`rewind_floor`): the frames
        from there on are read again. For a consumer whose output device died with audio in its
        buffer that nobody heard. Call it only while nothing reads the ring (the callback is
        stopped): it is the consumer's own index, and the producer sees it as less free space."""
        if self._active != "consumer":
            self._wrong_role("consumer", "rewind_read")
        new_read_index = operator.index(new_read_index)
        floor = self.rewind_floor
        if not floor <= new_read_index <= self._r:
            raise ValueError(f"rewind_read({new_read_index}): must be in [rewind_floor={floor}, read_index={self._r}]")
        self._a_read.store(new_read_index, _REL)
        self._r = new_read_index

    def clear(self) -> int:
        """Discard everything pushed so far (a consumer starting up); returns frames discarded."""
        if self._active != "consumer":
            self._wrong_role("consumer", "clear")
        w = self._a_write.load(_ACQ)
        dropped = w - self._r
        self._a_read.store(w, _REL)
        self._r = w
        return int(dropped)

    # ------------------------------------------------------------------------------------
    # liveness
    # ------------------------------------------------------------------------------------

    def start_heartbeat(self, interval_s: float = 0.1) -> None:
        """Start a daemon thread refreshing this side's heartbeat every ``interval_s`` (idempotent).

        Every actor that holds a role calls this right after attaching: its peer considers it
        dead once its heartbeat is older than 0.5 s, whether or not audio is flowing.
        """
        if self._active is None:
            self._wrong_role(None, "start_heartbeat")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if self._hb_thread is not None and self._hb_thread.is_alive():
            return
        stop = threading.Event()
        thread = threading.Thread(
            target=self._heartbeat_loop,
            args=(self._a_hb[self._active], stop, interval_s),
            name=f"skald-ring-heartbeat-{self._name}",
            daemon=True,
        )
        self._hb_stop, self._hb_thread = stop, thread
        thread.start()

    def _stop_heartbeat(self) -> None:
        if self._hb_stop is not None:
            self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join()
        self._hb_stop = self._hb_thread = None

    @staticmethod
    def _heartbeat_loop(hb: Any, stop: threading.Event, interval_s: float) -> None:
        while True:
            hb.store(time.monotonic_ns())
            if stop.wait(interval_s):
                return

    def _side_state(self, side: Role) -> _PeerState:
        """Liveness of ``side``: absent (never attached), alive (pid running, heartbeat fresh) or dead."""
        self._check_open()
        pid = self._a_pid[side].load()
        if pid == 0:
            return "absent"
        hb = self._a_hb[side].load()
        if hb == 0 or not pid_running(pid):
            return "dead"
        return "alive" if time.monotonic_ns() - hb < _PEER_TIMEOUT_S * 1e9 else "dead"

    def _raise_if_peer_dead(self, side: Role) -> None:
        if self._side_state(side) == "dead":
            pid = int(self._a_pid[side].load())
            raise PeerDeadError(f"the {side} of ring {self._name!r} (pid {pid}) is dead", side=side, pid=pid)

    # ------------------------------------------------------------------------------------
    # errors
    # ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._mm is None:
            raise ValueError(f"PcmRing {self._name!r} is closed")

    def _wrong_role(self, needed: Role | None, method: str) -> NoReturn:
        self._check_open()
        if needed is None:
            raise RuntimeError(f"{method}() needs a producer or consumer handle; this one has no role")
        have = self._role or "observer-only"
        raise RuntimeError(f"{method}() needs the {needed} role; this handle is {have}")

"""Ring readers for tests, built only on the production consumer API of ``shm.PcmRing``.

``PcmRing`` has exactly what the TTS worker and the audio consumer call: ``read_into`` (copy
from any ``start_index`` without consuming) and ``commit_read`` (consume up to an index, read or
skipped). What tests want beyond that lives here, on top of those two calls:

* ``take(ring, n)`` — read up to ``n`` frames and consume them (allocates: tests only).
* ``WindowedReader`` — reads the way the consumer's callback (``PlaybackCore.render`` in
  ``actors/audio_consumer.py``) does: only frames the worker announced (below ``limit``), skip
  windows ``[lo, hi)`` jumped over, every piece copied with ``read_into(start_index=r)``, one
  ``commit_read`` per block, zero-fill when short. Without the consumer's fade, pre-buffer and
  int16 output, so a test can compare every played sample with what was pushed.
* ``pattern(start, n)`` — the check sequence: frame ``k`` is ``(k mod 2**20) / 2**20``, exact in
  float32, so a frame's value names its index and any loss, duplicate or reordering shows.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shm import PcmRing

F32 = npt.NDArray[np.float32]

PATTERN_PERIOD = 2**20


def pattern(start: int, n: int) -> F32:
    """Frames ``start .. start+n`` of the check sequence."""
    idx = np.arange(start, start + n, dtype=np.int64) % PATTERN_PERIOD
    return (idx / PATTERN_PERIOD).astype(np.float32)


def take(ring: PcmRing, n: int) -> F32:
    """Copy up to ``n`` frames from the read index and consume them; return what was copied."""
    out = np.empty(n, dtype=np.float32)
    k = ring.read_into(out, n)
    ring.commit_read(ring.read_index + k)
    return out[:k]


class WindowedReader:
    """A consumer's read loop over a ring: announced frames only, skip windows jumped over.

    ``announce(end)`` raises the play limit (the worker's ``Segment``: frames below ``end`` are
    in the ring); ``skip(lo, hi)`` adds a skip window (a cancelled request's frames); both are
    what the consumer's control thread publishes. ``read_block(out)`` is the callback: it fills
    ``out`` completely and returns how many frames of it are real audio. It allocates no sample
    buffer. Windows are kept sorted and merged, as the consumer keeps them.
    """

    def __init__(self, ring: PcmRing) -> None:
        self.ring = ring
        self.limit = ring.read_index
        self.windows: list[tuple[int, int]] = []
        self.skipped = 0  # frames jumped over, all windows together

    def announce(self, end: int) -> None:
        self.limit = max(self.limit, end)

    def skip(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        merged: list[tuple[int, int]] = []
        for w_lo, w_hi in sorted([*self.windows, (lo, hi)]):
            if merged and w_lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], w_hi))
            else:
                merged.append((w_lo, w_hi))
        self.windows = merged

    def read_block(self, out: F32) -> int:
        ring = self.ring
        frames = len(out)
        r = r_start = ring.read_index
        pos = 0
        while pos < frames:
            # Inside a skip window: jump over it (the consumer fades the first frames of a cut
            # that is audible; here nothing is scaled, so every played frame can be checked).
            jumped = False
            for lo, hi in self.windows:
                if lo <= r < hi:
                    self.skipped += hi - r
                    r = hi
                    jumped = True
                    break
            if jumped:
                continue
            end = self.limit
            for lo, _ in self.windows:
                if r < lo < end:
                    end = lo
            n = min(frames - pos, end - r)
            if n <= 0:
                break
            got = ring.read_into(out[pos : pos + n], n, start_index=r)
            if got <= 0:
                break
            pos += got
            r += got
        if r != r_start:
            ring.commit_read(r)  # once per block: the producer reuses nothing the block touched
            self.windows = [w for w in self.windows if w[1] > r]
        if pos < frames:
            out[pos:] = 0.0
        return pos

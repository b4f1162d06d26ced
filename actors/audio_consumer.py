"""The audio consumer: reads the PCM ring and feeds the sink. Nothing here ever waits on TTS.

This process imports no engine (no onnxruntime, no torch): its heap and GIL stay quiet so the
PortAudio callback runs on time. Two threads matter:

* the **callback** (``PlaybackCore.render``), run by PortAudio for the device sink or by a
  real-time clock thread for the ``null``/``wav`` sinks, so TTFA and underruns mean the same on
  every paced sink. It reads the ring as float32, writes the whole output buffer, zero-fills and
  counts an underrun when audio that is still expected is missing, and converts to int16 with
  ``actors.audio.output.Int16Converter`` (rounded, clipped, optional TPDF dither). When the device refuses
  the ring's rate it runs at a whole multiple of it and the callback upsamples
  (``actors.audio.output.IntegerUpsampler``). It allocates no sample buffer, takes no lock, logs nothing
  and never blocks.
* the **control thread** (``ConsumerControl``), which handles ``Segment`` and ``Cancel``
  messages, publishes what the callback may play, and turns the callback's counters and
  timing log into events (``playback_started`` with TTFA, ``underrun``, ``request_finished``).

They share two small preallocated numpy arrays (single-element stores are atomic under the
GIL): ``ctl`` (written by control, read by the callback) and ``stats``/``timelog`` (written
by the callback, read by control)::

    ctl[PLAY_LIMIT]            frames below this index were announced by the worker
    ctl[EXPECTING]             1 while an announced request still has audio to come
    ctl[WIN_TABLE]             which of the two skip-window tables is live (double buffered)
    windows[t, i] = (from, to) frames in [from, to) are skipped (cancelled or unannounced)

The callback plays only announced frames (below PLAY_LIMIT), so a cancelled request's audio
that was pushed a moment before the cancel can be skipped rather than heard. When a skip cuts
audio that is playing, the first ``fade_ms`` of the cut audio is played with a linear ramp to
zero, so the stop is a fade, not a click.

The **stage tee** (only when the supervisor runs the HTTP gateway): every block the callback
renders — fades, skips, silence and all, at the ring rate, before any upsampling — is also pushed
into a second SPSC ring (``ActorSpec.tee_name``) that the web actor reads for its WebRTC
listeners. The push never waits: when the web side is slow, stopped or absent, the frames that do
not fit are dropped for the web side only and counted (``tee_dropped_frames``); the device never
notices. Because the tee carries silence too, its frames are the stage clock the listeners are
paced by, on every sink (``--sink null`` included).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from actors import wire
from actors.audio.output import Int16Converter, IntegerUpsampler
from actors.audio.prebuffer import AdaptiveResume, PlaybackState, PrebufferConfig, PrebufferPolicy
from actors.runtime import ActorSpec, Send, process_rss_mb, process_thread_ids, run_actor, set_process_nice
from config.settings import Settings
from shm import PcmRing

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger("skald.audio_consumer")

PLAY_LIMIT, EXPECTING, WIN_TABLE, N_WIN_0, N_WIN_1 = range(5)
MAX_WINDOWS = 16
UNDERRUNS, UNDERRUN_FRAMES, BLOCKS, STATE, LOG_COUNT, DEVICE_UNDERFLOWS, CUTS, CALLBACK_REALTIME = range(8)
TEE_FRAMES, TEE_DROPPED = 8, 9  # stage tee: frames pushed for the web side, frames it had no room for
LOG_N = 512  # timing-log entries (about 6 s of 256-frame blocks at 22.05 kHz)


def cancel_fade_ramp(n: int) -> np.ndarray:
    """The gains of a cut's ``n``-frame fade-out, the first frame's already below 1 and the last 0:
    a raised cosine (``audio.fade_ms``; ``scripts/bench fade`` measures this curve's splatter)."""
    return (0.5 * (1.0 + np.cos(np.pi * np.arange(1, n + 1) / n))).astype(np.float32)


class PlaybackCore:
    """The callback body, shared by every sink. ``render`` fills one output block.

    Samples travel as float32 from the ring to the last step: the ring is read into a
    preallocated float32 block, the cut fade is applied there, the block is upsampled when the
    device runs at a whole multiple of the ring rate (``upsample``, ``IntegerUpsampler``), and
    ``Int16Converter`` rounds (optionally with TPDF dither) and clips into the device's int16
    buffer. Every buffer is allocated here, once.
    """

    def __init__(
        self,
        ring: PcmRing,
        blocksize: int,
        prebuffer: PrebufferPolicy,
        fade_ms: float,
        *,
        upsample: int = 1,
        dither: bool = False,
        dither_seed: int | None = None,
        max_frames: int = 0,
        tee: PcmRing | None = None,
    ) -> None:
        self.ring = ring
        self.tee = tee  # the stage tee's producer handle (web listeners), or None
        self._tee_epoch_ns = 0  # the tee clock last published (DAC time of tee frame 0)
        self.sample_rate = ring.sample_rate
        self.blocksize = blocksize
        self.policy = prebuffer
        self.ctl = np.zeros(5, dtype=np.int64)
        self.windows = np.zeros((2, MAX_WINDOWS, 2), dtype=np.int64)
        self.stats = np.zeros(10, dtype=np.int64)
        # DAC time at which the output went silent (or moved on) after the last skip-window
        # jump, and the ring index the jump started from; stats[CUTS] counts jumps. Written by
        # the callback before it bumps the count, read by control after it sees the count move.
        self.cutlog = np.zeros(2, dtype=np.float64)
        self.timelog = np.zeros((LOG_N, 3), dtype=np.float64)  # r_start, r_end, dac_monotonic
        self.fade_frames = max(0, int(self.sample_rate * fade_ms / 1000.0))
        # Raised-cosine fade-out: its slope goes to zero at the end, so the last samples before
        # silence move by far less than a linear ramp's (the stop is inaudible, not a tick).
        self._ramp = cancel_fade_ramp(max(self.fade_frames, 1))
        self._audible = False  # the last frame written was real audio (a cut must fade)
        self._fade_done = 0  # ramp frames already played of a fade that goes on in the next block
        self._fade_from = 0  # ring index where the cut being faded began
        self.ctl[PLAY_LIMIT] = ring.read_index
        # Ring frames one render may be asked for: the sink's block, with room for hosts that
        # hand the callback more than it asked for.
        self.max_frames = max(int(max_frames), 4 * blocksize, 4096)
        self.upsample = int(upsample)
        self.device_rate = self.sample_rate * self.upsample
        self._float = np.zeros(self.max_frames, dtype=np.float32)
        self._upsampler: IntegerUpsampler | None = None
        self._up = self._float
        self.output_delay_s = 0.0  # from a ring frame's DAC time to when it is centred in the output
        self._filter_tail = 0  # ring frames of silence the upsampler still needs to ring out
        if self.upsample > 1:
            self._upsampler = IntegerUpsampler(self.upsample, self.max_frames)
            self._up = np.zeros(self.max_frames * self.upsample, dtype=np.float32)
            self.output_delay_s = self._upsampler.delay_s(self.sample_rate)
        self._int16 = Int16Converter(self.max_frames * self.upsample, dither=dither, seed=dither_seed)
        self._silence = np.zeros(self.max_frames, dtype=np.float32)  # what the tee gets on idle blocks

    def render(self, out: np.ndarray, dac_time: float) -> int:
        """Fill ``out`` (int16, 1-D, ``upsample`` × the ring frames of this block) completely;
        return the ring frames of real audio written. ``dac_time`` is when ``out[0]`` is heard."""
        up = self.upsample
        frames = len(out) // up
        if frames * up != len(out) or frames > self.max_frames:
            raise ValueError(f"render: {len(out)} output frames is not a multiple of {up} up to {self.max_frames}")
        dac_time += self.output_delay_s
        r = r_start = self.ring.read_index
        limit = int(self.ctl[PLAY_LIMIT])
        expecting = bool(self.ctl[EXPECTING])
        table = int(self.ctl[WIN_TABLE])
        nwin = int(self.ctl[N_WIN_0 + table])
        if limit <= r and not expecting and nwin == 0 and self.policy.state == PlaybackState.IDLE:
            # Idle fast path: most callbacks between utterances. Less work here is less time
            # stolen from the inference threads on a small machine.
            self._audible = False
            if self._filter_tail > 0:
                # The upsampler still rings with the end of the last sound: play that out.
                self._float[:frames] = 0.0
                self._emit(frames, out)
                self._filter_tail -= frames
            else:
                out.fill(0)
            if self.tee is not None:
                self._tee(self._silence, frames, dac_time)
            self._log_block(r, r, dac_time, PlaybackState.IDLE)
            return 0
        buf = self._float
        wins = self.windows[table]
        buffered = max(0, limit - r)
        state = self.policy.step(buffered / self.sample_rate, not expecting, expecting or buffered > 0)
        pos = 0
        guard = 0
        while pos < frames and guard < 2 * MAX_WINDOWS + 4:
            guard += 1
            # Inside a skip window: jump over it (fading out if it cuts audio mid-sound).
            jumped = False
            for w in range(nwin):
                lo, hi = int(wins[w, 0]), int(wins[w, 1])
                if lo <= r < hi:
                    done = self._fade_done
                    if done or (state == PlaybackState.PLAYING and self._audible and self.fade_frames):
                        # The first fade_frames of the cut audio are played under a ramp to zero. A
                        # fade longer than what is left of this block goes on in the next one (the
                        # read index moves through the faded frames), so the ramp always ends at 0.
                        if not done:
                            self._fade_from = r
                        k = min(self.fade_frames - done, hi - r, frames - pos)
                        got = self.ring.read_into(buf[pos : pos + k], k, start_index=r)
                        seg = buf[pos : pos + got]
                        np.multiply(seg, self._ramp[done : done + got], out=seg)
                        pos += got
                        r += got
                        done += got
                        if got == k and done < self.fade_frames and r < hi:
                            self._fade_done = done  # the block is full: the fade continues next time
                            jumped = True
                            break
                    else:
                        self._fade_from = r
                    self._fade_done = 0
                    self.cutlog[0] = dac_time + pos / self.sample_rate
                    self.cutlog[1] = self._fade_from
                    self.stats[CUTS] += 1
                    r = hi
                    self._audible = False
                    jumped = True
                    break
            if jumped:
                continue
            if state != PlaybackState.PLAYING:
                break
            end = limit
            for w in range(nwin):
                lo = int(wins[w, 0])
                if r < lo < end:
                    end = lo
            n = min(frames - pos, end - r)
            if n <= 0:
                break
            self._fade_done = 0  # (a fade whose window went away ends here)
            got = self.ring.read_into(buf[pos : pos + n], n, start_index=r)
            if got <= 0:
                break
            pos += got
            r += got
            self._audible = True
        if r != r_start:
            self.ring.commit_read(r)
        if pos < frames:
            buf[pos:frames] = 0.0
            if state == PlaybackState.PLAYING and expecting:
                self.stats[UNDERRUNS] += 1
                self.stats[UNDERRUN_FRAMES] += frames - pos
            self._audible = False
        self._emit(frames, out)
        if self.tee is not None:
            self._tee(buf, frames, dac_time)
        if self._upsampler is not None:
            self._filter_tail = self._upsampler.taps_per_phase if pos > 0 else self._filter_tail - frames
        self._log_block(r_start, r, dac_time, state)
        return pos

    def render_held(self, out: np.ndarray, dac_time: float) -> None:
        """The device is lost and the narration waits for it: ``out`` is silence, the ring is not
        read, and the stage tee gets silence, so the stage clock (WebRTC listeners' pacing, the
        timing log) goes on. Same contract as ``render``: no allocation, no lock, no wait."""
        dac_time += self.output_delay_s
        out.fill(0)
        self._audible = False
        self._fade_done = 0
        r = self.ring.read_index
        if self.tee is not None:
            self._tee(self._silence, len(out) // self.upsample, dac_time)
        self._log_block(r, r, dac_time, int(self.stats[STATE]))

    def first_unheard(self, since: float) -> int:
        """The first ring frame whose DAC time is at or after ``since`` (from the timing log): what
        a device that died at ``since`` never played. The read index when nothing that late was
        rendered."""
        first = self.ring.read_index
        count = int(self.stats[LOG_COUNT])
        for j in range(count - 1, max(-1, count - LOG_N - 1), -1):
            r_start, r_end, dac = self.timelog[j % LOG_N]
            if r_end <= r_start:
                continue  # an idle or held block: no ring frames
            if dac >= since:
                first = int(r_start)
                continue
            k = int((since - dac) * self.sample_rate)
            if r_start + k < r_end:
                first = int(r_start + k)
            break
        return first

    def _tee(self, block: np.ndarray, frames: int, dac_time: float) -> None:
        """Push the block just rendered into the stage tee; what does not fit is dropped and counted
        (the web side is slow or gone). Two atomic ops and a memcpy: never a wait. When the DAC
        clock moved against the tee's frame count (start, an underflow, dropped frames), the tee's
        clock is published again (one more atomic store), so the web side paces by the DAC."""
        assert self.tee is not None
        epoch_ns = int((dac_time - self.tee.write_index / self.sample_rate) * 1e9)
        if abs(epoch_ns - self._tee_epoch_ns) > 100_000:  # 0.1 ms
            self._tee_epoch_ns = epoch_ns
            self.tee.publish_clock(max(1, epoch_ns))
        pushed = self.tee.push(block[:frames])
        self.stats[TEE_FRAMES] += pushed
        if pushed < frames:
            self.stats[TEE_DROPPED] += frames - pushed

    def _emit(self, frames: int, out: np.ndarray) -> None:
        """float32 block → (upsampled) → int16 ``out``."""
        if self._upsampler is None:
            self._int16.convert(self._float[:frames], out)
        else:
            n = self._upsampler.process_into(self._float[:frames], self._up)
            self._int16.convert(self._up[:n], out)

    def _log_block(self, r_start: int, r_end: int, dac_time: float, state: int) -> None:
        i = int(self.stats[LOG_COUNT]) % LOG_N
        self.timelog[i, 0] = r_start
        self.timelog[i, 1] = r_end
        self.timelog[i, 2] = dac_time
        self.stats[LOG_COUNT] += 1
        self.stats[BLOCKS] += 1
        self.stats[STATE] = state

    def dac_time_of(self, index: int) -> float | None:
        """When frame ``index`` reached (or reaches) the speaker, from the callback's timing log."""
        count = int(self.stats[LOG_COUNT])
        for j in range(count - 1, max(-1, count - LOG_N - 1), -1):
            r_start, r_end, dac = self.timelog[j % LOG_N]
            if r_start <= index < r_end:
                return float(dac + max(0.0, index - r_start) / self.sample_rate)
            if r_end <= index and j == count - 1:
                return None  # not played yet
        return None


@dataclass
class TrackedRequest:
    request_id: str
    t_accepted: float
    ranges: list[list[int]] = field(default_factory=list)  # merged [start, end) of announced audio
    last_seen: bool = False
    cancelled: bool = False
    started: bool = False
    ttfa_ms: float = -1.0
    frames: int = 0
    underruns: int = 0
    underflows_at_start: int = -1
    chunk_starts: list[int] = field(default_factory=list)  # ring index where each chunk's audio begins
    last_index: int = -1  # the chunk index of the last Segment

    @property
    def first_start(self) -> int:
        return self.ranges[0][0] if self.ranges else -1

    @property
    def end(self) -> int:
        return self.ranges[-1][1] if self.ranges else -1


#: Cancelled request ids the consumer remembers (each id's Silenced is sent once; late segments skipped).
CANCELLED_MEMORY = 4096


class ConsumerControl:
    """Tracks requests from ``Segment`` messages and publishes what the callback may play."""

    def __init__(self, core: PlaybackCore, send: Any) -> None:
        self.core = core
        self.ring = core.ring
        self.send = send
        self.requests: dict[str, TrackedRequest] = {}
        self.windows: list[list[int]] = []
        self.announced = self.ring.read_index  # end of the highest announced frame
        self._last_underruns = 0
        self.finished: list[str] = []
        # Cancels whose silence is not yet measured: request_id -> (cuts seen at cancel, lo, hi,
        # audible, cancel seen at, the request's first frame, callback blocks at cancel) where
        # [lo, hi) is the cancelled audio still ahead of the read index at that moment.
        self._silencing: dict[str, tuple[int, int, int, bool, float, int, int]] = {}
        # Requests cancelled here, newest last (bounded): their Silenced is sent or owed exactly
        # once, and a Segment of theirs that was in flight at the cancel is skipped, never played.
        self._cancelled: dict[str, None] = {}
        # The end of the last skip window the read index has passed: audio below it may have been
        # skipped (cancelled, preempted), so a replay after a lost device never starts below it.
        self._skipped_to = 0
        # True while the output device is lost and the narration waits for it (nothing is heard).
        self.held = False
        # prebuffer.adaptive: the resume threshold learned from underruns (None: fixed).
        self.adaptive: AdaptiveResume | None = None

    # ---------------------------------------------------------------- messages
    def handle(self, msg: wire.Message) -> None:
        if isinstance(msg, wire.Segment):
            self._segment(msg)
        elif isinstance(msg, wire.Cancel):
            self._cancel(msg)
        elif isinstance(msg, wire.Skip):
            self._skip(msg)

    def _skip(self, msg: wire.Skip) -> None:
        """An urgent request goes first: never play ``[start, end)``; the worker pushes that audio
        again after it, so the requests it belonged to end only at their new last segment."""
        faded = msg.start + self.core.fade_frames  # heard as the fade-out; not pushed again
        for req in self.requests.values():
            for lo, hi in req.ranges:
                overlap = min(hi, msg.end) - max(lo, faded)
                if overlap > 0:
                    req.frames -= overlap  # heard later, from the frames pushed again
            if req.request_id in msg.reopen and not req.cancelled:
                req.last_seen = False
        self._add_window(msg.start, msg.end)
        self._publish()

    def _segment(self, seg: wire.Segment) -> None:
        r = self.ring.read_index
        if seg.start < r and not self.requests and self.announced == r:
            # A consumer started after a crash is told the chunk its predecessor was playing from
            # that chunk's start (Supervisor._hold_for_consumer): what the dead one took may never
            # have left its device buffer, so the chunk is heard again whole. Safe here: nothing
            # is announced yet, so the callback reads nothing and commits no read index. Never
            # below what the ring still holds intact.
            target = max(seg.start, self.ring.rewind_floor, self._skipped_to)
            if target < r:
                self.ring.rewind_read(target)
                self.announced = target
                log.info("chunk %d of %s again from its start: %d frames", seg.index, seg.request_id, r - target)
        req = self.requests.get(seg.request_id)
        if req is None:
            req = self.requests[seg.request_id] = TrackedRequest(seg.request_id, seg.t_accepted)
            if seg.request_id in self._cancelled:
                # Pushed before the worker saw the cancel, announced after ours: never heard.
                req.cancelled = True
                req.last_seen = True
        if seg.end > seg.start:
            if seg.start > self.announced:
                # Frames pushed but never announced (a worker died between push and message).
                self._add_window(self.announced, seg.start)
            if seg.index != req.last_index:
                req.last_index = seg.index
                req.chunk_starts.append(seg.start)
            if req.ranges and req.ranges[-1][1] == seg.start:
                req.ranges[-1][1] = seg.end
            else:
                req.ranges.append([seg.start, seg.end])
            req.frames += seg.end - seg.start
            if req.cancelled:
                self._add_window(seg.start, seg.end)
            self.announced = max(self.announced, seg.end)
        if seg.last:
            req.last_seen = True
        self._publish()

    def _cancel(self, msg: wire.Cancel) -> None:
        r = self.ring.read_index
        targets = list(self.requests.values()) if msg.all else [self.requests.get(msg.request_id)]
        named = list(msg.request_ids) if msg.all else [msg.request_id]
        cuts = int(self.core.stats[CUTS])
        now = time.monotonic()
        for req in targets:
            if req is None or req.cancelled:
                continue
            req.cancelled = True
            req.last_seen = True
            ahead = [(max(lo, r), hi) for lo, hi in req.ranges if hi > r]
            for lo, hi in ahead:
                self._add_window(lo, hi)
            if req.ranges:
                lo = ahead[0][0] if ahead else req.end
                hi = ahead[-1][1] if ahead else req.end
                first = req.ranges[0][0]
                blocks = int(self.core.stats[BLOCKS])
                self._silencing[req.request_id] = (cuts, lo, hi, req.started, now, first, blocks)
        # The contract (docs/protocol.md): every cancelled request gets exactly one Silenced before
        # its request_finished. One with audio here is measured at the speaker (_measure_silence);
        # one with none (queued, still synthesizing, unknown here) was never audible: silent now.
        for request_id in [*named, *(q.request_id for q in targets if q is not None)]:
            if not request_id or request_id in self._cancelled:
                continue
            self._cancelled[request_id] = None
            if request_id not in self._silencing:
                self.send(wire.Silenced(request_id=request_id, t_silent=now, was_audible=False, t_cancel_seen=now))
        while len(self._cancelled) > CANCELLED_MEMORY:
            del self._cancelled[next(iter(self._cancelled))]
        if msg.all and self.announced > r:
            # Whatever is announced but unplayed goes, whoever it belonged to.
            self._add_window(r, self.announced)
        self._publish()

    def _add_window(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        self.windows.append([lo, hi])
        self.windows.sort()
        merged: list[list[int]] = []
        for w in self.windows:
            if merged and w[0] <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], w[1])
            else:
                merged.append(list(w))
        self.windows = merged

    def _publish(self) -> None:
        """Write the inactive window table, then flip: the callback never sees a half-written one."""
        core = self.core
        r = self.ring.read_index
        self._skipped_to = max([self._skipped_to, *(w[1] for w in self.windows if w[1] <= r)])
        self.windows = [w for w in self.windows if w[1] > r]
        live = int(core.ctl[WIN_TABLE])
        spare = 1 - live
        # More windows than slots: the earliest MAX_WINDOWS are published and the play limit
        # stops before the first unpublished one, so nothing cancelled is ever heard.
        shown = self.windows[:MAX_WINDOWS]
        for i, (lo, hi) in enumerate(shown):
            core.windows[spare, i, 0] = lo
            core.windows[spare, i, 1] = hi
        limit = self.announced
        if len(self.windows) > MAX_WINDOWS:
            limit = min(limit, self.windows[MAX_WINDOWS][0])
        core.ctl[N_WIN_0 + spare] = len(shown)
        core.ctl[WIN_TABLE] = spare
        core.ctl[PLAY_LIMIT] = limit
        core.ctl[EXPECTING] = int(any(not q.last_seen for q in self.requests.values()))

    def _measure_silence(self, r: int, now: float) -> None:
        """Report when each cancelled request's audio stopped reaching the speaker."""
        cuts = int(self.core.stats[CUTS])
        blocks = int(self.core.stats[BLOCKS])
        for request_id, entry in list(self._silencing.items()):
            cuts_at_cancel, lo, hi, audible, seen, first, blocks_at_cancel = entry
            t_silent: float | None = None
            if self.held:
                t_silent = now  # the device is lost: nothing of it can be heard
            elif not audible and r <= first and blocks >= blocks_at_cancel + 2:
                # None of its frames was ever rendered, and every block since the one in flight
                # at the cancel read the window table that skips them: never heard, silent since
                # the cancel. Without this, a request cancelled while the stage pre-buffers waited
                # for a cut that only comes when playback starts (0.3-1.3 s in `bench cancel`).
                t_silent = seen
            elif lo >= hi:
                # Everything had already been rendered: silence comes when its end leaves the device.
                end_dac = self.core.dac_time_of(lo - 1)
                t_silent = max(now, end_dac) if end_dac is not None else now
            elif cuts > cuts_at_cancel and lo <= self.core.cutlog[1] < hi:
                t_silent = float(self.core.cutlog[0])
            elif r >= hi:
                t_silent = now  # jumped over by a later cut: it was silenced no later than now
            if t_silent is not None:
                del self._silencing[request_id]
                self.send(
                    wire.Silenced(request_id=request_id, t_silent=t_silent, was_audible=audible, t_cancel_seen=seen)
                )

    # ---------------------------------------------------------------- polling
    def poll(self) -> None:
        """Turn the callback's progress into events; called every few milliseconds."""
        r = self.ring.read_index
        now = time.monotonic()
        if self._silencing:
            self._measure_silence(r, now)
        underruns = int(self.core.stats[UNDERRUNS])
        playing: TrackedRequest | None = None
        for req in list(self.requests.values()):
            if req.cancelled:
                if not req.ranges or r >= req.end:
                    del self.requests[req.request_id]
                continue
            if req.ranges and req.first_start < r and not req.started:
                req.started = True
                req.underflows_at_start = int(self.core.stats[DEVICE_UNDERFLOWS])
                dac = self.core.dac_time_of(req.first_start)
                t_audible = dac if dac is not None else now
                req.ttfa_ms = max(0.0, (t_audible - req.t_accepted) * 1000.0)
                self.send(wire.PlaybackStarted(request_id=req.request_id, ttfa_ms=req.ttfa_ms))
            if req.ranges and req.first_start <= r < req.end:
                playing = req
            if req.last_seen and (not req.ranges or r >= req.end):
                end_dac = self.core.dac_time_of(req.end - 1) if req.ranges else None
                if end_dac is not None and end_dac > now:
                    continue  # still in the device buffer; finish when it is audible
                del self.requests[req.request_id]
                self.finished.append(req.request_id)
                self.send(
                    wire.RequestFinished(
                        request_id=req.request_id,
                        status="done",
                        audio_s=req.frames / self.core.sample_rate,
                        underruns=req.underruns,
                        ttfa_ms=req.ttfa_ms,
                        device_underflows=max(0, int(self.core.stats[DEVICE_UNDERFLOWS]) - req.underflows_at_start)
                        if req.started
                        else 0,
                    )
                )
        if underruns != self._last_underruns:
            delta = underruns - self._last_underruns
            self._last_underruns = underruns
            target = playing or next((q for q in self.requests.values() if not q.cancelled), None)
            if target is not None:
                target.underruns += delta
            self.send(
                wire.Underrun(
                    request_id=target.request_id if target else "",
                    frames=int(self.core.stats[UNDERRUN_FRAMES]),
                    count=underruns,
                )
            )
            if self.adaptive is not None:
                self._resume_at(self.adaptive.on_underrun(now))
        elif self.adaptive is not None:
            self._resume_at(self.adaptive.tick(now))
        expecting = int(any(not q.last_seen for q in self.requests.values()))
        if (self.windows and self.windows[0][1] <= r) or self.core.ctl[EXPECTING] != expecting:
            self._publish()

    def _resume_at(self, resume_s: float | None) -> None:
        """Take the adaptive resume threshold (one attribute store in the policy: ``retune``)."""
        if resume_s is None:
            return
        cfg = self.core.policy.config
        self.core.policy.retune(PrebufferConfig(start_s=cfg.start_s, resume_s=resume_s, low_water_s=cfg.low_water_s))
        log.info("pre-buffer resume threshold now %.3g s (adaptive)", resume_s)

    def replay_from(self, first_unheard: int) -> int:
        """The device died with ring frames from ``first_unheard`` on never heard: move the read
        index back to the start of the chunk they belong to (so the chunk is heard whole from its
        start when the device returns, as a resumed request is), never below a skip window already
        passed nor below what the ring still holds intact. Call only while nothing renders (the
        stream closed, the fallback clock not yet started); returns the frames to be played again."""
        r = self.ring.read_index
        target = min(first_unheard, r)
        for req in self.requests.values():
            if req.cancelled or not any(lo <= target < hi for lo, hi in req.ranges):
                continue
            starts = [s for s in req.chunk_starts if s <= target]
            if starts:
                target = starts[-1]
            break
        target = min(r, max(target, self._skipped_to, self.ring.rewind_floor))
        if target < r:
            self.ring.rewind_read(target)
            self._publish()
        return r - target

    @property
    def idle(self) -> bool:
        return not self.requests and not self._silencing and self.ring.read_index >= self.announced


# -------------------------------------------------------------------- sinks
class ClockSink:
    """``null`` and ``wav:PATH`` sinks: a thread calls ``render`` on a real-time schedule.

    Paced, the DAC time of a block is its scheduled start, so TTFA and underruns mean what they
    mean on a device. Unpaced (``wav_paced = false``), blocks are rendered as soon as audio is
    there: for offline rendering, where TTFA and underruns are not meaningful.
    """

    def __init__(self, core: PlaybackCore, wav_path: str | None, paced: bool) -> None:
        self.core = core
        self.paced = paced
        self.wav_path = wav_path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="clock-sink", daemon=True)
        self._wav: wave.Wave_write | None = None
        self.frames_written = 0
        self.error: str = ""
        # The fallback clock of a lost device: while ``held``, blocks are silence and the ring
        # waits (PlaybackCore.render_held); else it plays the ring, unheard, in real time.
        self.held = False

    def start(self) -> None:
        if self.wav_path:
            Path(self.wav_path).parent.mkdir(parents=True, exist_ok=True)
            self._wav = wave.open(self.wav_path, "wb")  # noqa: SIM115 - closed in stop(), outlives this call
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(self.core.sample_rate)
        self._thread.start()

    def _loop(self) -> None:
        core = self.core
        period = core.blocksize / core.sample_rate
        buf = np.zeros(core.blocksize * core.upsample, dtype=np.int16)  # upsample > 1: a device's fallback
        next_t = time.monotonic()
        try:
            while not self._stop.is_set():
                if self.paced:
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    elif delay < -0.5:
                        next_t = time.monotonic()  # we were suspended; don't burst to catch up
                elif not self._unpaced_ready():
                    time.sleep(0.001)
                    continue
                dac = next_t if self.paced else time.monotonic()
                if self.held:
                    core.render_held(buf, dac)
                    next_t += period
                    continue
                core.render(buf, dac)
                if self._wav is not None and int(core.stats[STATE]) != PlaybackState.IDLE:
                    self._wav.writeframes(buf.tobytes())
                    self.frames_written += len(buf)
                next_t += period
        except Exception as exc:  # reported by the control loop as an audio_output error
            self.error = f"{type(exc).__name__}: {exc}"

    def _unpaced_ready(self) -> bool:
        core = self.core
        buffered = int(core.ctl[PLAY_LIMIT]) - core.ring.read_index
        return buffered >= core.blocksize or (buffered > 0 and not core.ctl[EXPECTING])

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        if self._wav is not None:
            wav, self._wav = self._wav, None
            try:
                wav.close()
            except OSError as exc:
                # The disk filled up (or the file went away): the loop already reported the
                # failed write; closing must still go on to release the ring.
                self.error = self.error or f"{type(exc).__name__}: {exc}"
                log.warning("wav sink %s not closed cleanly: %s", self.wav_path, exc)


MAX_UPSAMPLE = 8  # 8 × 24 kHz = 192 kHz, the highest device rate worth trying


def choose_upsample(device: Any, ring_rate: int, device_rate: int = 0) -> int:
    """The whole factor to open ``device`` at: its rate is ``ring_rate × factor``.

    ``device_rate = 0`` (``audio.device_rate``): the ring rate when the device takes it (factor 1),
    else the device's default rate when it is a whole multiple of the ring rate (48 kHz for 16 or
    24 kHz), else the smallest multiple the device takes (44.1 kHz for 22.05 kHz). A nonzero
    ``device_rate`` must be a multiple of the ring rate and is used as is (the tests force the
    upsampling path with it on a device that takes the ring rate). Raises ``RuntimeError`` naming
    the device and every rate tried when none works.
    """
    from actors.audio.device import AudioDeviceError, negotiate_samplerate

    def accepts(rate: int) -> bool:
        try:
            return negotiate_samplerate(device, rate) == rate
        except AudioDeviceError:
            return False

    name = getattr(device, "name", str(device))
    if device_rate:
        factor, rest = divmod(int(device_rate), ring_rate)
        if rest or not 1 <= factor <= MAX_UPSAMPLE:
            raise RuntimeError(
                f"audio.device_rate = {device_rate} Hz is not a whole multiple (1-{MAX_UPSAMPLE}×) of the voice's "
                f"{ring_rate} Hz; use e.g. {2 * ring_rate}, or 0 to choose automatically"
            )
        if not accepts(int(device_rate)):
            raise RuntimeError(
                f"output device {name!r} refuses audio.device_rate = {device_rate} Hz; "
                "use 0 to choose automatically, or another device with audio.device"
            )
        return factor
    if accepts(ring_rate):
        return 1
    default = round(float(getattr(device, "default_samplerate", 0.0)))
    factors = [k for k in range(2, MAX_UPSAMPLE + 1) if k * ring_rate <= 192000]
    if default % ring_rate == 0 and default // ring_rate in factors:
        factors.remove(default // ring_rate)
        factors.insert(0, default // ring_rate)
    for k in factors:
        if accepts(k * ring_rate):
            return k
    tried = ", ".join(str(r) for r in [ring_rate, *(k * ring_rate for k in factors)])
    raise RuntimeError(
        f"output device {name!r} refuses {ring_rate} Hz and every whole multiple of it tried ({tried} Hz; it "
        f"offers {default} Hz); choose another device with audio.device, or use a voice at a rate the device takes"
    )


class DeviceSink:
    """A PortAudio output stream in callback mode: int16 mono at the core's ``device_rate``
    (the ring rate, or a whole multiple of it that the core upsamples to).

    The device is a part that can fail (docs/troubleshooting.md, "The output device went away").
    The callback only counts (``stats[BLOCKS]``), stamps the time of its last call and catches
    what ``render`` raises; the control loop calls :meth:`poll_health` every 10-50 ms, which asks
    ``actors.audio.device_watch.StreamWatch`` whether the stream has failed (a PortAudio error,
    ``finished_callback``, inactive, or no callback for ``audio.device_stall_s`` past the end of
    its buffer). On a loss the dead stream is closed and :meth:`fall_back` starts a real-time
    clock in its place, so the stage clock never stops; :meth:`try_reopen` then opens the
    configured device again on a 0.25 s → 2 s backoff, and when a stream opens the clock is
    stopped before the stream starts (one renderer at a time).
    """

    #: Every so many failed reopen attempts PortAudio is re-initialised, so that a device that
    #: came back under a new index (a USB headset re-plugged) is found by name again. It takes
    #: ~1 s with no sound server, in the control loop, so not on every attempt.
    REINIT_EVERY = 8

    def __init__(
        self, core: PlaybackCore, info: Any, latency: str = "high", hostapi: str = "", stall_s: float = 0.8
    ) -> None:
        from actors.audio.device_watch import Backoff, StreamWatch

        self.core = core
        self.info = info
        self.hostapi = hostapi
        self.latency: str | float = latency if latency in ("low", "high") else float(latency)
        self.error = ""  # the interface every sink shares; a device's failures go through poll_health
        self._stream: Any = None
        self._generation = 0  # bumped per stream: a retired stream's late callback renders nothing
        self._finished = False  # set by finished_callback (PortAudio's thread): one bool store
        self._callback_error = ""  # set by the callback when render raised (then it aborts)
        self._last_call = np.zeros(1, dtype=np.float64)  # monotonic time of the last callback
        self.watch = StreamWatch(stall_s=stall_s)
        self.backoff = Backoff()
        self.fallback: ClockSink | None = None
        self.lost_at = 0.0  # when the current loss was detected (0: the device plays)
        self.losses = 0
        self._retry_at = 0.0
        self._attempts = 0
        self.last_reopen_error = ""

    @property
    def lost(self) -> bool:
        return self.fallback is not None

    def start(self) -> None:
        with audio_threads_inherit_realtime():
            self._stream = self._open()
            self._stream.start()
        self.watch.started(time.monotonic(), int(self.core.stats[BLOCKS]))

    def _open(self) -> Any:
        """A new stream on ``self.info``, not started; raises what PortAudio raises."""
        import sounddevice as sd

        core = self.core
        self._generation += 1
        generation = self._generation
        self._finished = False
        self._callback_error = ""
        realtime = [False]  # a list: the callback sets it once, from PortAudio's thread
        last_call = self._last_call

        def callback(outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if generation != self._generation:
                outdata.fill(0)  # a retired stream (closed for a loss): another renderer owns the ring
                return
            if not realtime[0]:
                # Once, on PortAudio's own callback thread: ask for SCHED_FIFO, as JACK and
                # PulseAudio (via rtkit) do for their audio threads. nice -10 only weights the CFS
                # share; on a 2-core machine the engine's inference threads still delay a 6-ms
                # callback past the device buffer. One syscall, never repeated; refused without
                # the privilege (CAP_SYS_NICE / RLIMIT_RTPRIO), which leaves the nice value.
                realtime[0] = True
                core.stats[CALLBACK_REALTIME] = 1 if enable_realtime_thread() else -1
            if status.output_underflow:
                core.stats[DEVICE_UNDERFLOWS] += 1
            now = time.monotonic()
            last_call[0] = now
            current = time_info.currentTime
            # PortAudio's clock is the stream's own; translate the DAC time to CLOCK_MONOTONIC.
            dac = now + (time_info.outputBufferDacTime - current) if current else now
            try:
                core.render(outdata[:, 0], dac)
            except Exception as exc:  # a bug, not the device: reported by poll_health, then reopened
                self._callback_error = f"{type(exc).__name__} in the callback: {exc}"
                outdata.fill(0)
                raise sd.CallbackAbort from exc

        def finished() -> None:
            if generation == self._generation:
                self._finished = True

        return sd.OutputStream(
            samplerate=core.device_rate,
            blocksize=core.blocksize * core.upsample,  # blocksize ring frames per callback
            channels=1,
            dtype="int16",
            device=self.info.index,
            callback=callback,
            finished_callback=finished,
            latency=self.latency,
        )

    def poll_health(self, now: float) -> tuple[str, float] | None:
        """Called by the control loop. When the playing stream has failed: close it and return
        ``(cause, since)``, ``since`` being the last time the callback ran (frames whose DAC time
        is later were never heard). The caller then rewinds what it wants replayed and calls
        :meth:`fall_back`. ``None`` while the device plays, or while it is already lost."""
        stream = self._stream
        if stream is None or self.lost:
            return None
        cause = self.watch.check(
            now,
            int(self.core.stats[BLOCKS]),
            active=bool(stream.active),
            finished=self._finished,
            error=self._callback_error,
            played_until=self._played_until(),
        )
        if cause is None:
            return None
        since = float(self._last_call[0]) or now
        self._retire()
        self.losses += 1
        self.lost_at = now
        self._attempts = 0
        self.backoff.reset()
        self._retry_at = now + self.backoff.next_delay()
        return cause, min(since, now)

    def _played_until(self) -> float:
        """When the last block the callback rendered ends at the DAC (from the timing log)."""
        core = self.core
        count = int(core.stats[LOG_COUNT])
        if count == 0:
            return 0.0
        frames = core.blocksize  # PortAudio hands this stream fixed blocks (blocksize is set)
        return float(core.timelog[(count - 1) % LOG_N, 2]) + frames / core.sample_rate

    def _retire(self) -> None:
        """Close the current stream; after this its callback (if PortAudio still runs it) renders nothing."""
        stream, self._stream = self._stream, None
        self._generation += 1
        if stream is None:
            return
        try:
            stream.abort()  # a dead stream's abort and close return at once (measured: < 1 ms)
        except Exception as exc:
            log.debug("abort of the lost stream: %s", exc)
        try:
            stream.close()
        except Exception as exc:
            log.debug("close of the lost stream: %s", exc)

    def fall_back(self, held: bool) -> None:
        """Start the real-time clock that stands in for the lost device (``held``: the narration waits)."""
        clock = ClockSink(self.core, None, paced=True)
        clock.held = held
        clock.start()
        self.fallback = clock

    def release_hold(self) -> None:
        """The device stayed away too long: the narration plays on, unheard, on the fallback clock."""
        if self.fallback is not None:
            self.fallback.held = False

    def try_reopen(self, now: float) -> bool:
        """While lost, when the backoff allows: open the device again. True when it plays again
        (the fallback clock stopped first, then the new stream started)."""
        if not self.lost or now < self._retry_at:
            return False
        self._attempts += 1
        try:
            if self._attempts % self.REINIT_EVERY == 0:
                self._reinitialize()
            with audio_threads_inherit_realtime():
                stream = self._open()
        except Exception as exc:
            self.last_reopen_error = f"{type(exc).__name__}: {exc}"
            self._retry_at = time.monotonic() + self.backoff.next_delay()
            return False
        fallback, self.fallback = self.fallback, None
        if fallback is not None:
            fallback.stop()  # joined: the clock thread renders no more
        self._stream = stream
        try:
            with audio_threads_inherit_realtime():
                stream.start()
        except Exception as exc:
            self.last_reopen_error = f"{type(exc).__name__}: {exc}"
            self._retire()
            self.fall_back(held=bool(fallback is not None and fallback.held))
            self._retry_at = time.monotonic() + self.backoff.next_delay()
            return False
        self.watch.started(time.monotonic(), int(self.core.stats[BLOCKS]))
        self.backoff.reset()
        self.lost_at = 0.0
        return True

    def _reinitialize(self) -> None:
        """Re-enumerate PortAudio's devices (no stream is open) and find the device by name again."""
        import sounddevice as sd

        from actors.audio.device import select_output_device

        sd._terminate()
        sd._initialize()
        self.info = select_output_device(self.info.name, self.hostapi or None)

    def stop(self) -> None:
        fallback, self.fallback = self.fallback, None
        if fallback is not None:
            fallback.stop()
        if self._stream is not None:
            try:
                self._stream.stop()
                self._stream.close()
            except Exception as exc:  # the device died as we closed: nothing left to flush
                log.warning("closing the output stream: %s", exc)
            finally:
                self._stream = None


def build_sink(settings: Settings, core: PlaybackCore, device: Any = None) -> ClockSink | DeviceSink:
    """The sink ``audio.sink`` names; ``device`` is the selected ``DeviceInfo`` for the device sink."""
    sink = settings.audio.sink
    if sink == "null":
        return ClockSink(core, None, paced=True)
    if sink.startswith("wav:"):
        return ClockSink(core, sink[4:], paced=settings.audio.wav_paced)
    if device is None:
        from actors.audio.device import select_output_device

        device = select_output_device(settings.audio.device or None, settings.audio.hostapi or None)
    return DeviceSink(core, device, settings.audio.latency, settings.audio.hostapi, settings.audio.device_stall_s)


class AudioConsumer:
    """Ring + callback core + control + sink, an ``actors.runtime.Actor``; runs in its own
    process (built by ``from_spec``) or in-process in tests."""

    def __init__(
        self,
        settings: Settings,
        ring: PcmRing,
        send: Send,
        start_s: float | None = None,
        tee: PcmRing | None = None,
    ) -> None:
        self.nice: int | None = None  # the process's nice value once from_spec raised it
        self._owns_ring = False
        self.tee = tee  # stage tee producer (closed here when from_spec attached it)
        self.settings = settings
        self.ring = ring
        self.send = send
        # No clear(): after a crash the supervisor announces again what the dead consumer had not
        # played yet (its requests resume); frames nobody announces are skipped (ConsumerControl).
        policy = PrebufferPolicy(
            PrebufferConfig(
                start_s=settings.stage_start_s if start_s is None else start_s,
                resume_s=settings.prebuffer.resume_s,
                low_water_s=settings.prebuffer.low_water_s,
            )
        )
        device: Any = None
        upsample = 1
        if settings.audio.sink == "device":
            from actors.audio.device import select_output_device

            device = select_output_device(settings.audio.device or None, settings.audio.hostapi or None)
            upsample = choose_upsample(device, ring.sample_rate, settings.audio.device_rate)
        self.core = PlaybackCore(
            ring,
            settings.audio.blocksize,
            policy,
            settings.audio.fade_ms,
            upsample=upsample,
            dither=settings.dsp.dither,
            tee=tee,
        )
        self.control = ConsumerControl(self.core, send)
        p = settings.prebuffer
        if p.adaptive:
            self.control.adaptive = AdaptiveResume(p.resume_s, p.adaptive_max_s, p.adaptive_calm_s)
        self.sink = build_sink(settings, self.core, device)
        self.sink.start()
        self._last_audio = time.monotonic()
        self._replayed_s = 0.0  # audio played again after the last device loss

    def ready_info(self) -> dict[str, Any]:
        import sys

        heavy = sorted(m for m in ("torch", "onnxruntime", "piper", "TTS", "soxr") if m in sys.modules)
        info: dict[str, Any] = {
            "sink": self.settings.audio.sink,
            "sample_rate": self.core.sample_rate,
            "blocksize": self.core.blocksize,
            "heavy_modules": heavy,
        }
        if isinstance(self.sink, DeviceSink):
            info["device"] = self.sink.info.name
            info["device_rate"] = self.core.device_rate
            info["upsample"] = self.core.upsample
            info["filter_delay_ms"] = round(self.core.output_delay_s * 1000.0, 3)
        info["dither"] = self.settings.dsp.dither
        if self.nice is not None:
            info["nice"] = self.nice
        return info

    def metrics(self) -> dict[str, Any]:
        stats = self.core.stats
        return {
            "state": PlaybackState(int(stats[STATE])).name.lower(),
            "buffered_s": round(
                max(0, int(self.core.ctl[PLAY_LIMIT]) - self.ring.read_index) / self.core.sample_rate, 3
            ),
            "underruns": int(stats[UNDERRUNS]),
            "underrun_frames": int(stats[UNDERRUN_FRAMES]),
            "device_underflows": int(stats[DEVICE_UNDERFLOWS]),
            # 1: the device callback runs under SCHED_FIFO; -1: refused (nice only); 0: not started
            "callback_realtime": int(stats[CALLBACK_REALTIME]),
            "blocks": int(stats[BLOCKS]),
            "rebuffers": self.core.policy.rebuffer_count,
            "resume_s": self.core.policy.config.effective_resume_s,  # adaptive: what it has learned
            **(
                {"device_losses": self.sink.losses, "device_lost": int(self.sink.lost)}
                if isinstance(self.sink, DeviceSink)
                else {}
            ),
            "rss_mb": process_rss_mb(),
            **(
                {"tee_frames": int(stats[TEE_FRAMES]), "tee_dropped_frames": int(stats[TEE_DROPPED])}
                if self.tee is not None
                else {}
            ),
        }

    def run(self, stop: threading.Event, inbox: queue.Queue[wire.Message]) -> None:
        reported_error = False
        while not stop.is_set():
            # Every wake-up here preempts the TTS worker's inference threads on a small machine,
            # so poll only as often as events need: 10 ms while audio is queued or playing (event
            # timing comes from the callback's timing log, not from this loop), else 50 ms. A
            # Segment or Cancel wakes the loop at once either way.
            try:
                msg = inbox.get(timeout=0.05 if self.control.idle else 0.01)
                if isinstance(msg, wire.Shutdown):
                    break
                if isinstance(msg, wire.ConfigUpdate):
                    self.apply_config(msg)
                self.control.handle(msg)
            except queue.Empty:
                pass
            self.control.poll()
            if self.sink.error and not reported_error:
                reported_error = True
                self.send(wire.Error(kind="audio_output", message=self.sink.error, actor=wire.Role.AUDIO_CONSUMER))
            if isinstance(self.sink, DeviceSink):
                self._watch_device(self.sink)
            if not self.control.idle:
                self._last_audio = time.monotonic()
        # Let the tail of the last request leave the device before the stream closes.
        pad = self.settings.audio.tail_pad_ms / 1000.0
        remaining = pad - (time.monotonic() - self._last_audio)
        if isinstance(self.sink, DeviceSink) and remaining > 0:
            time.sleep(remaining)

    def _watch_device(self, sink: DeviceSink) -> None:
        """Lost device: detect it (``DeviceSink.poll_health``), hold the narration on the fallback
        clock from the start of the chunk it cut, retry the device, and move back to it.

        Holding, not playing on, is the choice here (docs/troubleshooting.md): a listener who
        loses a headset for ten seconds wants the story from where it stopped, not a gap. The
        stage clock goes on meanwhile (the fallback clock renders silence into the stage tee),
        the worker fills the ring up to its guard and waits, and events keep flowing. After
        ``audio.device_hold_s`` the narration plays on, unheard, so a device that never returns
        cannot stall the session forever (0: never hold)."""
        now = time.monotonic()
        lost = sink.poll_health(now)
        name = getattr(sink.info, "name", "?")
        if lost is not None:
            cause, since = lost
            hold = self.settings.audio.device_hold_s > 0
            replayed = self.control.replay_from(self.core.first_unheard(since)) if hold else 0
            self._replayed_s = replayed / self.core.sample_rate
            self.control.held = hold
            sink.fall_back(held=hold)
            then = (
                f"the narration waits for it (up to {self.settings.audio.device_hold_s:g} s; "
                f"{self._replayed_s:.2f} s to play again from the start of the cut chunk)"
                if hold
                else "the narration plays on without it"
            )
            msg = f"output device {name!r} lost: {cause}; retrying it every 0.25-2 s; {then}"
            log.warning("%s", msg)
            self.send(wire.Error(kind="audio_output", message=msg, actor=wire.Role.AUDIO_CONSUMER))
            return
        if not sink.lost:
            return
        down_s = now - sink.lost_at
        if self.control.held and down_s > self.settings.audio.device_hold_s:
            self.control.held = False
            sink.release_hold()
            why = sink.last_reopen_error or "no reason given"
            msg = (
                f"output device {name!r} still lost after {down_s:.1f} s ({why}): "
                "the narration plays on without it (audio.device_hold_s)"
            )
            log.warning("%s", msg)
            self.send(wire.Error(kind="audio_output", message=msg, actor=wire.Role.AUDIO_CONSUMER))
        held = self.control.held
        if sink.try_reopen(now):
            self.control.held = False
            log.warning("output device %r is back after %.2f s", name, down_s)
            self.send(
                wire.AudioOutputRestored(
                    device=name, down_s=round(down_s, 3), held=held, replayed_s=round(self._replayed_s, 3)
                )
            )

    def apply_config(self, update: wire.ConfigUpdate) -> None:
        """Live settings (``skald config set``, SIGHUP): the pre-buffer thresholds, from the next
        start or resume on; the rest of the consumer (device, block size, fade) is fixed at start."""
        settings = Settings.from_dict(update.settings)
        start_s = update.prebuffer_start_s if update.prebuffer_start_s >= 0 else self.core.policy.config.start_s
        p = settings.prebuffer
        resume_s = p.resume_s
        if not p.adaptive:
            self.control.adaptive = None
        elif self.control.adaptive is None:
            self.control.adaptive = AdaptiveResume(p.resume_s, p.adaptive_max_s, p.adaptive_calm_s)
        else:
            self.control.adaptive.rebase(p.resume_s, p.adaptive_max_s)
            self.control.adaptive.calm_s = p.adaptive_calm_s
            resume_s = self.control.adaptive.current_s
        self.core.policy.retune(PrebufferConfig(start_s=start_s, resume_s=resume_s, low_water_s=p.low_water_s))
        self.settings = settings
        log.info("pre-buffer now start %.3g s, resume %.3g s, low water %.3g s", start_s, resume_s, p.low_water_s)

    def on_eager(self, msg: wire.Message) -> None:
        """Nothing to do ahead of order: a cancel is applied by the control loop, which wakes at once."""

    def close(self) -> None:
        self.sink.stop()
        if self._owns_ring:
            self.ring.close()
            if self.tee is not None:
                self.tee.close()

    @classmethod
    def from_spec(cls, spec: ActorSpec, send: Send) -> Self:
        """The consumer of an ``audio_consumer`` process: attaches the ring as its consumer (and
        closes it in ``close``); the GPU tier sizes the pre-buffer (0.5 s on a High-End card, 3 s
        on a Low-End one). The process's priority was raised before its first thread started
        (``run_audio_consumer_process``)."""
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        ring = PcmRing.attach(spec.ring_name, "consumer")
        ring.start_heartbeat()
        tee: PcmRing | None = None
        try:
            if spec.tee_name:  # the web actor's listeners hear the stage through it
                tee = PcmRing.attach(spec.tee_name, "producer")
                tee.start_heartbeat()
            start_s = spec.gpu.config.prebuffer_s if spec.gpu is not None else None
            consumer = cls(spec.config, ring, send, start_s=start_s, tee=tee)
        except Exception:
            ring.close()
            if tee is not None:
                tee.close()
            raise
        consumer.nice = nice
        consumer._owns_ring = True
        return consumer


AUDIO_NICE = -10  # the callback must win the CPU from inference threads on a small machine
#: SCHED_FIFO priority of the device callback thread, where permitted: above ordinary work, below
#: the kernel's own threaded IRQs (50) is not needed here, so it sits at JACK's default range.
AUDIO_RT_PRIORITY = 40
#: SCHED_FIFO priority of the consumer's other threads (control loop, ring heartbeat, zmq), where
#: permitted: they hold the GIL the callback needs (see ``raise_audio_priority``).
AUDIO_PROCESS_RT_PRIORITY = 10


def enable_realtime_thread(priority: int = AUDIO_RT_PRIORITY) -> bool:
    """Put the calling thread under SCHED_FIFO at ``priority``; False where not permitted."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # 0: the calling thread
    except (OSError, AttributeError):
        return False
    return True


@contextlib.contextmanager
def audio_threads_inherit_realtime() -> Iterator[None]:
    """Threads started inside this block are born SCHED_FIFO (where permitted).

    The audio path has more threads than the callback: PulseAudio's client mainloop ("threaded-ml",
    created when the ALSA pulse plugin opens the stream) carries every block to the server, and at
    nice -10 under CFS a loaded 2-core machine still delays it past a 46-ms device buffer (measured:
    1-3 underflows per 95 s with three renders beside the stage). Threads inherit their creator's
    policy, so the calling thread takes SCHED_FIFO while a stream opens and starts, and gives its
    own policy back after; without the privilege, nothing changes."""
    policy, priority = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    inherit = enable_realtime_thread(AUDIO_RT_PRIORITY - 1)
    try:
        yield
    finally:
        if inherit:
            restore_thread_scheduling(policy, priority)


def restore_thread_scheduling(policy: int, priority: int) -> None:
    """Put the calling thread back under ``policy`` at ``priority`` (its nice value is kept)."""
    try:
        os.sched_setscheduler(0, policy, os.sched_param(priority))
    except (OSError, AttributeError):
        pass


def raise_audio_priority() -> int:
    """Raise every thread of this process above ordinary work; returns the nice value in effect.

    Every thread, not only the callback's (Linux priorities are per thread; threads started later
    inherit): the callback is a Python function, so it waits for the GIL whenever another thread
    of this process holds it, and a GIL holder preempted by a CPU hog stalls the SCHED_FIFO
    callback behind it -- priority inversion through the GIL. So where permitted all of them run
    SCHED_FIFO at a low priority (``AUDIO_PROCESS_RT_PRIORITY``, below the callback's and
    PulseAudio's client thread's; this process only waits on sockets and the ring, ~2 % of a
    core), and at nice -10 in any case (the fallback without the privilege: an unprivileged user
    keeps nice 0 and SCHED_OTHER)."""
    nice = set_process_nice(AUDIO_NICE)
    for tid in process_thread_ids():
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(AUDIO_PROCESS_RT_PRIORITY))
        except (OSError, AttributeError):
            pass
    return nice


def run_audio_consumer_process(spec: ActorSpec) -> None:
    """Entry point of the audio consumer process."""
    run_actor(spec, AudioConsumer, prepare_threads=raise_audio_priority)

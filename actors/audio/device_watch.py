"""Deciding that an output device has failed, and when to try it again. Pure logic, no PortAudio.

The audio consumer's control loop (``actors.audio_consumer.DeviceSink.poll_health``) feeds
:class:`StreamWatch` what it can see of a PortAudio stream every few milliseconds: the callback's
block counter, whether PortAudio still calls the stream active, whether its ``finished_callback``
ran, and any error the callback caught. The PortAudio callback itself never decides anything (it
must never block, allocate or log); it only counts.

What a lost device looks like, measured on this project's rig (Debian PortAudio 19.6, ALSA
``pulse`` plugin, PulseAudio 16, ``pactl unload-module`` of the only null sink): the plugin's poll
fails, PortAudio's ALSA callback thread ends, ``finished_callback`` runs about 10 ms after the
unload and ``stream.active`` turns false. So the usual case is caught on the next control poll.
A stream can also just stop being called (a wedged driver, a suspended sink, a device whose DMA
stopped): the watch calls that a loss when the block counter has not moved for ``stall_s`` past
the moment the device ran out of the audio it was given (``played_until``, from the callback's
DAC times: a device with a deep buffer legitimately calls back in bursts), unless the control loop
itself was asleep for that long (then the whole process was starved, and the callback gets the
benefit of the doubt).

Why 0.8 s (``audio.device_stall_s``): on the 2-core test VM, with neighbours running
``stress-ng --cpu 2`` and speech synthesis, the callback of a healthy stream through the
PulseAudio null sink went uncalled for up to 0.51 s at load average ~7 (the device run dry: an
audible underflow that ends by itself, not a lost device), and for 0.80-0.97 s at load 10-14,
even in a process doing nothing else. No threshold under the 1 s in which a loss must be
reported separates those from a stall on such a machine; where the audio is not starved (callbacks
every 23 ms on the rig) 0.8 s leaves a wide margin, and a stall is still reported within 0.85 s.
Past it the stream is reopened (~0.25 s), which costs a replay
of the cut chunk; a machine that starves its audio like that should raise the setting.

:class:`Backoff` spaces the attempts to open the device again: 0.25 s, doubling to 2 s.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff", "StreamWatch"]


@dataclass
class StreamWatch:
    """Says why a started output stream is no longer playing, or ``None`` while it is.

    ``stall_s``: how long the callback may go uncalled before the stream counts as stalled. It
    must sit well above a callback period (5-25 ms) and any scheduling hiccup a loaded machine
    produces (a 150 ms stall was measured under load, and is an underflow, not a lost device),
    and well below the 1 s in which a loss must be reported.
    """

    stall_s: float = 0.8
    _blocks: int = -1
    _progress_at: float = 0.0
    _polled_at: float = 0.0

    def started(self, now: float, blocks: int) -> None:
        """A stream was (re)started at ``now``; ``blocks`` is the callback counter then."""
        self._blocks = blocks
        self._progress_at = now
        self._polled_at = now

    def check(
        self,
        now: float,
        blocks: int,
        *,
        active: bool,
        finished: bool,
        error: str = "",
        played_until: float = 0.0,
    ) -> str | None:
        """One look at the stream: the cause of its failure, in words, or ``None``.
        ``played_until``: when the audio the callback has rendered so far runs out at the DAC
        (0: unknown); the stall window starts no earlier than that."""
        if error:
            return f"PortAudio error: {error}"
        if finished:
            return "the stream was ended by PortAudio (finished_callback: the device or its server went away)"
        if not active:
            return "the stream is no longer active (PortAudio stopped calling it)"
        if blocks != self._blocks:
            self._blocks = blocks
            self._progress_at = now
        elif now - self._polled_at > self.stall_s / 2:
            # This loop slept through half the window itself: the process was starved, not the
            # device. Restart the window rather than blame the callback for the scheduler.
            self._progress_at = now
        self._polled_at = now
        stalled = now - max(self._progress_at, played_until)
        if stalled > self.stall_s:
            return f"the stream stopped advancing: no callback for {stalled:.2f} s"
        return None


@dataclass
class Backoff:
    """Delays between attempts to reopen a lost device: ``first``, doubling up to ``cap``."""

    first: float = 0.25
    cap: float = 2.0
    _next: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError(f"Backoff needs 0 < first <= cap, got first={self.first}, cap={self.cap}")
        self._next = self.first

    def next_delay(self) -> float:
        """The wait before the next attempt; each call doubles the one after it, up to ``cap``."""
        delay = self._next
        self._next = min(self.cap, self._next * 2.0)
        return delay

    def reset(self) -> None:
        """The device is back: the next loss starts again at ``first``."""
        self._next = self.first

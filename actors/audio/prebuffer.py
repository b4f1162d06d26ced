"""Pre-buffer state machine for the audio output callback.

Streaming TTS produces audio in bursts: a sentence is synthesised, then the next
one, and synthesis speed varies.  Starting playback the instant the first samples
arrive risks an audible stall a moment later, so playback waits until enough audio
is buffered ("pre-buffer"), and after an underrun waits again ("rebuffer") rather
than stuttering sample by sample.

This module is pure logic.  :meth:`PrebufferPolicy.step` is called once per
PortAudio callback block, i.e. on the real-time audio thread, so it does no I/O,
takes no locks, logs nothing and allocates nothing beyond Python's own float
temporaries.  The caller owns the ring buffer and passes in how many seconds it
holds; the policy only decides whether the block plays audio or silence.

State diagram::

                 has_audio_expected                 should_start_playback
        IDLE ───────────────────────▶ BUFFERING ──────────────────────────▶ PLAYING
         ▲                               │  ▲                                  │
         │   nothing buffered and no     │  │     should_pause_playback        │
         └───── more audio coming ◀──────┘  └───── (counts a rebuffer) ◀───────┤
         ▲                                                                     │
         └──────────── input complete and buffer drained ◀─────────────────────┘

    reset() returns to IDLE from any state (interrupt / new request).

Thresholds: the first start of a request needs ``start_s`` buffered; after an
underrun, ``resume_s`` (defaults to ``start_s``). :class:`AdaptiveResume` (run by the
consumer's control loop, never by the callback) raises ``resume_s`` after each underrun and
lowers it again after calm stretches.  Once the whole request is
synthesised (``input_complete``) waiting longer cannot help, so any buffered audio
starts playback and the buffer plays out to empty without pausing.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = ["AdaptiveResume", "PlaybackState", "PrebufferConfig", "PrebufferPolicy"]


class PlaybackState(enum.IntEnum):
    """What the output callback does with the current block."""

    IDLE = 0
    """No request active: output silence, nothing expected."""
    BUFFERING = 1
    """A request is active but not enough audio is buffered yet: output silence."""
    PLAYING = 2
    """Audio is being played from the buffer."""


def _check_seconds(field: str, value: float) -> None:
    # NaN would make every comparison False and silently wedge the state machine,
    # so non-finite values are rejected along with negative ones.
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"PrebufferConfig.{field} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"PrebufferConfig.{field}={value!r} is out of range: must be finite and >= 0")


@dataclass(frozen=True)
class PrebufferConfig:
    """Thresholds for :class:`PrebufferPolicy`, all in seconds of buffered audio.

    Attributes:
        start_s: Buffered seconds needed before a request starts playing.
        resume_s: After an underrun, buffered seconds needed to resume.
            ``None`` means the same as ``start_s``.  A smaller value recovers
            faster from a brief hiccup; a larger one makes a second stall less
            likely.
        low_water_s: While playing, pause (rebuffer) once the buffer is at or
            below this level and more audio is still expected.  ``0`` plays the
            buffer to empty before pausing.  Pausing early, at a phrase-sized
            cushion, can sound better than running dry mid-word, but every pause
            is itself audible, so the default is 0.
    """

    start_s: float = 1.0
    resume_s: float | None = None
    low_water_s: float = 0.0

    def __post_init__(self) -> None:
        _check_seconds("start_s", self.start_s)
        _check_seconds("low_water_s", self.low_water_s)
        if self.resume_s is not None:
            _check_seconds("resume_s", self.resume_s)
        # If low water were at or above a start/resume threshold, playback would
        # pause in the very block it started: an endless start/pause oscillation.
        if self.low_water_s > 0 and self.low_water_s >= self.start_s:
            raise ValueError(
                f"PrebufferConfig.low_water_s={self.low_water_s!r} is out of range: "
                f"must be < start_s={self.start_s!r} (or both 0)"
            )
        if self.resume_s is not None and self.low_water_s > 0 and self.low_water_s >= self.resume_s:
            raise ValueError(
                f"PrebufferConfig.low_water_s={self.low_water_s!r} is out of range: "
                f"must be < resume_s={self.resume_s!r} (or both 0)"
            )

    @property
    def effective_resume_s(self) -> float:
        """The resume threshold actually used (``resume_s``, else ``start_s``)."""
        return self.start_s if self.resume_s is None else self.resume_s


class PrebufferPolicy:
    """Decides, block by block, whether the output callback plays or waits.

    Not thread-safe by design: exactly one thread (the audio callback) should call
    :meth:`step`; :meth:`reset` must be called from that same thread or while the
    stream is stopped.  Plain attribute reads (:attr:`state`,
    :attr:`rebuffer_count`) from other threads are safe enough for metrics.
    """

    __slots__ = ("_config", "_low_water_s", "_rebuffers", "_resume_s", "_resuming", "_start_s", "_state")

    def __init__(self, config: PrebufferConfig) -> None:
        self._config = config
        # Copied into slots so the hot path reads plain attributes, not dataclass properties.
        self._start_s: float = float(config.start_s)
        self._resume_s: float = float(config.effective_resume_s)
        self._low_water_s: float = float(config.low_water_s)
        self._state: PlaybackState = PlaybackState.IDLE
        # True after an underrun within the current request: selects resume_s over start_s.
        self._resuming: bool = False
        self._rebuffers: int = 0

    @property
    def config(self) -> PrebufferConfig:
        """The configuration this policy was built with."""
        return self._config

    @property
    def state(self) -> PlaybackState:
        """The current playback state."""
        return self._state

    @property
    def rebuffer_count(self) -> int:
        """How many times playback paused to rebuffer (PLAYING -> BUFFERING).

        Cumulative over the policy's lifetime; :meth:`reset` does not clear it, so
        a per-request figure is the difference between two readings.
        """
        return self._rebuffers

    @property
    def start_threshold_s(self) -> float:
        """Seconds needed to (re)start right now: ``resume_s`` after an underrun, else ``start_s``."""
        return self._resume_s if self._resuming else self._start_s

    def should_start_playback(self, buffered_s: float, input_complete: bool) -> bool:
        """Whether BUFFERING should become PLAYING.

        True when the buffer holds at least the current threshold, or when the
        whole request is already synthesised and anything at all is buffered (no
        point waiting for audio that will never come).  An empty buffer never
        starts playback, even with a threshold of 0, because playing nothing would
        immediately count as an underrun.
        """
        if buffered_s <= 0.0:
            return False
        return input_complete or buffered_s >= (self._resume_s if self._resuming else self._start_s)

    def should_pause_playback(self, buffered_s: float, input_complete: bool) -> bool:
        """Whether PLAYING should go back to BUFFERING (an underrun / rebuffer).

        True when the buffer is at or below ``low_water_s`` and more audio is still
        expected.  With input complete the buffer just plays out to the end.
        """
        return (not input_complete) and buffered_s <= self._low_water_s

    def step(self, buffered_s: float, input_complete: bool, has_audio_expected: bool) -> PlaybackState:
        """Advance the state machine for one callback block and return the new state.

        Args:
            buffered_s: Seconds of audio in the playback buffer before this block
                consumes any.  Note that with ``low_water_s=0`` a producer that
                trickles in less than a block per block never leaves the buffer
                exactly empty when the policy looks, so partly silent blocks do not
                count as underruns; set ``low_water_s`` to at least one block's
                duration if they should.
            input_complete: The synthesiser has produced all audio of the current
                request; nothing more will be added to the buffer.
            has_audio_expected: A request is active (audio is, or will be, in the
                buffer).  ``False`` is treated as "nothing more is coming", i.e. it
                implies ``input_complete``.

        Transitions (several may chain within one call, so a block that already
        has enough audio plays in that same block instead of one block later):

        * IDLE -> BUFFERING when ``has_audio_expected``.
        * BUFFERING -> PLAYING when :meth:`should_start_playback`.
        * BUFFERING -> IDLE when nothing is buffered and nothing more is coming
          (e.g. a request that produced no audio).
        * PLAYING -> IDLE when nothing more is coming and the buffer is drained.
        * PLAYING -> BUFFERING when :meth:`should_pause_playback`; counts a rebuffer.
        """
        complete = input_complete or not has_audio_expected
        state = self._state
        if state is PlaybackState.IDLE:
            if not has_audio_expected:
                return state
            state = PlaybackState.BUFFERING
        if state is PlaybackState.BUFFERING:
            if self.should_start_playback(buffered_s, complete):
                state = PlaybackState.PLAYING
            elif complete and buffered_s <= 0.0:
                state = PlaybackState.IDLE
                self._resuming = False
        else:  # PLAYING (an IDLE state either returned above or became BUFFERING)
            if complete and buffered_s <= 0.0:
                state = PlaybackState.IDLE
                self._resuming = False
            elif self.should_pause_playback(buffered_s, complete):
                state = PlaybackState.BUFFERING
                self._resuming = True
                self._rebuffers += 1
        self._state = state
        return state

    def retune(self, config: PrebufferConfig) -> None:
        """Take new thresholds (``skald config set prebuffer.*``) without leaving the current
        state: a start still buffering waits for the new ``start_s``. Called from another thread
        than ``step``: each threshold is one attribute store, and a block that sees the old value
        of one and the new value of another decides as either configuration would."""
        self._config = config
        self._low_water_s = float(config.low_water_s)
        self._start_s = float(config.start_s)
        self._resume_s = float(config.effective_resume_s)

    def reset(self) -> None:
        """Return to IDLE (interrupt or end of request); the next start uses ``start_s`` again."""
        self._state = PlaybackState.IDLE
        self._resuming = False

    def __repr__(self) -> str:
        return (
            f"PrebufferPolicy(state={self._state.name}, start_s={self._start_s}, resume_s={self._resume_s}, "
            f"low_water_s={self._low_water_s}, resuming={self._resuming}, rebuffers={self._rebuffers})"
        )


class AdaptiveResume:
    """Learns the resume threshold from underruns (``prebuffer.adaptive``).

    An underrun says the synthesis fell behind the speaker by more than the cushion it resumed
    with; a second one soon after says the same cushion is still too small. So each underrun
    multiplies the resume threshold by ``GROWTH`` (up to ``max_s``: the tier's bound), and each
    ``calm_s`` without one moves it half-way back to the configured ``base_s``, ending on the
    base itself once within 10 ms of it. The first start of a request keeps its own
    ``start_s``: time to first audio is not paid for an underrun that may not come again.

    Pure logic on a clock the caller passes (``now``, seconds); :meth:`on_underrun` and
    :meth:`tick` return the new threshold when it changed, else ``None``. ``history`` keeps the
    (time, threshold) of every change, newest last (bounded), for reports.
    """

    GROWTH = 2.0
    HISTORY = 256

    def __init__(self, base_s: float, max_s: float, calm_s: float) -> None:
        if calm_s <= 0:
            raise ValueError(f"AdaptiveResume calm_s={calm_s!r}: must be > 0")
        self.base_s = float(base_s)
        self.max_s = max(float(max_s), self.base_s)
        self.calm_s = float(calm_s)
        self.current_s = self.base_s
        self._since: float | None = None  # the last underrun or decay step
        self.history: list[tuple[float, float]] = []

    def on_underrun(self, now: float) -> float | None:
        self._since = now
        # From a 0 base the first step needs a floor: 0.1 s, about one engine block.
        grown = min(self.max_s, max(self.current_s * self.GROWTH, 0.1))
        return self._set(now, grown)

    def tick(self, now: float) -> float | None:
        if self._since is None or self.current_s <= self.base_s or now - self._since < self.calm_s:
            return None
        self._since = now
        lowered = self.base_s + (self.current_s - self.base_s) / 2.0
        return self._set(now, self.base_s if lowered - self.base_s < 0.01 else lowered)

    def rebase(self, base_s: float, max_s: float) -> None:
        """New configured values (live config): what was learned (the threshold's excess over the
        base) is kept on top of the new base, within the new bound."""
        learned = self.current_s - self.base_s
        self.base_s = float(base_s)
        self.max_s = max(float(max_s), self.base_s)
        self.current_s = min(self.base_s + learned, self.max_s)

    def _set(self, now: float, value: float) -> float | None:
        value = round(value, 4)
        if value == self.current_s:
            return None
        self.current_s = value
        self.history.append((now, value))
        del self.history[: -self.HISTORY]
        return value

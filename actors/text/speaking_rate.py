"""Speaking rate: how many seconds a text takes to say, for one voice.

Calibrated at load from the voice's measured rate, and updated from real synthesized durations. The
chunker sizes chunks with it; the estimate runs on the text as spoken (after normalization), so
"1492" is costed as "fourteen ninety-two".
"""

from __future__ import annotations

import math
import unicodedata

from actors.text.punctuation import CLOSERS, DASHES

__all__ = ["SpeakingRate", "speech_units"]

_SYMBOL_LETTERS = {"%": 7, "&": 3, "+": 4, "=": 6, "@": 2, "$": 6, "€": 5, "£": 6, "°": 7}
_DEFAULT_PAUSES = {
    ".": 0.25,
    "!": 0.25,
    "?": 0.25,
    "…": 0.3,
    ",": 0.1,
    ";": 0.15,
    ":": 0.15,
    "—": 0.12,
    "–": 0.1,
}
# Ordinary narration prose, used to translate between "characters per second" as the engines
# measure it (len(text) / seconds, punctuation and all) and this model's internal rate.
_REFERENCE_PROSE = (
    "The torchlight flickers across the wet stone as you step into the crypt. Somewhere ahead, "
    "water drips in a slow and patient rhythm, and the air tastes of iron and old dust. As your "
    "eyes adjust, you notice carvings along the walls, depicting a king who wears a crown of "
    "thorns, while his subjects kneel before him in silent, endless worship. Suddenly, a low voice "
    "echoes from the darkness: who dares disturb the sleep of the forgotten?"
)

_unit_cache: dict[str, int] = {}


def speech_units(ch: str) -> int:
    """Speech weight of one character, in half-letters (a letter or a space = 2)."""
    u = _unit_cache.get(ch)
    if u is None:
        if ch.isalpha() or ch.isspace():
            u = 2
        elif ch.isnumeric():
            u = 5  # digits are read as words: "1204" → "twelve oh four"; ~2.5 letters per digit
        elif ch in _SYMBOL_LETTERS:
            u = 2 * _SYMBOL_LETTERS[ch]
        elif unicodedata.category(ch).startswith("M"):
            u = 1  # combining marks belong to the letter before them (decomposed accents)
        else:
            u = 0  # punctuation: its cost is the pause, handled separately
        _unit_cache[ch] = u
    return u


def _dur(units: int, pause_ms: int, overhead_s: float, rate: float) -> float:
    """The one formula for a duration (shared by estimate() and the chunker: identical floats)."""
    return overhead_s + units / (2.0 * rate) + pause_ms / 1000.0


class SpeakingRate:
    """Seconds-of-speech estimator for one voice, calibrated at load and updated from real durations.

    Model: ``duration = utterance_s + speakable_chars / rate + pauses``. Speakable characters are
    letters and spaces (digits weigh 2.5, a few symbols weigh what they are read as), punctuation
    costs nothing itself but adds a pause when it really pauses (``.`` followed by a space or the
    end, not the one in ``3.50``). ``utterance_s`` is the fixed lead-in/out of one synthesis call
    (measured for Piper: ~0.2 s).

    ``chars_per_s`` is in the units the engines measure, ``len(text) / seconds`` over ordinary
    prose (punctuation included); it is translated to the model's internal rate through a reference
    paragraph, so ``SpeakingRate(chars_per_s=18.35).estimate(text_of_435_chars)`` ≈ 23.7 s.
    """

    def __init__(
        self,
        chars_per_s: float = 15.0,
        pause_s: dict[str, float] | None = None,
        *,
        utterance_s: float = 0.2,
    ) -> None:
        pauses = dict(_DEFAULT_PAUSES if pause_s is None else pause_s)
        for ch, sec in pauses.items():
            if len(ch) != 1 or not (0 <= sec <= 5):
                raise ValueError(f"pause_s[{ch!r}] must be a single character mapped to 0..5 s, got {sec!r}")
        if not (0 <= utterance_s <= 5):
            raise ValueError(f"utterance_s must be within 0..5 s, got {utterance_s!r}")
        self._pause_ms = {ch: round(sec * 1000) for ch, sec in pauses.items()}
        self._pause_chars = frozenset(self._pause_ms)
        self._overhead = float(utterance_s)
        ref_units, ref_ms = self.measure(_REFERENCE_PROSE)
        self._ref = (len(_REFERENCE_PROSE), ref_units, ref_ms)
        self._rate = self._internal_rate(chars_per_s)
        self.observations = 0  # accepted observe() calls

    # -- conversions between the public rate and the internal one ------------------------------

    def _internal_rate(self, chars_per_s: float) -> float:
        n, units, ms = self._ref
        if not isinstance(chars_per_s, int | float) or not math.isfinite(chars_per_s) or chars_per_s <= 0:
            raise ValueError(f"chars_per_s must be a finite number > 0, got {chars_per_s!r}")
        speech_s = n / chars_per_s - self._overhead - ms / 1000.0
        if speech_s <= 0.05 * n / chars_per_s:
            raise ValueError(f"chars_per_s={chars_per_s!r} is too fast to be speech")
        return units / 2.0 / speech_s

    @property
    def chars_per_s(self) -> float:
        """Current rate, as ``len(text) / seconds`` of ordinary prose."""
        n, units, ms = self._ref
        return n / _dur(units, ms, self._overhead, self._rate)

    @property
    def pause_ms(self) -> dict[str, int]:
        """Pause per punctuation character, in milliseconds (a copy)."""
        return dict(self._pause_ms)

    @property
    def utterance_s(self) -> float:
        """Fixed cost of one synthesis call (lead-in and trailing silence)."""
        return self._overhead

    def duration(self, units: int, pause_ms: int) -> float:
        """Seconds for a non-empty text of ``units`` half-letters and ``pause_ms`` of pauses."""
        return _dur(units, pause_ms, self._overhead, self._rate)

    # -- measuring text --------------------------------------------------------------------------

    def pause_counts(self, text: str, i: int, final: bool) -> bool | None:
        """Whether the pause character at ``text[i]`` really pauses (None: needs more text).

        It does when the next character after any closing quotes/brackets is whitespace or the end
        of the text; a dash also pauses before any non-punctuation character ("1204—or").
        """
        n = len(text)
        j = i + 1
        while j < n and text[j] in CLOSERS:
            j += 1
        if j == n:
            return True if final else None
        nxt = text[j]
        return nxt.isspace() or (text[i] in DASHES and nxt not in self._pause_chars)

    def measure(self, text: str) -> tuple[int, int]:
        """(speech units, pause milliseconds) of ``text`` taken as one whole utterance."""
        units = sum(map(speech_units, text))
        ms = 0
        pm = self._pause_ms
        for i, ch in enumerate(text):
            if ch in pm and self.pause_counts(text, i, True):
                ms += pm[ch]
        return units, ms

    def estimate(self, text: str) -> float:
        """Seconds of speech for ``text`` synthesized as one utterance (0.0 when nothing to say)."""
        if not text or text.isspace():
            return 0.0
        units, ms = self.measure(text)
        if units == 0:
            # Punctuation alone is nothing to say: a pause needs speech around it. (Counting a
            # lone "." as 0.45 s but ".\x1b" as 0 made estimates jump when text was appended.)
            return 0.0
        return self.duration(units, ms)

    # -- learning ----------------------------------------------------------------------------------

    def _observed_rate(self, text: str, dur_s: float) -> float | None:
        units, ms = self.measure(text)
        letters = units / 2
        if letters < 10 or not math.isfinite(dur_s) or dur_s <= 0:
            return None  # tiny texts are dominated by the fixed overhead: no information
        speech_s = dur_s - self._overhead - ms / 1000.0
        if speech_s < 0.25:
            return None
        rate = letters / speech_s
        if not 4.0 <= rate <= 60.0:  # letters per second; outside this it is not speech (or a bug)
            return None
        return rate

    def observe(self, text: str, dur_s: float) -> None:
        """Update from a real synthesized duration (exponential moving average).

        Ignored: texts under 10 letters, non-positive or absurd durations. A single outlier is
        clipped to ×1.5 of the current rate before averaging; longer texts weigh more (the fixed
        overhead blurs short ones).
        """
        rate = self._observed_rate(text, dur_s)
        if rate is None:
            return
        cur = self._rate
        rate = min(max(rate, cur / 1.5), cur * 1.5)
        letters = self.measure(text)[0] / 2
        alpha = 0.3 * min(1.0, letters / 80.0)
        self._rate = cur + alpha * (rate - cur)
        self.observations += 1

    def calibrate(self, text: str, dur_s: float) -> None:
        """Set the rate from one measured synthesis (no averaging); ValueError if unusable."""
        rate = self._observed_rate(text, dur_s)
        if rate is None:
            raise ValueError(f"cannot calibrate from {dur_s!r} s for {text!r}")
        self._rate = rate


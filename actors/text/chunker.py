"""Semantic chunker: cut narration text at natural pause points into chunks of a few seconds.

The TTS engine synthesizes one chunk while the previous one plays, so chunk *durations* are what
matter: the first chunk of a request is short (audio starts fast), the rest sit in a 3–7 s band,
never above ``hard_max_s``. Durations are estimated by :class:`SpeakingRate`, which is calibrated
from the voice's measured rate and keeps learning from real synthesized durations.

Cut rules (see also the tests):

* Pause points, strongest first: sentence ends (``. ! ? …`` plus closing quotes/brackets after
  them), clause punctuation (``, ; :``, dashes ``— –`` and a spaced ``-``), and the gap before a
  conjunction/subordinator (and, but, or, as, while, when, because, until, although, where, which,
  though, then). Any other space is a word boundary.
* Never cut inside a word, a number (``3.50``, ``1,000``), an abbreviation or initial (``Dr.`` is
  not a sentence end, and no cut is placed right after ``Dr.``/``J.``/``Jan.``/``e.g.`` …), a URL
  (cuts only happen at spaces and dashes) or a short quotation (≤ 60 characters), unless the hard
  bounds leave no other choice.
* A period followed by a lowercase word is not a sentence end (an abbreviation we do not know);
  ``! ? …`` followed by a lowercase word count as clause punctuation (``"Wait!" she said``).
* First chunk: the first pause point at ``first_chunk_s``…``first_chunk_max_s``; failing that
  the last pause point before that window (if at least half of ``first_chunk_s``: "The map —");
  only then the first word boundary in the window, failing that the last one before it; protected
  places (inside a short quotation, right after a title, inside a phrase: see
  :mod:`actors.text.cuts`) only if nothing else is left; a cut inside a word at
  ``first_chunk_max_s`` as the very last resort. A whole text under ``hard_min_s`` is one chunk
  (so the first chunk waits until ``hard_min_s`` of text is in). With ``first_sentence`` (voices
  that stream within a chunk) the first sentence end in the window wins over all of that: the
  first chunk is a whole sentence when one ends by ``first_chunk_max_s``.
* Later chunks (greedy, one at a time, from the start of the remaining text ``R``):

  1. the earliest sentence end that lands the chunk in the band and leaves at least ``hard_min_s``
     after it (so a short remainder is never left behind it);
  2. else if ``R ≤ target_max``: all of it;
  3. else if ``R ≤ hard_max``: the best clause/conjunction pause in the band that leaves
     ``≥ hard_min_s``; else all of it (one slightly long chunk beats a cut at a bare word boundary);
  4. else the best cut in ``[hard_min, hard_max]``: pause points in the band (strongest, then
     closest to the band's middle), then pause points outside the band, then word boundaries
     (closest to the middle), then protected places (inside a short quote, after a title); within
     each of those, a cut leaving ``≥ hard_min_s`` after it first. Then the last boundary before
     ``hard_min``, and only then a cut inside a word at ``hard_max``.

  The remainder rule ("a remainder shorter than ``hard_min_s`` is merged into the previous chunk")
  falls out of 1–3: a cut is only taken early if what follows is long enough, and a remainder that
  cannot be merged (the merged chunk would pass ``hard_max_s``) stays a short final chunk. The first
  chunk never absorbs a remainder (it would lose its reason to exist: a fast start).

  One deliberate exception, for latency: the **second** chunk (index 1) takes rule 1's sentence end
  without the "leaves at least ``hard_min_s``" condition, i.e. as soon as the next word confirms
  it. It has to be ready while the deliberately short first chunk plays (~1.5 s); waiting for
  another ``hard_min_s`` of text cost 1–1.4 s of silence on three of the four recorded LLM streams
  (models stream only ~2× faster than speech). The price: a text that ends less than
  ``hard_min_s`` after the second chunk's sentence end gets a short last chunk instead of a merge.

Voice tags (``[voice:NAME]`` in the text; syntax in :mod:`actors.text.textprep`): the text up to a tag
that changes the voice is planned as if the text ended there (all the rules above, "whole text under
``hard_min_s``" and the remainder merge included), and its chunks are emitted at once. So no chunk
spans a voice change, and the chunk before a tag may be as short as it has to be: ``hard_min_s``
does not hold at a voice switch. That chunk's ``boundary`` is ``"voice"`` (also when nothing follows
the tag). The following chunks carry ``ChunkPlan.voice`` = the tag's name (None after ``[voice:]``:
the request's own voice) and are sized with that voice's :class:`SpeakingRate` (``rate_for``).
Chunk indexes go on across a switch, so only a request's very first chunk gets the short first-chunk
rule (a tag before any text does not count as a switch: the new voice speaks chunk 0). A tag naming
the voice already in effect changes nothing and forces no boundary.

Streaming: each decision depends only on a bounded window of text (about ``hard_max_s`` plus
``hard_min_s`` of lookahead, a word, and 60 characters inside an open quote). :meth:`feed` emits a
chunk as soon as no text that could still arrive would change that decision, so feeding text whole
or token by token gives *exactly* the same plan. Certainty is checked, not assumed: every
candidate cut carries its still-unknown attributes (is it inside a short quote? is the text after it
long enough?), unseen text stands in as a best-case phantom candidate, and a cut is emitted only if
it wins under every possible completion. Decisions are re-tried only when a word boundary arrives
or 16 characters have passed, which keeps 1-character feeding linear.
"""

from __future__ import annotations

import bisect
import math
import re
from array import array
from collections.abc import Callable
from itertools import accumulate

from actors.text.cuts import CUT_POINTS, QuoteSpans, classify_cut
from actors.text.normalize import Lexicon, Normalizer, Spoken
from actors.text.plan import SENTENCE, STRENGTH_NAMES, WORD, ChunkerConfig, ChunkPlan
from actors.text.punctuation import CLOSERS
from actors.text.ranking import CutRanking, Key, phantom, phantom_first
from actors.text.speaking_rate import SpeakingRate, speech_units
from actors.text.textprep import TextPreparer, VoiceSwitch

__all__ = ["ChunkPlan", "ChunkerConfig", "SemanticChunker", "SpeakingRate", "plan_chunks"]

_INF = math.inf

class SemanticChunker(CutRanking):
    """Streaming semantic chunker for one request at a time.

    Feed raw text (markdown, emoji and ``[voice:NAME]`` tags allowed, any split, e.g. LLM tokens)
    with :meth:`feed`; each call returns the chunks that are decided now. :meth:`finish` flushes the
    rest and starts a new request (chunk indexes restart at 0, the voice goes back to the request's).
    :meth:`reset` drops everything pending (cancel).

    ``rate`` sizes the request's own voice. ``rate_for(name)`` gives the rate of a tagged voice; it
    is called once per switch to that voice, and returning None (an unknown voice) keeps the rate in
    effect. Without ``rate_for`` every voice is sized with ``rate``. It must answer the same for the
    same name within a request, or streaming and batch plans could differ.

    Text is normalized (:mod:`actors.text.normalize`) before it is planned: ``text`` is what is
    said ("fourteen ninety-two"), ``source`` what was written ("1492"); ``language`` picks the rules
    and ``lexicon`` a campaign's own words.
    """

    def __init__(
        self,
        rate: SpeakingRate,
        config: ChunkerConfig | None = None,
        *,
        rate_for: Callable[[str], SpeakingRate | None] | None = None,
        language: str = "en",
        lexicon: Lexicon | None = None,
    ) -> None:
        self._language = language
        self._lexicon = lexicon
        self._request_rate = rate
        self._rate_for = rate_for
        self._cfg = config or ChunkerConfig()
        self._new_request()

    # -- public API --------------------------------------------------------------------------

    @property
    def rate(self) -> SpeakingRate:
        """The speaking-rate estimator of the request's own voice."""
        return self._request_rate

    @property
    def voice(self) -> str | None:
        """The voice of the text being fed now (None: the request's own voice)."""
        return self._voice

    @property
    def config(self) -> ChunkerConfig:
        """Chunk length targets."""
        return self._cfg

    @property
    def pending_text(self) -> str:
        """Text accepted but not yet emitted: prepared text not in a chunk yet, then the raw tail
        the text preparer still holds back (usually a few characters)."""
        return self._buf[self._start :] + self._norm.pending + self._prep.pending

    def feed(self, piece: str) -> list[ChunkPlan]:
        """Accept a piece of raw text; return the chunks decided now (possibly none)."""
        return self._take_parts(self._prep.feed_parts(piece), final=False)

    def finish(self) -> list[ChunkPlan]:
        """End of text: flush everything left, then get ready for a new request."""
        plans = self._take_parts(self._prep.finish_parts(), final=True)
        self._new_request()
        return plans

    def reset(self) -> None:
        """Drop pending text and start a new request (used on cancel)."""
        self._new_request()

    # -- state ---------------------------------------------------------------------------------

    def _new_request(self) -> None:
        self._prep = TextPreparer()
        self._norm = Normalizer(self._language, self._lexicon)
        self._index = 0
        self._voice: str | None = None
        self._rate = self._request_rate  # the rate of self._voice
        self._new_segment()

    def _new_segment(self) -> None:
        """Forget the planned text: what comes next is planned as a text of its own (same request)."""
        self._buf = ""  # spoken text of the current voice; positions below are indexes into it
        self._src = ""  # the prepared text it was said for
        self._smap = array("q", [0])  # _smap[i] = where buf[:i] ends in _src
        self._lock = bytearray(1)  # _lock[i] = 1: a cut before buf[i] would split a rewritten token
        self._units = array("q", [0])  # _units[i] = speech units of buf[:i]
        self._pms = array("q", [0])  # _pms[i] = pause ms of buf[:i] (known up to _pknown)
        self._pknown = 0
        self._start = 0  # start of the next chunk (never on whitespace)
        # Classified candidate cuts, in position order: (position, strength, abbreviation-protected).
        self._cpos: list[int] = []
        self._cstr: list[int] = []
        self._cabbr: list[bool] = []
        self._chead = 0  # first candidate index that may still matter
        self._scan = 1  # next position to classify
        # Quotation spans: opening positions, and closing position / -1 open / -2 abandoned.
        self._quotes = QuoteSpans()
        self._stale = 0  # characters since the last failed decision attempt
        self._new_cands = False

    # -- ingest --------------------------------------------------------------------------------

    def _take_parts(self, parts: list[str | VoiceSwitch], final: bool) -> list[ChunkPlan]:
        plans: list[ChunkPlan] = []
        for part in parts:
            if isinstance(part, str):
                plans += self._ingest(self._norm.feed(part), final=False)
            elif part.voice != self._voice:
                # The text so far is complete for its voice: plan it as if the text ended here.
                plans += self._ingest(self._norm.finish(), final=True, end="voice")
                self._switch_voice(part.voice)
        if final:
            plans += self._ingest(self._norm.finish(), final=True)
        return plans

    def _switch_voice(self, voice: str | None) -> None:
        rate = self._request_rate
        if voice is not None:
            # None: a voice the caller does not know; it keeps the current voice, so keep its rate.
            rate = (self._rate_for(voice) if self._rate_for else None) or self._rate
        self._voice = voice
        self._rate = rate
        self._new_segment()

    def _ingest(self, pieces: list[Spoken], final: bool, end: str = "end") -> list[ChunkPlan]:
        plans: list[ChunkPlan] = []
        # Big inputs are taken in slices so the window bookkeeping stays small (memory, trimming).
        step = 8192
        i = 0
        while i < len(pieces):
            j, size = i, 0
            while j < len(pieces) and (size < step or j == i):
                size += len(pieces[j].text)
                j += 1
            last = final and j >= len(pieces)
            self._append(pieces[i:j])
            self._analyse(last)
            self._stale += size
            if last or self._new_cands or self._stale >= 16 or size > 1:
                self._decide_all(last, plans, end)
            i = j
        if final and not pieces:
            self._analyse(True)
            self._decide_all(True, plans, end)
        return plans

    def _append(self, pieces: list[Spoken]) -> None:
        text = "".join(p.text for p in pieces)
        buf = self._buf = self._buf + text
        it = accumulate(map(speech_units, text), initial=self._units[-1])
        next(it)
        self._units.extend(it)
        # Where each spoken position is in the source, and which positions are inside a rewritten
        # piece ("fourteen | ninety-two"): no cut there, it would split what is one written token.
        smap, lock = self._smap, self._lock
        src = len(self._src)
        pos = len(buf) - len(text)
        for p in pieces:
            n = len(p.text)
            if p.glue:
                # No cut before this piece: that cut point is before the whitespace preceding it.
                q = pos
                while q > 0 and buf[q - 1].isspace():
                    q -= 1
                lock[q] = 1
            if p.source == p.text:
                smap.extend(range(src + 1, src + n + 1))
                lock.extend(bytes(n))
            elif n:
                smap.extend([src] * (n - 1))
                smap.append(src + len(p.source))
                lock.extend(b"\x01" * (n - 1))
                lock.append(0)
            else:  # said as nothing (text empty, source not): its source joins the piece before
                smap[-1] = src + len(p.source)
            src += len(p.source)
            pos += n
        self._src += "".join(p.source for p in pieces)

    def _analyse(self, final: bool) -> None:
        self._advance_pauses(final)
        self._quotes.advance(self._buf, final)
        self._advance_candidates(final)

    def _advance_pauses(self, final: bool) -> None:
        buf, rate = self._buf, self._rate
        pm = rate._pause_ms
        i, n = self._pknown, len(buf)
        inc = [0] * (n - i)
        stop = n
        for m in _pause_re(rate).finditer(buf, i):
            p = m.start()
            counts = rate.pause_counts(buf, p, final)
            if counts is None:
                stop = p
                break
            if counts:
                inc[p - i] = pm[buf[p]]
        it = accumulate(inc[: stop - i], initial=self._pms[-1])
        next(it)
        self._pms.extend(it)
        self._pknown = stop

    def _advance_candidates(self, final: bool) -> None:
        buf = self._buf
        n = len(buf)
        c = self._scan
        while True:
            m = CUT_POINTS.search(buf, c)
            if m is None or m.start() >= n:
                c = n
                break
            cut = m.start()  # >= 1: the scan starts at 1 (no cut before the first character)
            if cut > self._pknown:
                c = cut  # estimates at this cut need pauses that are not settled yet
                break
            res = classify_cut(buf, cut, final) if not self._lock[cut] else (-1, False)
            if res is None:
                c = cut  # needs look-ahead that has not arrived yet
                break
            if res[0] >= 0:
                self._cpos.append(cut)
                self._cstr.append(res[0])
                self._cabbr.append(res[1])
                self._new_cands = True
            c = cut + 1
        self._scan = c

    # -- measuring -------------------------------------------------------------------------------

    def _est(self, s: int, c: int) -> float:
        """Estimated seconds of buf[s:c] as one utterance (== rate.estimate(buf[s:c]))."""
        units = self._units[c] - self._units[s]
        ms = self._pms[c] - self._pms[s] + self._end_fix(s, c)
        if units == 0 and ms == 0:
            return 0.0
        return self._rate.duration(units, ms)

    def _end_fix(self, s: int, c: int) -> int:
        """Pause of the chunk's final punctuation when the buffer context did not count it."""
        buf = self._buf
        k = c - 1
        while k >= s and buf[k] in CLOSERS:
            k -= 1
        if k < s:
            return 0
        ms = self._rate._pause_ms.get(buf[k])
        if not ms or self._pms[k + 1] - self._pms[k] > 0:
            return 0
        return ms

    def _lower(self, s: int, c: int) -> float:
        """A lower bound for the estimate of buf[s:x] for any x >= c, whatever text follows."""
        units = self._units[c] - self._units[s]
        ms = self._pms[min(c, self._pknown)] - self._pms[min(s, self._pknown)]
        if units == 0 and ms == 0:
            return 0.0
        return self._rate.duration(units, ms)

    def _skip_ws(self, i: int) -> int:
        buf = self._buf
        n = len(buf)
        while i < n and buf[i].isspace():
            i += 1
        return i

    # -- deciding --------------------------------------------------------------------------------

    def _decide_all(self, final: bool, plans: list[ChunkPlan], end: str = "end") -> None:
        """Emit every chunk that is certain now; ``end`` names the boundary of a final chunk."""
        while True:
            self._start = self._skip_ws(self._start)
            if self._start >= len(self._buf):
                break
            got = self._decide(final)
            if got is None:
                self._stale = 0
                self._new_cands = False
                break
            cut, strength = got
            text = self._buf[self._start : cut]
            plans.append(
                ChunkPlan(
                    index=self._index,
                    text=text,
                    est_s=self._rate.estimate(text),
                    boundary=end if strength < 0 else STRENGTH_NAMES[strength],
                    voice=self._voice,
                    source=self._src[self._smap[self._start] : self._smap[cut]],
                )
            )
            self._index += 1
            self._start = cut
        self._trim()

    def _trim(self) -> None:
        """Forget text well before the chunk start (keep a margin for look-behind)."""
        cut = self._start - 64
        if cut < 2048:
            return
        self._buf = self._buf[cut:]
        scut = self._smap[cut]
        self._src = self._src[scut:]
        self._smap = array("q", (x - scut for x in self._smap[cut:]))
        self._lock = self._lock[cut:]
        self._units = self._units[cut:]
        self._pms = self._pms[cut:]
        self._pknown -= cut
        self._start -= cut
        self._scan -= cut
        h = bisect.bisect_left(self._cpos, cut + 1)
        self._cpos = [p - cut for p in self._cpos[h:]]
        self._cstr = self._cstr[h:]
        self._cabbr = self._cabbr[h:]
        self._chead = max(0, self._chead - h)
        self._quotes.trim(cut)

    def _decide(self, final: bool) -> tuple[int, int] | None:
        """Next cut (position, strength; strength -1 = end of text) or None if not certain yet."""
        cfg = self._cfg
        s = self._start
        n = len(self._buf)
        first = self._index == 0
        seen_lb = _INF if final else self._lower(s, n)
        total = self._est(s, n) if final else _INF

        if first:
            if final and total < cfg.hard_min_s:
                return (n, -1)
            if not final and seen_lb < cfg.hard_min_s:
                return None  # the whole text may still turn out shorter than hard_min: one chunk
            ph = phantom_first(cfg, self._lower(s, min(self._scan, n)))
            return self._select(self._key_first, cfg.first_chunk_max_s, final, ph, (9,))

        # Quick exit (saves work when streaming): while case A is possible, only a sentence end in the
        # band followed by >= hard_min of text can be certain (the two estimates overlap by at most
        # one utterance overhead and one pause); for the second chunk, only a sentence end in the band.
        if self._index == 1:
            need = cfg.target_min_s
        else:
            slack = self._rate.utterance_s + max(self._rate.pause_ms.values(), default=0) / 1000.0
            need = min(cfg.target_max_s, cfg.target_min_s + cfg.hard_min_s - slack)
        if not final and seen_lb < need:
            return None
        # Unclassified text may still hold an in-band sentence end (the phantom's key starts with 0),
        # so only a certain in-band sentence end can win: skip the full ranking if there is none.
        if not final and self._lower(s, min(self._scan, n)) <= cfg.target_max_s and not self._band_sentence(s):
            return None
        cases: list[str]
        if final:
            cases = ["A" if total <= cfg.target_max_s else "B" if total <= cfg.hard_max_s else "C"]
        else:
            cases = ["C"]
            if seen_lb <= cfg.hard_max_s:
                cases.append("B")
            if seen_lb <= cfg.target_max_s:
                cases.append("A")
        result: tuple[int, int] | None = None
        for case in cases:
            key, fallback = {
                "A": (self._key_a, (1,)),
                "B": (self._key_b, (2,)),
                "C": (self._key_c, (9,)),
            }[case]
            ph = phantom(case, cfg, self._lower(s, min(self._scan, n)))
            got = self._select(key, cfg.hard_max_s, final, ph, fallback)
            if got is None or (result is not None and got != result):
                return None
            result = got
        return result  # strength -1 (all of the text) only when final: _select and _forced_cut see to it

    def _band_sentence(self, s: int) -> bool:
        """Is there a sentence-end candidate that would put the chunk in the target band?"""
        cfg = self._cfg
        cpos, cstr = self._cpos, self._cstr
        for i in range(self._chead, len(cpos)):
            c = cpos[i]
            # Every candidate is below the scan, and the caller checked the estimate up to the scan
            # is within target_max_s: no early exit needed.
            if c <= s or cstr[i] != SENTENCE:
                continue
            if cfg.target_min_s <= self._est(s, c) <= cfg.target_max_s:
                return True
        return False

    def _select(
        self,
        keyfn: Callable[[int, bool, bool, float, float], Key | None],
        limit: float,
        final: bool,
        phantom: Key | None,
        fallback: Key,
    ) -> tuple[int, int] | None:
        """The certainly-best cut under ``keyfn``, or None when more text could change it.

        Every option has a best-case and a worst-case key over its unknown attributes (None worst
        case: it may turn out not allowed). The winner must be certainly allowed and its worst case
        must beat every other option's best case, including the phantom standing for positions not
        classified yet. ``fallback`` (all of the text, or a forced cut) is always allowed.
        """
        cfg = self._cfg
        s = self._start
        n = len(self._buf)
        cpos, cstr, cabbr = self._cpos, self._cstr, self._cabbr
        h = self._chead
        while h < len(cpos) and cpos[h] <= s:
            h += 1
        self._chead = h
        # (best key, worst key or None, position, strength); position -1 = phantom, -2 = fallback
        options: list[tuple[Key, Key | None, int, int]] = [(fallback, fallback, -2, -2)]
        if phantom is not None and not final:
            options.append((phantom, None, -1, -1))
        for i in range(h, len(cpos)):
            c = cpos[i]
            if self._lower(s, c) > limit:
                break
            length = self._est(s, c)
            if length > limit or self._units[c] == self._units[s]:  # nothing to say ("—…" alone): no chunk
                continue
            qp = False if cabbr[i] else self._quotes.protects(c, final)
            prots = [True] if cabbr[i] else ([False, True] if qp is None else [qp])
            c2 = self._skip_ws(c)
            if final:
                rss = [self._est(c2, n) < cfg.hard_min_s]
            elif self._lower(c2, n) >= cfg.hard_min_s:
                rss = [False]
            else:
                rss = [False, True]  # the text after the cut may still end too soon
            keys = [keyfn(cstr[i], p, r, length, c) for p in prots for r in rss]
            known = [k for k in keys if k is not None]
            if known:
                worst = max(known) if len(known) == len(keys) else None
                options.append((min(known), worst, c, cstr[i]))
        win = -1
        for i, opt in enumerate(options):
            w = opt[1]
            if w is not None and (win < 0 or w < options[win][1]):  # type: ignore[operator]
                win = i
        wkey = options[win][1]
        assert wkey is not None
        if any(not wkey < opt[0] for i, opt in enumerate(options) if i != win):
            return None
        pos, strength = options[win][2], options[win][3]
        if pos >= 0:
            return (pos, strength)
        if keyfn in (self._key_a, self._key_b):
            return (n, -1) if final else None  # all of the text (only known at its end)
        return self._forced_cut(limit, final)

    def _forced_cut(self, limit: float, final: bool) -> tuple[int, int] | None:
        """No boundary anywhere: cut at the limit, preferring a non-letter neighbour (URL slash)."""
        s = self._start
        n = len(self._buf)
        # pragma below: only a spoken pause character (a custom table) at an 8192-char slice end gets here
        if not final and self._lower(s, self._pknown) <= limit:  # pragma: no cover
            return None
        last_ok = s + 1
        c = s + 1
        top = n if final else self._pknown
        while c <= top and self._lower(s, c) <= limit:
            if self._est(s, c) <= limit:
                last_ok = c
            c += 1
        if final and last_ok >= n:
            return (n, -1)
        buf, lock = self._buf, self._lock
        window = range(last_ok, max(s + 1, last_ok - 32) - 1, -1)
        # Outside a rewritten token if possible ("Mister", not "Mi|ster"), then at a non-letter.
        for unlocked_only in (True, False):
            for p in window:
                if p < n and not (buf[p - 1].isalnum() and buf[p].isalnum()) and not (unlocked_only and lock[p]):
                    while p > s + 1 and buf[p - 1].isspace():
                        p -= 1  # the chunk must not end in whitespace
                    return (p, WORD)
        return (last_ok, WORD)


_pause_re_cache: dict[frozenset[str], re.Pattern[str]] = {}


def _pause_re(rate: SpeakingRate) -> re.Pattern[str]:
    key = rate._pause_chars
    pat = _pause_re_cache.get(key)
    if pat is None:
        pat = re.compile("[" + "".join(re.escape(c) for c in sorted(key)) + "]" if key else r"(?!)")
        _pause_re_cache[key] = pat
    return pat


def plan_chunks(
    text: str,
    rate: SpeakingRate,
    config: ChunkerConfig | None = None,
    *,
    rate_for: Callable[[str], SpeakingRate | None] | None = None,
) -> list[ChunkPlan]:
    """Plan a whole text at once: ``feed(text) + finish()`` (see :class:`SemanticChunker`)."""
    chunker = SemanticChunker(rate, config, rate_for=rate_for)
    return chunker.feed(text) + chunker.finish()

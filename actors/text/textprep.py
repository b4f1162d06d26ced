"""Text preparation: language-model markdown and emoji → plain text a TTS voice can read.

Language models write markdown (``**bold**``, ``# headings``, ``* bullets``, ``[links](url)``) and
emoji; a TTS engine would either read the symbols aloud ("asterisk asterisk") or choke on them.
:class:`TextPreparer` turns such text into plain, speakable prose, and does it *streaming*: it is fed
the model's tokens one by one and passes text on as soon as it is safe, holding back only a short
tail whose meaning is not settled yet (a ``*`` that may be a bullet, a ``[`` that may open a link,
a line end whose pause depends on the next line).

Rules (each one is a deliberate choice, see the tests):

* ``*``, `````, ``#``, ``\\`` and emoji / pictographs / other symbols (Unicode ``So``, format and
  private-use characters, variation selectors, skin-tone modifiers, keycap marks) are dropped.
* ``_`` is dropped when it marks emphasis (``_word_``, ``__word__``); inside a word
  (``snake_case``) it becomes a space so the voice reads two words.
* A line starting with ``#`` is a heading; ``-``/``*``/``+``/``•`` followed by a space is a bullet
  (the mark is dropped); ``>`` quote marks are dropped; a line made only of ``-`` or ``=`` (a rule
  or a setext underline) is dropped. Ordered-list numbers are kept but spoken as a count:
  ``"1. Swords"`` → ``"1, Swords"`` (a period after a bare number reads as a full stop, a comma
  gives the short pause a reader makes after the item number).
* ``[text](url)`` and ``![alt](url)`` become ``text`` / ``alt``: **the URL of a markdown link is
  dropped** (nobody wants a URL read aloud). Bare URLs and domains (``library.example/scrolls``) are
  kept as written.
* Inline voice tags ``[voice:NAME]`` switch the voice (narrator vs. an NPC); see *Voice tags* below.
  The URL of a link and voice tags are the only places where letters or digits of the input are
  removed; everything else keeps every letter and digit, in order.
* Whitespace is normalised to single spaces. A line break becomes a pause: a period is inserted
  when the line does not already end in punctuation (``. ! ? … : ; , — –``, closing quotes and
  brackets looked through). The exception is a soft-wrapped line: when the next line starts with a
  lowercase letter (and the line is not a heading and no blank line follows), the break is just a
  space. A heading always ends with a pause. At the very end of the text nothing is inserted.
  (Blockquote ``>`` marks are looked through: ``"> a\\n> b"`` is one soft-wrapped quote.)
* List items therefore end with a period unless they end in punctuation already; a lowercase
  continuation line of an item joins it with a space.
* Unicode letters, digits and combining marks are never touched (no normalisation).

Only ``\\n`` counts as a line break (``\\r`` and other separators are plain whitespace).

Voice tags:

* A tag is exactly ``[voice:NAME]``: the keyword ``voice`` in any letter case, a colon, then a name of
  0 to 64 characters from ``A-Z a-z 0-9 _ . -``, then ``]``, no spaces anywhere. ``NAME`` is kept as
  written (voice names are case-sensitive). **The empty name, ``[voice:]``, restores the request's
  own voice** (it cannot clash with a voice name, which has at least one character).
* Anything else in brackets stays text (``[sic]``, ``[voice: npc]``, ``[voice:two words]``). A tag
  still unterminated when the text ends (``... [voice:np`` then ``finish()``) is text as well;
  while streaming it is held back until its ``]`` (or anything that rules out a tag) arrives.
* A tag wins over link syntax: ``[voice:npc](x)`` is a tag followed by the text ``(x)``; a tag inside
  a link's URL is part of the URL and dropped with it.
* A tag is never spoken. It stands between words like a space (``up.[voice:npc]Rooms`` →
  ``up.`` | ``Rooms``) and nothing is added before it: the text before a tag is complete, like the
  end of the text, so a line break right after a tag inserts no period (the chunker ends the chunk
  there anyway). A tag at the start of a line is looked through like any other character: the
  previous line's pause is decided by ``[`` (not lowercase, so it pauses).
* :meth:`TextPreparer.feed_parts` / :meth:`~TextPreparer.finish_parts` return the text with a
  :class:`VoiceSwitch` where each tag was; :meth:`~TextPreparer.feed` / :meth:`~TextPreparer.finish`
  and :func:`prepare_text` return only the text (tags dropped). Every tag gives a ``VoiceSwitch``,
  also one naming the voice already in effect: whether it changes anything is the caller's call.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from actors.text.punctuation import CLOSERS, TERMINAL

__all__ = ["TextPreparer", "VoiceSwitch", "prepare_parts", "prepare_text"]

# A line ending in TERMINAL (closing quotes/brackets, CLOSERS, looked through) needs no period.

# Voice tag (see the module docstring). The keyword is spelled out per letter rather than with an
# IGNORECASE flag, which would also let non-ASCII case variants ("İ" for "i") through.
_TAG_SRC = r"\[[vV][oO][iI][cC][eE]:(?P<voice>[A-Za-z0-9_.-]{0,64})\]"
_TAG = re.compile(_TAG_SRC)
# Markdown link / image. Bounded lengths keep the streaming hold-back short: a "[" that is not
# closed within 200 characters (or whose URL runs past 500) is just a bracket. A "[" that opens a
# voice tag never opens a link (the tag wins; the "!" of "![voice:x](u)" stays text).
_NOT_TAG = "(?!" + _TAG_SRC.replace("?P<voice>", "?:") + ")"
_LINK_SRC = r"!?" + _NOT_TAG + r"\[(?P<text>[^\[\]\n]{0,200})\]\([^()\n]{0,500}\)"
_LINK = re.compile(_LINK_SRC)
# Tags and links in one left-to-right scan, so a tag inside a link's URL goes with the link.
_TAG_OR_LINK = re.compile(_TAG_SRC + "|" + _LINK_SRC)
# A prefix of a possible link, reaching the end of the available text: hold it back.
_LINK_PARTIAL = re.compile(r"!?\[[^\[\]\n]{0,200}(?:\](?:\([^()\n]{0,500})?)?\Z")

_LINE_WS = re.compile(r"[^\S\n]*")
_BLOCKQUOTE = re.compile(r"(?:>[^\S\n]*)+")
_RULE_FULL = re.compile(r"([-=])(?:[^\S\n]*\1){2,}[^\S\n]*(?:\n|\Z)")
_RULE_PARTIAL = re.compile(r"[-=](?:[^\S\n]*[-=])*[^\S\n]*\Z")
_HEADING = re.compile(r"#+[^\S\n]*")
_BULLET = re.compile(r"[-*+][^\S\n]+|[•‣◦▪●][^\S\n]*")
_ORDERED = re.compile(r"(\d{1,9})[.)][^\S\n]+")
_ORDERED_PARTIAL = re.compile(r"\d{1,9}[.)]?\Z")
_UNDERSCORES = re.compile(r"_+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")

# ASCII characters that are never spoken: markdown emphasis/code/heading marks, escapes, controls
# (tab, newline, CR, FF, VT are whitespace and handled separately).
_ASCII_DROP = {ord(c): None for c in "*`#\\"}
_ASCII_DROP.update({c: None for c in range(32) if chr(c) not in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"})
_ASCII_DROP[0x7F] = None

_DROP_CATEGORIES = frozenset({"So", "Cf", "Co", "Cs", "Cn", "Cc"})
_drop_cache: dict[str, bool] = {}


def _is_dropped(ch: str) -> bool:
    """Whether a non-ASCII character is a pictograph/symbol that must not reach the voice."""
    hit = _drop_cache.get(ch)
    if hit is None:
        cp = ord(ch)
        if ch.isalnum() or ch.isspace():
            hit = False  # letters and digits always survive, whatever block they live in
        else:
            hit = (
                unicodedata.category(ch) in _DROP_CATEGORIES
                or 0x1F000 <= cp <= 0x1FAFF  # emoji blocks (incl. ones newer than this Python's table)
                or 0x2600 <= cp <= 0x27BF  # miscellaneous symbols, dingbats
                or 0xFE00 <= cp <= 0xFE0F  # variation selectors (emoji presentation)
                or 0xE0000 <= cp <= 0xE01EF  # tags, variation selectors supplement
                or cp in (0x200D, 0x20E3)  # zero-width joiner, combining keycap
                or ch in "•‣◦▪●"  # bullets that were not at a line start
            )
        _drop_cache[ch] = hit
    return hit


def _drop_nonascii(m: re.Match[str]) -> str:
    ch = m.group()
    return "" if _is_dropped(ch) else ch


@dataclass(frozen=True)
class VoiceSwitch:
    """A voice tag's place in the prepared text: what follows is spoken by ``voice``.

    ``voice`` is the tag's name as written, or None for ``[voice:]`` (the request's own voice).
    """

    voice: str | None


@dataclass
class _LineEnd:
    """A line break whose rendering (pause or plain space) waits for the next line's first char."""

    heading: bool
    needs_period: bool
    blank: bool = False  # a blank line (paragraph break) followed


class TextPreparer:
    """Streaming markdown/emoji → speakable text.

    ``feed()`` returns the text that is safe to pass on; it may hold back a short tail (a possible
    ``**``, a line start that could be a heading or bullet, an unfinished ``[link](url)`` or
    ``[voice:name]`` tag, a line end). ``finish()`` flushes the rest. The concatenation of everything
    returned is identical to ``prepare_text(whole_text)`` however the input was split. After
    ``finish()`` the preparer is ready for a new text.

    ``feed_parts()`` / ``finish_parts()`` are the same with voice tags kept as :class:`VoiceSwitch`
    items between the text pieces; the sequence of parts (adjacent strings joined) is also the same
    however the input was split.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._raw = ""  # input not processed yet (always within the current line)
        self._at_line_start = True
        self._heading = False  # current line is a heading
        self._line_content = False  # current line produced any output
        self._ctx = ""  # last (link-substituted) raw char of the current line, for the "_" rule
        self._eol: _LineEnd | None = None
        self._any_out = False  # anything emitted yet (no leading space)
        self._space = False  # a space is owed before the next output word
        self._last_sig = ""  # last output char of the current line, closers looked through
        self._out: list[str | VoiceSwitch] = []

    @property
    def pending(self) -> str:
        """Raw input accepted but not yet passed on (the held-back tail)."""
        return self._raw

    def feed(self, piece: str) -> str:
        """Accept a piece of raw text (e.g. one LLM token); return the speakable text now settled."""
        return _text_only(self.feed_parts(piece))

    def finish(self) -> str:
        """End of text: return everything still held back, then reset for a new text."""
        return _text_only(self.finish_parts())

    def feed_parts(self, piece: str) -> list[str | VoiceSwitch]:
        """Like :meth:`feed`, with a :class:`VoiceSwitch` where each voice tag was."""
        # Line by line: _process consumes the held-back text a line at a time, and re-slicing one
        # big piece per line would copy it once per line (quadratic in the piece's size).
        start = 0
        while start < len(piece):
            nl = piece.find("\n", start)
            end = len(piece) if nl < 0 else nl + 1
            self._raw += piece[start:end]
            self._process(final=False)
            start = end
        return self._take()

    def finish_parts(self) -> list[str | VoiceSwitch]:
        """Like :meth:`finish`, with a :class:`VoiceSwitch` where each voice tag was."""
        self._process(final=True)
        out = self._take()
        self._reset()
        return out

    # -- internals ---------------------------------------------------------------------------

    def _take(self) -> list[str | VoiceSwitch]:
        """The output so far as parts: adjacent strings joined, never an empty string."""
        parts: list[str | VoiceSwitch] = []
        run: list[str] = []
        for item in self._out:
            if isinstance(item, str):
                run.append(item)
                continue
            if run:
                parts.append("".join(run))
                run = []
            parts.append(item)
        if run:
            parts.append("".join(run))
        self._out.clear()
        return parts

    def _process(self, final: bool) -> None:
        while self._raw:
            if self._at_line_start:
                if not self._line_start(final):
                    return
                continue
            raw = self._raw
            nl = raw.find("\n")
            if nl >= 0:
                # A complete line: nothing in it is ambiguous any more.
                self._inline(raw[:nl])
                self._raw = raw[nl + 1 :]
                self._end_line()
                continue
            end = len(raw) if final else self._safe_end(raw)
            if end:
                self._inline(raw[:end])
                self._raw = raw[end:]
            return

    def _line_start(self, final: bool) -> bool:
        """Classify the start of a line (heading, bullet, list number, rule); False = need more."""
        raw = self._raw
        i = _LINE_WS.match(raw).end()  # type: ignore[union-attr]
        if i == len(raw):
            self._raw = ""  # leading whitespace carries no meaning
            return False
        if raw[i] == "\n":  # blank line: a paragraph break
            if self._eol is not None:
                self._eol.blank = True
            self._raw = raw[i + 1 :]
            return True
        m = _BLOCKQUOTE.match(raw, i)
        if m:
            i = m.end()
            if i == len(raw):
                self._raw = ""  # the quote marks carry no meaning; wait for the line's text
                return False
            if raw[i] == "\n":  # an empty quoted line is a blank line
                if self._eol is not None:
                    self._eol.blank = True
                self._raw = raw[i + 1 :]
                return True
        if self._eol is not None:
            self._resolve_eol(raw[i])
        # A line of only "-" or "=" is a rule / setext underline: it says nothing.
        if not final and _RULE_PARTIAL.match(raw, i):
            self._raw = raw[i:]
            return False
        m = _RULE_FULL.match(raw, i)
        if m:
            self._raw = raw[m.end() :]
            return True  # still at a line start (the rule line produced nothing)
        m = _HEADING.match(raw, i)
        if m:
            self._heading = True
            i = m.end()
        else:
            if not final and raw[i] in "-*+" and i + 1 == len(raw):
                self._raw = raw[i:]  # "*" could be a bullet or the start of "**bold**"
                return False
            m = _BULLET.match(raw, i)
            if m:
                i = m.end()
            else:
                if not final and _ORDERED_PARTIAL.match(raw, i):
                    self._raw = raw[i:]  # "12" or "12." could be a list number
                    return False
                m = _ORDERED.match(raw, i)
                if m:
                    self._emit(m.group(1) + ", ")
                    i = m.end()
        self._at_line_start = False
        self._raw = raw[i:]
        return True

    def _resolve_eol(self, first: str) -> None:
        """Render the previous line break, now that the next line's first character is known."""
        eol = self._eol
        assert eol is not None
        self._eol = None
        pause = eol.heading or eol.blank or not first.islower()
        if pause and eol.needs_period:
            self._out.append(".")
        self._space = True

    def _end_line(self) -> None:
        if self._line_content:
            self._eol = _LineEnd(heading=self._heading, needs_period=self._last_sig not in TERMINAL)
        self._at_line_start = True
        self._heading = False
        self._line_content = False
        self._ctx = ""
        self._last_sig = ""

    def _safe_end(self, raw: str) -> int:
        """Length of the prefix of a partial line that can be processed without more input."""
        end = len(raw)
        j = raw.find("[")
        while 0 <= j < end:
            start = j - 1 if j > 0 and raw[j - 1] == "!" else j
            # A complete tag is settled (it wins over link syntax); an incomplete one looks like a
            # link in the making to _LINK_PARTIAL below and is held back with it.
            m = _TAG.match(raw, j) or _LINK.match(raw, start) or _LINK.match(raw, j)
            if m:
                j = raw.find("[", m.end())
                continue
            if _LINK_PARTIAL.match(raw, start):
                end = start  # a link may be in the making: hold it back
                break
            j = raw.find("[", j + 1)
        # Hold a trailing "_" run (emphasis or snake_case? depends on the next char) and a trailing
        # "!" (may start "![image]").
        while end and raw[end - 1] in "_!":
            end -= 1
        return end

    def _inline(self, seg: str) -> None:
        """Process a stretch of line body (never splits a link or a tag, never ends in a pending '_')."""
        if "[" not in seg:
            self._inline_text(seg)
            return
        run: list[str] = []  # link-substituted text since the last tag
        pos = 0
        for m in _TAG_OR_LINK.finditer(seg):
            run.append(seg[pos : m.start()])
            pos = m.end()
            voice = m.group("voice")
            if voice is None:
                run.append(m.group("text"))
                continue
            self._inline_text("".join(run))
            run = []
            self._voice_tag(voice)
        run.append(seg[pos:])
        self._inline_text("".join(run))

    def _voice_tag(self, voice: str) -> None:
        self._out.append(VoiceSwitch(voice or None))
        # The tag separates words like a space ("up.[voice:x]Rooms" is two words) ...
        self._space = True
        self._ctx = " "
        # ... and closes the text before it like the end of the text: a line break after it inserts
        # no period (it would land after the switch, at the start of the new voice's text).
        self._line_content = False
        self._last_sig = ""

    def _inline_text(self, seg: str) -> None:
        """Process line body without tags or links (those are already resolved)."""
        if not seg:
            return
        if "_" in seg:
            seg = _UNDERSCORES.sub(self._underscore, seg)
        self._ctx = seg[-1] if seg else self._ctx
        seg = seg.translate(_ASCII_DROP)
        if not seg.isascii():
            seg = _NON_ASCII.sub(_drop_nonascii, seg)
        self._emit(seg)

    def _underscore(self, m: re.Match[str]) -> str:
        s = m.string
        before = s[m.start() - 1] if m.start() > 0 else self._ctx
        after = s[m.end()] if m.end() < len(s) else ""
        return " " if before.isalnum() and after.isalnum() else ""

    def _emit(self, text: str) -> None:
        """Append text, collapsing whitespace (a space is only written before the next word)."""
        if not text:
            return
        words = text.split()
        if not words:
            self._space = True
            return
        out = self._out
        if text[0].isspace():
            self._space = True
        for w in words:
            if self._space and self._any_out:
                out.append(" ")
            out.append(w)
            self._any_out = True
            self._space = True
        self._space = text[-1].isspace()
        self._line_content = True
        for w in reversed(words):  # the line's last char that is not a closing quote/bracket
            sig = w.rstrip(CLOSERS)
            if sig:
                self._last_sig = sig[-1]
                break


def _text_only(parts: list[str | VoiceSwitch]) -> str:
    return "".join(p for p in parts if isinstance(p, str))


def prepare_text(text: str) -> str:
    """Whole-text convenience: ``TextPreparer().feed(text) + finish()`` (voice tags dropped)."""
    p = TextPreparer()
    return p.feed(text) + p.finish()


def prepare_parts(text: str) -> list[str | VoiceSwitch]:
    """Whole-text convenience: ``feed_parts(text) + finish_parts()``, adjacent strings joined."""
    p = TextPreparer()
    parts = p.feed_parts(text) + p.finish_parts()
    return _join_parts(parts)


def _join_parts(parts: list[str | VoiceSwitch]) -> list[str | VoiceSwitch]:
    out: list[str | VoiceSwitch] = []
    for part in parts:
        if isinstance(part, str) and out and isinstance(out[-1], str):
            out[-1] += part
        else:
            out.append(part)
    return out

"""Where a chunk may end: the cutting rules of the semantic chunker, on spoken text.

:func:`classify_cut` says how strong a cut before ``buf[c]`` is (sentence end, clause, before a
conjunction, a bare word boundary, or no cut at all) and whether it is *protected*: allowed only
when nothing better is left (after a title or initial, inside a phrase). The chunker ranks the
candidates; this module only knows the language.

Phrases are kept whole by protection, not by a part-of-speech tagger (none that fits a streaming
engine on a budget of microseconds per word): a cut right after an article, determiner, possessive
or preposition ("on the | table", "drawn in | faded ink") and a cut between a known adjective and
the next word ("faded | ink") are protected word cuts; a conjunction right after an adjective
("a dark | and stormy night") is demoted to a protected word cut, so it never separates
an adjective or article from its noun.
"""

from __future__ import annotations

import bisect
import re

from actors.text.plan import CLAUSE, CONJ, SENTENCE, WORD
from actors.text.punctuation import CLOSERS, DASHES, OPENERS, SENTENCE_END

__all__ = ["CONJUNCTIONS", "CUT_POINTS", "NO_BREAK_ABBREVIATIONS", "SHORT_QUOTE_CHARS", "QuoteSpans", "classify_cut"]

CONJUNCTIONS = frozenset(
    {"and", "but", "or", "as", "while", "when", "because", "until", "although", "where", "which", "though", "then"}
)
# Conjunctions that join words of one phrase as readily as clauses ("dark and stormy").
_PHRASE_CONJUNCTIONS = frozenset({"and", "or", "but"})
# Abbreviations after which a period never ends a sentence and no cut is made ("Dr. | O'Neil").
# The normalizer expands most of them before the chunker sees the text; these stay for the ones it
# leaves (an unknown context, a language without rules yet).
NO_BREAK_ABBREVIATIONS = frozenset(
    {
        # titles
        "mr", "mrs", "ms", "mx", "dr", "st", "prof", "sr", "jr", "rev", "hon",
        "capt", "cpt", "gen", "lt", "col", "sgt", "maj", "cmdr", "mt", "ft",
        # Latin and friends
        "vs", "cf", "e.g", "i.e",
        # months
        "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    }
)  # fmt: skip
# Words that want the word after them: a cut right after one tears a phrase ("the | sword").
PHRASE_OPENERS = frozenset(
    {
        # articles, determiners, possessives, numbers-as-determiners
        "a", "an", "the", "this", "that", "these", "those", "my", "your", "his", "her", "its", "our",
        "their", "some", "any", "every", "each", "no", "another", "such", "what", "whose", "both",
        "few", "many", "several", "all", "one", "two", "three",
        # prepositions
        "of", "in", "on", "at", "to", "by", "for", "with", "from", "into", "onto", "upon", "over",
        "under", "across", "through", "toward", "towards", "against", "among", "between", "beneath",
        "behind", "beside", "beyond", "within", "without", "along", "around", "near", "about",
        # auxiliaries and infinitive markers that lean on the next word
        "is", "was", "were", "are", "be", "been", "has", "had", "have", "will", "would", "could",
        "should", "can", "must", "might", "may", "not",
    }
)  # fmt: skip
# Adjectives common in narration, and endings that mark most others. A word that ends like an
# adjective ("faded", "ancient", "glorious") but is a noun or verb only costs a cut its rank among
# bare word cuts; the chunker still takes it when nothing else is left.
_ADJECTIVE_WORDS = """old new cold warm hot dark dim bright pale black white red green blue grey gray gold golden
    silver long short wide narrow small big large tall great deep high low thick thin heavy light
    broad vast tiny huge grim quiet loud soft hard wet dry rough smooth sharp dull faint strange
    ancient cracked faded rusty dusty stone iron wooden broken hollow empty full bare sacred holy
    foul fair dead young wild stormy misty shadowy distant secret hidden silent eerie sudden slow
    swift fierce proud bitter sweet brave cruel"""
_ADJECTIVES = frozenset(_ADJECTIVE_WORDS.split())
_ADJECTIVE_ENDINGS = ("ous", "ful", "less", "ive", "ible", "able", "ish")

SHORT_QUOTE_CHARS = 60

CUT_POINTS = re.compile(r"(?=\s)|(?<=[—–-])")  # where a cut can be: before a space, after a dash
_QUOTE_CHARS = re.compile(r"[\"“”«»„]")
_NEXT_WORD = re.compile(r"[^\W\d_]{1,9}")
_WORD_CHARS = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
_CLAUSE_MARKS = ",;:"


def _no_break_token(core: str) -> bool:
    """Is ``core`` (a token ending in '.') a title/abbreviation/initial that must stay attached?"""
    base = core.lstrip(OPENERS)[:-1]
    if len(base) == 1 and base.isalpha() and base.isupper():
        return True  # an initial: "J. R. Tolkien"
    return base.lower() in NO_BREAK_ABBREVIATIONS


def _is_adjective(word: str) -> bool:
    w = word.lower()
    if w in _ADJECTIVES:
        return True
    return len(w) > 4 and w.endswith(_ADJECTIVE_ENDINGS)


def _bare_word(tok: str) -> str:
    """``tok`` when it is a plain word (no punctuation around it), else ""."""
    m = _WORD_CHARS.fullmatch(tok)
    return m.group() if m else ""


def classify_cut(buf: str, c: int, final: bool) -> tuple[int, bool] | None:
    """Strength of a cut before ``buf[c]`` (-1: not a cut) and whether it is protected.

    None: the answer needs text that has not arrived yet (the next word).
    """
    n = len(buf)
    prev = buf[c - 1]
    if prev.isspace():
        return (-1, False)
    nxt = buf[c]
    if not nxt.isspace():
        # Only an unspaced dash is a cut not at a space: "1204—or", "word--word" (not "—)":
        # the closer stays with the dash, the cut comes after it).
        if nxt in CLOSERS:
            return (-1, False)
        if prev == "—" or (prev == "–" and not (buf[c - 2 : c - 1].isdigit() and nxt.isdigit())):
            # Only before a word (or its opening quote): "—…" is one mark, and a cut inside it
            # would leave a chunk of punctuation alone, nothing to say.
            return (CLAUSE, False) if nxt.isalnum() or nxt in OPENERS else (-1, False)
        if prev == "-" and c >= 2 and buf[c - 2] == "-" and nxt != "-":
            return (CLAUSE, False)
        return (-1, False)
    # Token before the cut (bounded look-behind: abbreviations are short).
    lo = max(0, c - 40)
    sp = buf.rfind(" ", lo, c)
    tok_start = sp + 1 if sp >= 0 else lo
    tok = buf[tok_start:c]
    core = tok.rstrip(CLOSERS)
    # The next word (bounded look-ahead).
    k = c
    while k < n and buf[k].isspace():
        k += 1
    while k < n and buf[k] in OPENERS:
        k += 1
    if k >= n and not final:
        return None
    first = buf[k] if k < n else ""
    strength = WORD
    last = core[-1:] if core else ""
    if last and last in SENTENCE_END:
        if last == "." and not core.endswith(".."):
            if _no_break_token(core):
                return (WORD, True)
            strength = WORD if first.islower() else SENTENCE
        else:
            strength = CLAUSE if first.islower() else SENTENCE
    elif (last and last in _CLAUSE_MARKS) or (last and last in DASHES) or core == "-" or core.endswith("--"):
        strength = CLAUSE
    if strength > WORD:
        return (strength, False)
    before = _bare_word(tok)
    j = c
    while j < n and buf[j].isspace():
        j += 1
    m = _NEXT_WORD.match(buf, j)
    if m:
        e = m.end()
        if e >= n and not final:
            return None
        if (e >= n or not buf[e].isalnum()) and m.group().lower() in CONJUNCTIONS:
            if m.group().lower() in _PHRASE_CONJUNCTIONS and before and _is_adjective(before):
                return (WORD, True)  # "a dark | and stormy night": the conjunction joins two adjectives
            return (CONJ, False)
    if before and (before.lower() in PHRASE_OPENERS or _is_adjective(before)):
        return (WORD, True)  # "on the | table", "in faded | ink": keep the phrase whole
    return (WORD, False)



class QuoteSpans:
    """Quotation spans in a growing buffer: a cut inside a short one (≤ ``SHORT_QUOTE_CHARS``) is
    protected. Curly/guillemet quotes pair by type; a straight quote opens or closes by context (a
    space before it and none after opens it). A straight quote inside a curly quotation is nested
    and ignored."""

    def __init__(self) -> None:
        self._open: list[int] = []  # opening positions
        self._close: list[int] = []  # closing position, -1 still open, -2 abandoned
        self._kind: list[str] = []
        self._scan = 0  # next buffer position to look at

    def advance(self, buf: str, final: bool) -> None:
        """Take in the buffer's new text (it only ever grows, apart from :meth:`trim`)."""
        n = len(buf)
        pos = self._scan
        qopen, qclose, qkind = self._open, self._close, self._kind
        for m in _QUOTE_CHARS.finditer(buf, pos):
            p = m.start()
            ch = buf[p]
            is_open = bool(qclose) and qclose[-1] == -1
            kind = qkind[-1] if is_open else ""
            if ch == '"':
                if p + 1 >= n and not final:
                    pos = p  # context not known yet
                    break
                prev = buf[p - 1] if p > 0 else " "
                nxt = buf[p + 1] if p + 1 < n else " "
                opening = (prev.isspace() or prev in OPENERS or prev in DASHES) and not nxt.isspace()
                closing = not opening and not prev.isspace()
                if kind and kind != '"':
                    opening = closing = False  # nested in a curly quotation
            else:
                opening = ch in "“«„"
                closing = (ch == "”" and kind in "“„") or (ch == "»" and kind == "«")
                closing = closing and is_open
            if opening:
                if is_open:
                    qclose[-1] = -2  # an unclosed quote was not a quotation after all
                qopen.append(p)
                qclose.append(-1)
                qkind.append(ch)
            elif closing and is_open:
                qclose[-1] = p
            pos = p + 1
        else:
            pos = n
        self._scan = pos

    def protects(self, c: int, final: bool) -> bool | None:
        """Is a cut at ``c`` inside a short quotation? None: not known yet."""
        i = bisect.bisect_left(self._open, c) - 1
        if i < 0:
            return False
        o, e = self._open[i], self._close[i]
        if e >= 0:
            return c <= e and e - o + 1 <= SHORT_QUOTE_CHARS
        if e == -2 or final or self._scan - o + 1 > SHORT_QUOTE_CHARS:
            return False
        return None

    def trim(self, cut: int) -> None:
        """The buffer lost its first ``cut`` characters."""
        self._scan -= cut
        # Spans closed before the trim point (or abandoned) protect nothing any more: for a later cut
        # "no span" and "a span that ended before it" mean the same.
        keep = 0
        while keep < len(self._open) and (0 <= self._close[keep] < cut or self._close[keep] == -2):
            keep += 1
        self._open = [o - cut for o in self._open[keep:]]
        self._kind = self._kind[keep:]
        self._close = [e - cut if e >= 0 else e for e in self._close[keep:]]

"""Narration text normalization: written forms → what a person reading aloud says.

Piper reads "Henry VIII" as "Henry roman eight", "$3,450" as "dollar three thousand …", "10 ft" as
"ten f t", and a title's period ("Dr. Smith") ends a sentence inside a name. The
:class:`Normalizer` rewrites such tokens before chunking (so durations are estimated on what will be
spoken) and so before every engine (Piper and XTTS get the same words; XTTS's own expansion then
finds no digits or abbreviations left to expand again).

It streams like the rest of text preparation: :meth:`Normalizer.feed` takes prepared text in any
pieces (LLM tokens) and returns :class:`Spoken` pieces, each the ``source`` characters and the
``text`` said for them. A token is rewritten from itself, the two tokens before it and the one after
it, so the normalizer holds back one whitespace-separated token and the result is the same however
the input was split ("1" + "492" is expanded once, as "fourteen ninety-two"). Rewritten text holds
no digits and no rule matches it again: normalizing spoken text changes nothing.

Numbers, ordinals, years and decimals come from ``num2words``; the rules below are skald's own
where no library fits (tabletop notation, context for Roman numerals and titles, units, coins).
English only for now: :data:`LANGUAGES` lists the rule sets, and another language plugs in as
another rules function in ``LANGUAGES`` (any other language gets the lexicon only, its engine's own expansion
doing the rest).

English rules, each tested (``tests/test_normalize.py``):

* numbers: "1,492" → "one thousand four hundred and ninety-two", "3.14" → "three point one four",
  "-5" → "minus five", "+2" → "plus two", "3rd" → "third", a bare 1000-2099 → a year ("1492" →
  "fourteen ninety-two", "1920s" → "nineteen twenties"), "3–5" → "three to five", "1/2" → "one
  half", "50%" → "fifty percent";
* money: "$3,450" → "three thousand four hundred and fifty dollars", "$3.50", "£5", "€20",
  coins "15 gp" / "15gp" → "fifteen gold pieces" (sp, cp, ep, pp);
* times and dates: "10:30" → "ten thirty", "3 pm" → "three P M", "2024-03-12" → "March twelfth,
  twenty twenty-four", "March 12" → "March twelfth", "12 March" → "the twelfth of March", "31/12/2024"
  (a day over 12 makes it unambiguous) and "12/03/2024" (ambiguous: read as its numbers, no "slash");
* units after a number: "10 ft" → "ten feet", "1 ft" → "one foot", lb, oz, mi, km, m, cm, mm,
  kg, mph, yd, hr, min, sec, "°";
* Roman numerals only in context: after a capitalized name "Henry VIII" → "Henry the Eighth",
  after "Chapter", "Book", "Act", "War" … "Chapter IV" → "Chapter Four". The pronoun "I" is never a
  regnal numeral, and numerals above C (so "MIX", "MD", "DC") never are;
* abbreviations and titles, whose period then no longer ends a Piper sentence: Mr., Mrs., Ms.,
  Dr., Capt., Lt., Gen., Prof., Sgt., Col., Rev., Mt., "St." as Saint before a name and Street
  after one, "Dr." as Drive after one, vs., etc., e.g., i.e., approx., Jr., Sr. A period that also
  ends the sentence ("… swords, etc. Then") stays;
* tabletop notation: "2d6" → "two d six", "d20" → "d twenty", "1d8+3" → "one d eight plus three",
  "AC 15" → "armor class fifteen", "DC 12" → "difficulty class twelve", "HP" next to a number →
  "hit points", "5e" → "fifth edition";
* a :class:`Lexicon` of a campaign's own words ("Ærenfell" → "Air-en-fell"), loaded from a TOML
  file at run time and reloaded when the file changes.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from num2words import num2words

from actors.text.punctuation import CLOSERS, OPENERS

__all__ = ["LANGUAGES", "Lexicon", "Normalizer", "Spoken", "normalize", "normalize_pieces"]


@dataclass(frozen=True)
class Spoken:
    """A piece of prepared text (``source``) and what is said for it (``text``; equal if unchanged)."""

    source: str
    text: str
    # No cut before this piece (at the whitespace before it: "10 | feet", "Doctor | Smith") or inside it.
    glue: bool = False


class Lexicon:
    """A campaign's own words and how to say them, from a TOML file of ``"written" = "spoken"``.

    Keys are whole words, matched as written first and then in lowercase (a lowercase key matches
    any capitalization). Entries may sit at the top level or under a ``[words]`` table. :meth:`get`
    reloads the file when its modification time changes, so a GM can edit it while skald runs.
    """

    def __init__(self, words: dict[str, str] | None = None, path: str | Path | None = None) -> None:
        self._words: dict[str, str] = dict(words or {})
        self._path = Path(path) if path else None
        self._mtime = -1.0
        if self._path is not None:
            self._load()

    @classmethod
    def load(cls, path: str | Path) -> Lexicon:
        """Read ``path`` now (errors name the file); later edits are picked up by :meth:`get`."""
        return cls(path=path)

    def _load(self) -> None:
        assert self._path is not None
        try:
            mtime = self._path.stat().st_mtime
            if mtime == self._mtime:
                return
            data = tomllib.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"lexicon {self._path}: {e}") from e
        table = data.get("words", data)
        words: dict[str, str] = {}
        for key, value in table.items():
            if not isinstance(value, str) or not key or any(ch.isspace() for ch in key):
                raise ValueError(f"lexicon {self._path}: {key!r} must be one word mapped to a string")
            words[key] = value
        self._words = words
        self._mtime = mtime

    def reload(self) -> None:
        """Re-read the file if it changed since it was last read."""
        if self._path is not None:
            self._load()

    def get(self, word: str) -> str | None:
        """How ``word`` is said, or None when the lexicon does not know it."""
        hit = self._words.get(word)
        if hit is None:
            hit = self._words.get(word.lower())
        return hit

    def __len__(self) -> int:
        return len(self._words)


# -- English rules ---------------------------------------------------------------------------

_TITLES = {
    "mr": "Mister", "mrs": "Missus", "ms": "Miz", "capt": "Captain", "cpt": "Captain", "lt": "Lieutenant",
    "gen": "General", "prof": "Professor", "sgt": "Sergeant", "col": "Colonel", "rev": "Reverend",
    "mt": "Mount", "maj": "Major", "cmdr": "Commander", "hon": "Honorable",
}  # fmt: skip
# Abbreviations that are not titles: their period may also end the sentence.
_ABBREVIATIONS = {
    "vs": "versus", "etc": "et cetera", "e.g": "for example", "i.e": "that is", "approx": "approximately",
    "jr": "Junior", "sr": "Senior", "cf": "compare", "ca": "circa",
}  # fmt: skip
# Abbreviations that never end a sentence (what follows continues it).
_INLINE_ABBREVIATIONS = frozenset({"vs", "e.g", "i.e", "cf", "ca", "approx"})
_UNITS = {
    "ft": ("foot", "feet"), "yd": ("yard", "yards"), "mi": ("mile", "miles"), "km": ("kilometer", "kilometers"),
    "m": ("meter", "meters"), "cm": ("centimeter", "centimeters"), "mm": ("millimeter", "millimeters"),
    "kg": ("kilogram", "kilograms"), "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"), "mph": ("mile per hour", "miles per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"), "hr": ("hour", "hours"), "hrs": ("hour", "hours"),
    "min": ("minute", "minutes"), "mins": ("minute", "minutes"), "sec": ("second", "seconds"),
    "secs": ("second", "seconds"), "°": ("degree", "degrees"),
    "gp": ("gold piece", "gold pieces"), "sp": ("silver piece", "silver pieces"),
    "cp": ("copper piece", "copper pieces"), "ep": ("electrum piece", "electrum pieces"),
    "pp": ("platinum piece", "platinum pieces"),
}  # fmt: skip
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
             "€": ("euro", "euros", "cent", "cents")}  # fmt: skip
_MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
]  # fmt: skip
_MONTH_NAMES = {m.lower(): m for m in _MONTHS} | {
    m.lower()[:3]: m for m in _MONTHS if m != "May"
} | {"sept": "September"}  # fmt: skip
# Words after which a Roman numeral is a plain number ("Chapter IV" → "Chapter Four").
_COUNTED_WORDS = (
    "chapter book part volume vol act scene section canto appendix phase stage level tier circle "
    "episode war season round"
)
_COUNTED = frozenset(_COUNTED_WORDS.split())
# Capitalized words that are not names: no regnal numeral follows them.
_NOT_NAME_WORDS = (
    "the a an and but or if then when as at in on of to by for with from i he she it we they you "
    "his her its our their my your this that these those there here what who which"
)
# ... nor are the titles the rules write out: "Dr. VIII" stays "Doctor VIII" when normalized again.
# ... nor are the titles and numbers the rules write out: "Dr. VIII" stays "Doctor VIII" and
# "Henry the Eighth VIII" stays as it is when normalized again.
_NOT_NAMES = (
    frozenset(_NOT_NAME_WORDS.split())
    | {t.lower() for t in _TITLES.values()}
    | {"doctor", "saint"}
    | {w for i in range(101) for w in num2words(i, to="ordinal").split("-") + num2words(i).split("-")}
)
_FRACTIONS = {2: ("half", "halves"), 4: ("quarter", "quarters")}
_ROMAN = re.compile(r"(?=[IVXLC])(C?)(XC|XL|L?X{0,3})(IX|IV|V?I{0,3})")
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}
_TRAIL_CHARS = ".,;:!?…" + CLOSERS
_INT = r"\d{1,3}(?:,\d{3})+|\d+"
_NUM = rf"(?:{_INT})(?:\.\d+)?"
_RE_NUMBER = re.compile(rf"({_INT})(\.\d+)?")
_RE_SIGNED = re.compile(rf"([+\-−])({_NUM})")
_RE_ORDINAL = re.compile(r"(\d+)(st|nd|rd|th)", re.IGNORECASE)
_RE_DECADE = re.compile(r"(\d{2}|1\d{3}|20\d{2})['’]?s")
_RE_MONEY = re.compile(rf"([$£€])({_INT})(\.\d{{1,2}})?")
_RE_PERCENT = re.compile(rf"({_NUM})%")
_RE_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_RE_CLOCK = re.compile(r"(\d{1,2})(?::(\d{2}))?([ap])\.?m\.?", re.IGNORECASE)
_RE_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_RE_SLASH_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})")
_RE_FRACTION = re.compile(r"(\d{1,3})/(\d{1,3})")
_RE_RANGE = re.compile(rf"({_NUM})([–\-])({_NUM})(%?)")
_RE_DICE = re.compile(r"(\d{0,3})[dD](\d{1,3}|%)(?:([+\-−])(\d{1,3}))?")
_RE_EDITION = re.compile(r"(\d(?:\.\d)?)e")
_RE_NUM_UNIT = re.compile(rf"({_NUM})({'|'.join(sorted(map(re.escape, _UNITS), key=len, reverse=True))})")
_RE_BARE_NUMBER = re.compile(_NUM)
_SPLIT_DASHES = re.compile(r"(—|--+|(?<!\d)–|–(?!\d))")


def _plain(words: str) -> str:
    """num2words output without its commas ("three thousand, four hundred" would pause and cut)."""
    return words.replace(",", "")


def _cardinal(digits: str) -> str:
    value = int(digits.replace(",", ""))
    if len(digits) > 1 and digits[0] == "0":
        return " ".join(_plain(num2words(int(d))) for d in digits)  # "007": read digit by digit
    if value >= 10**15:
        return " ".join(_plain(num2words(int(d))) for d in digits if d.isdigit())
    return _plain(num2words(value))


def _number(int_part: str, frac: str | None = None) -> str:
    words = _cardinal(int_part)
    if frac:
        words += " point " + " ".join(_plain(num2words(int(d))) for d in frac.lstrip("."))
    return words


def _year(value: int) -> str:
    return _plain(num2words(value, to="year")).replace("oh-", "oh ")


def _ordinal(value: int) -> str:
    return _plain(num2words(value, to="ordinal"))


def _is_one(int_part: str, frac: str | None) -> bool:
    return int_part == "1" and not (frac and frac.strip(".0"))


def _numeric_value(core: str) -> tuple[str, str | None] | None:
    m = _RE_NUMBER.fullmatch(core)
    return (m.group(1), m.group(2)) if m else None


def _roman_value(s: str) -> int | None:
    if not s or not _ROMAN.fullmatch(s):
        return None
    total = 0
    for i, ch in enumerate(s):
        v = _ROMAN_VALUES[ch]
        total += -v if i + 1 < len(s) and _ROMAN_VALUES[s[i + 1]] > v else v
    return total if 0 < total <= 100 else None


def _is_name(word: str) -> bool:
    return word[:1].isupper() and word[1:].islower() and word.isalpha() and word.lower() not in _NOT_NAMES


def _pluralize(words: str) -> str:
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return f"{head} {last}" if head else last


@dataclass
class _Token:
    lead: str
    core: str
    trail: str


def _split(tok: str) -> _Token:
    i = 0
    while i < len(tok) and tok[i] in OPENERS:
        i += 1
    j = len(tok)
    while j > i and tok[j - 1] in _TRAIL_CHARS:
        j -= 1
    core = tok[i:j]
    # "a.m." and "e.g." keep their inner periods: the core is what is left of the trail's first ".".
    return _Token(tok[:i], core, tok[j:])


_Said = tuple[str, int, str]
#: One language's rules: ``(prev2, prev1, core, trail, next1)`` → (spoken, trail used, glue) or None.
_Rules = Callable[[str, str, str, str, str], _Said | None]


def _en_word(prev2: str, prev1: str, core: str, trail: str, nxt: str) -> _Said | None:
    """The English rules: (spoken, trail characters consumed, glue) or None (said as written).

    Glue "prev" / "next": the word belongs with the one before / after it ("10 | feet", "Doctor |
    Smith"), so the chunker never cuts between them.
    """
    low = core.lower()
    dot = trail.startswith(".")
    next_cap = nxt[:1].isupper()
    p1 = _split(prev1)
    pcore = p1.core
    prev_num = _numeric_value(pcore) is not None and not p1.trail
    # Abbreviations and titles (the period is theirs; it stays only where it also ends a sentence).
    # Only with their period: "Mr Smith" is left to the engine (after a rewrite the next word may
    # be capitalized where it was not, and a second pass would then read the title differently).
    if low in ("st", "dr") and dot:
        if _is_name(pcore) and not p1.trail:
            spoken = "Street" if low == "st" else "Drive"  # "Main St." / "Elm Dr.": after a name
            return (spoken + ("." if next_cap or not nxt else ""), 1, "")
        return ("Saint" if low == "st" else "Doctor", 1, "next")  # "St. Mary", "Dr. Smith"
    if low in _TITLES and dot:
        return (_TITLES[low], 1, "next")
    if dot and low in _MONTH_NAMES and low != _MONTH_NAMES[low].lower():  # "Jan. 5th" → "January fifth"
        ncore = _split(nxt).core
        if _numeric_value(ncore) is not None or _RE_ORDINAL.fullmatch(ncore):
            return (_MONTH_NAMES[low], 1, "next")
    if low in _ABBREVIATIONS and dot:
        ends = low not in _INLINE_ABBREVIATIONS and (next_cap or not nxt) and len(trail) == 1
        return (_ABBREVIATIONS[low] + ("." if ends else ""), 1, "")
    # Tabletop notation.
    m = _RE_DICE.fullmatch(core)
    if m and (m.group(1) or core[0] in "dD"):
        count, sides, sign, bonus = m.groups()
        words = (_cardinal(count) + " " if count else "") + "d " + ("percent" if sides == "%" else _cardinal(sides))
        if sign:
            words += (" plus " if sign == "+" else " minus ") + _cardinal(bonus)
        return (words, 0, "")
    if core in ("AC", "DC") and _numeric_value(_split(nxt).core) is not None:
        return ("armor class" if core == "AC" else "difficulty class", 0, "next")
    if low == "hp" and (prev_num or _numeric_value(_split(nxt).core) is not None):
        return ("hit points", 0, "prev" if prev_num else "next")
    m = _RE_EDITION.fullmatch(core)
    if m:
        whole, _, tenth = m.group(1).partition(".")
        return ((_number(whole, "." + tenth) if tenth else _ordinal(int(whole))) + " edition", 0, "")
    # Units and coins after a number ("10 ft", "15 gp"), or glued to it ("10ft").
    unit = _UNITS.get(low) or _UNITS.get(core)
    if unit and prev_num and (low != "m" or core == "m"):
        nv = _numeric_value(pcore)
        assert nv is not None
        # "a 10 ft pole": a number and unit before a noun is said in the singular ("a ten foot pole").
        single = _is_one(*nv) or _split(prev2).core.lower() in ("a", "an")
        return (unit[0] if single else unit[1], 1 if dot and nxt and not next_cap else 0, "prev")
    if low in ("am", "pm", "a.m", "p.m") and (prev_num or _RE_TIME.fullmatch(pcore)):
        ends = dot and (next_cap or not nxt) and "." in core
        return (low[0].upper() + " M" + ("." if ends else ""), 1 if dot else 0, "prev")
    m = _RE_NUM_UNIT.fullmatch(core)
    if m and not _RE_BARE_NUMBER.fullmatch(core):
        num = _numeric_value(m.group(1))
        if num is not None:
            u = _UNITS[m.group(2)]
            single = _is_one(*num) or pcore.lower() in ("a", "an")
            return (_number(*num) + " " + (u[0] if single else u[1]), 0, "")
    # Money, percentages, times, dates, fractions, ranges.
    m = _RE_MONEY.fullmatch(core)
    if m:
        sym, whole, cents = m.groups()
        one, many, cent, cents_word = _CURRENCY[sym]
        words = _cardinal(whole) + " " + (one if whole == "1" else many)
        if cents and int(cents[1:].ljust(2, "0")):
            c = int(cents[1:].ljust(2, "0"))
            words += " and " + _cardinal(str(c)) + " " + (cent if c == 1 else cents_word)
        return (words, 0, "")
    m = _RE_PERCENT.fullmatch(core)
    if m:
        num = _numeric_value(m.group(1))
        if num is not None:
            return (_number(*num) + " percent", 0, "")
    m = _RE_CLOCK.fullmatch(core)
    if m:
        h, mins, ap = m.groups()
        words = _cardinal(h) + ("" if not mins or mins == "00" else " " + _minutes(mins))
        return (words + " " + ap.upper() + " M", 0, "")
    m = _RE_TIME.fullmatch(core)
    if m and int(m.group(1)) < 24 and int(m.group(2)) < 60:
        h, mins = m.groups()
        if mins == "00":
            clock = _split(nxt).core.lower() in ("am", "pm", "a.m", "p.m")
            return (_cardinal(h) + ("" if clock else " o'clock"), 0, "")
        return (_cardinal(h) + " " + _minutes(mins), 0, "")
    m = _RE_ISO_DATE.fullmatch(core)
    if m and 1 <= int(m.group(2)) <= 12 and 1 <= int(m.group(3)) <= 31:
        y, mo, d = (int(g) for g in m.groups())
        return (f"{_MONTHS[mo - 1]} {_ordinal(d)}, {_year(y)}", 0, "")
    m = _RE_SLASH_DATE.fullmatch(core)
    if m:
        a, b, y = (int(g) for g in m.groups())
        year = _year(y) if len(m.group(3)) == 4 else _cardinal(m.group(3))
        if a > 12 and 1 <= b <= 12 and a <= 31:
            return (f"the {_ordinal(a)} of {_MONTHS[b - 1]}, {year}", 0, "")
        if b > 12 and 1 <= a <= 12 and b <= 31:
            return (f"{_MONTHS[a - 1]} {_ordinal(b)}, {year}", 0, "")
        return (f"{_cardinal(m.group(1).lstrip('0') or '0')} {_minutes(m.group(2).zfill(2))} {year}", 0, "")
    m = _RE_FRACTION.fullmatch(core)
    if m and int(m.group(2)) > 0:
        top, bottom = int(m.group(1)), int(m.group(2))
        if bottom == 1 or bottom > 16:
            return (f"{_cardinal(m.group(1))} over {_cardinal(m.group(2))}", 0, "")
        one, many = _FRACTIONS.get(bottom, (_ordinal(bottom), _pluralize(_ordinal(bottom))))
        return (f"{_cardinal(m.group(1))} {one if top == 1 else many}", 0, "")
    m = _RE_RANGE.fullmatch(core)
    if m:
        lo, _, hi, pct = m.groups()
        return (f"{_plain_number(lo)} to {_plain_number(hi)}" + (" percent" if pct else ""), 0, "")
    m = _RE_SIGNED.fullmatch(core)
    if m:
        num = _numeric_value(m.group(2))
        if num is not None:
            return (("plus " if m.group(1) == "+" else "minus ") + _number(*num), 0, "")
    m = _RE_ORDINAL.fullmatch(core)
    if m:
        return (_ordinal(int(m.group(1))), 0, "")
    m = _RE_DECADE.fullmatch(core)
    if m:
        decade = m.group(1)
        return (_pluralize(_year(int(decade)) if len(decade) == 4 else _cardinal(decade)), 0, "")
    # Plain numbers: dates with a month name, years, cardinals, decimals.
    num = _numeric_value(core)
    if num is not None:
        int_part, frac = num
        if not frac and "," not in int_part and len(int_part) <= 2 and int(int_part) in range(1, 32):
            if _MONTH_NAMES.get(pcore.lower()):
                return (_ordinal(int(int_part)), 0, "prev")
            if _MONTH_NAMES.get(_split(nxt).core.lower().rstrip(".")):
                return (f"the {_ordinal(int(int_part))} of", 0, "next")
        return (_plain_number(core) if not frac else _number(int_part, frac), 0, "")
    # Roman numerals, only in context.
    value = _roman_value(core)
    if value is not None:
        if pcore.lower() in _COUNTED:
            return (_cardinal(str(value)).title(), 0, "prev")
        if core != "I" and _is_name(pcore) and not p1.trail:
            return ("the " + _ordinal(value).title(), 0, "prev")
    if core == "&":
        return ("and", 0, "")
    return None


def _minutes(mins: str) -> str:
    return ("oh " + _cardinal(mins[1])) if mins[0] == "0" else _cardinal(mins)


def _plain_number(core: str) -> str:
    """A bare number: a year when it looks like one (1000-2099 without a comma), else a cardinal."""
    num = _numeric_value(core)
    assert num is not None
    int_part, frac = num
    if not frac and len(int_part) == 4 and int_part[0] in "12" and 1000 <= int(int_part) <= 2099:
        return _year(int(int_part))
    return _number(int_part, frac)


LANGUAGES: dict[str, _Rules] = {"en": _en_word}

# Alphabetic words some English rule looks at; any other alphabetic word is said as written.
_KEYWORDS = frozenset(
    {"st", "dr", "ac", "dc", "hp", "am", "pm", *_TITLES, *_ABBREVIATIONS, *_UNITS, *_MONTH_NAMES}
)
_ROMAN_CHARS = frozenset(_ROMAN_VALUES)

_TOKEN = re.compile(r"\S+")


class Normalizer:
    """Streaming normalizer for one text at a time (see the module docstring).

    ``feed()`` returns the :class:`Spoken` pieces settled now (it holds back the last token and the
    whitespace before it); ``finish()`` returns the rest and resets for a new text. Concatenating
    the ``source`` of every piece gives back the input exactly.
    """

    def __init__(self, language: str = "en", lexicon: Lexicon | None = None) -> None:
        self._rules = LANGUAGES.get(language.split("-")[0].lower())
        self._lexicon = lexicon
        self._reset()

    def _reset(self) -> None:
        self._buf = ""
        self._prev = ("", "")  # the two tokens before the buffer (raw, punctuation and all)
        self._glue_next = False  # the last token said glue: no cut before the next one

    @property
    def pending(self) -> str:
        """Text accepted but not normalized yet (the held-back token)."""
        return self._buf

    def feed(self, piece: str) -> list[Spoken]:
        """Accept prepared text; return the pieces whose spoken form is settled now."""
        self._buf += piece
        return self._process(final=False)

    def finish(self) -> list[Spoken]:
        """End of text: return everything held back, then reset."""
        out = self._process(final=True)
        self._reset()
        return out

    def _process(self, final: bool) -> list[Spoken]:
        buf = self._buf
        out: list[Spoken] = []
        toks = [(m.start(), m.end()) for m in _TOKEN.finditer(buf)]
        complete = len(toks) if final else sum(1 for _, e in toks if e < len(buf))
        pos = 0  # everything before pos is passed on
        for i in range(complete):
            s, e = toks[i]
            tok = buf[s:e]
            has_next = i + 1 < complete
            # A word no rule looks at is said as written whatever follows; any other waits for the
            # next word to be complete (its rule may look at it: "AC 15", "St. Mary").
            if not (final or has_next or self._plain(tok)):
                break
            nxt = buf[toks[i + 1][0] : toks[i + 1][1]] if has_next else ""
            if s > pos:
                out.append(Spoken(buf[pos:s], buf[pos:s]))
            pieces, glue_prev, glue_next = self._token(tok, nxt)
            if (glue_prev or self._glue_next) and pieces:
                p0 = pieces[0]
                pieces[0] = Spoken(p0.source, p0.text, glue=True)
            out += pieces
            self._glue_next = glue_next
            # The whitespace after a word goes out with it: the chunker needs it to see the word is
            # over. (Glue with the next word is marked on that word, see Spoken.glue.)
            ws_end = toks[i + 1][0] if i + 1 < len(toks) else len(buf)
            if ws_end > e:
                out.append(Spoken(buf[e:ws_end], buf[e:ws_end]))
            pos = ws_end
        if final and pos < len(buf):
            out.append(Spoken(buf[pos:], buf[pos:]))
            pos = len(buf)
        self._buf = buf[pos:]
        return out

    def _plain(self, tok: str) -> bool:
        """Is ``tok`` said as written whatever word follows it?"""
        if self._rules is None:
            return True
        parts = _SPLIT_DASHES.split(tok) if ("—" in tok or "–" in tok or "--" in tok) else [tok]
        core = _split(parts[-1]).core
        return not core or _plain_word(core)

    def _token(self, tok: str, nxt: str) -> tuple[list[Spoken], bool, bool]:
        """The pieces of one token, whether it is glued to the token before, and to the one after."""
        prev2, prev1 = self._prev
        self._prev = (prev1, tok)
        # Dashes glued between words are separators ("map—drawn"): each part is a word of its own.
        parts = _SPLIT_DASHES.split(tok) if ("—" in tok or "–" in tok or "--" in tok) else [tok]
        out: list[Spoken] = []
        glue_prev = glue_next = False
        for k, part in enumerate(parts):
            if not part:
                continue
            if k % 2:  # a dash
                out.append(Spoken(part, part))
                continue
            p1 = prev1 if k == 0 else parts[k - 2]
            n1 = nxt if k + 2 >= len(parts) else parts[k + 2]
            pieces, glue = self._word(prev2, p1, part, n1)
            out += pieces
            glue_prev = glue_prev or (k == 0 and glue == "prev")
            glue_next = k + 1 >= len(parts) and glue == "next"
        return out, glue_prev, glue_next

    def _word(self, prev2: str, prev1: str, tok: str, nxt: str) -> tuple[list[Spoken], str]:
        """The pieces of one word and its glue ("prev", "next" or "")."""
        t = _split(tok)
        spoken: _Said | None = None
        if self._lexicon is not None and t.core:
            said = self._lexicon.get(t.core)
            if said is not None:
                spoken = (said, 0, "")
        if spoken is None and self._rules is not None and t.core and not _plain_word(t.core):
            spoken = self._rules(prev2, prev1, t.core, t.trail, nxt)
        if spoken is None or spoken[0] == t.core + t.trail[: spoken[1]]:
            return [Spoken(tok, tok)], ""
        said, used, glue = spoken
        out = []
        if t.lead:
            out.append(Spoken(t.lead, t.lead))
        out.append(Spoken(t.core + t.trail[:used], said))
        if t.trail[used:]:
            out.append(Spoken(t.trail[used:], t.trail[used:]))
        return out, glue


def _plain_word(core: str) -> bool:
    """A word no rule can touch (most of them): skip the rules, it is said as written."""
    return core.isalpha() and core.lower() not in _KEYWORDS and not _ROMAN_CHARS.issuperset(core)


def normalize_pieces(text: str, language: str = "en", lexicon: Lexicon | None = None) -> list[Spoken]:
    """Whole-text convenience: ``feed(text) + finish()``."""
    n = Normalizer(language, lexicon)
    return n.feed(text) + n.finish()


def normalize(text: str, language: str = "en", lexicon: Lexicon | None = None) -> str:
    """The spoken form of ``text`` (prepared text: markdown already gone)."""
    return "".join(p.text for p in normalize_pieces(text, language, lexicon))

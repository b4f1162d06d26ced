"""Text preparation: markdown/emoji → speakable text, whole and streamed."""

from __future__ import annotations

import itertools
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.text.textprep import TextPreparer, prepare_text

# What the preparer removes letters from (documented in actors/textprep.py): voice tags, and the URL
# part of markdown links. A "[" that opens a tag never opens a link; a tag inside a URL goes with it.
TAG = r"\[[vV][oO][iI][cC][eE]:[A-Za-z0-9_.-]{0,64}\]"
TAG_OR_LINK = re.compile(rf"(?P<tag>{TAG})|!?(?!{TAG})\[(?P<text>[^\[\]\n]{{0,200}})\]\([^()\n]{{0,500}}\)")
FORBIDDEN = re.compile(r"[*#`\U0001F000-\U0001FAFF\u2600-\u27BF\uFE0F\u200D]")


def forbidden_symbol(text: str) -> str | None:
    """A markdown mark or pictograph left in ``text``. Alphanumerics in those ranges (the dingbat
    digits ❶..➓ are digits) must survive by the letters-and-digits rule, so they are exempt."""
    return next((m.group() for m in FORBIDDEN.finditer(text) if not m.group().isalnum()), None)


def alnum(text: str) -> str:
    """The letters and digits of a text, in order (what must survive preparation)."""
    return "".join(ch for ch in text if ch.isalnum())


def expected_alnum(raw: str) -> str:
    """Letters/digits that must survive: all of them, except voice tags and the URL part of links."""
    return alnum(TAG_OR_LINK.sub(lambda m: " " if m.group("tag") else m.group("text"), raw))


def streamed(raw: str, cuts: list[int]) -> str:
    """Prepare ``raw`` fed in pieces split at ``cuts``."""
    bounds = [0, *sorted(set(cuts)), len(raw)]
    prep = TextPreparer()
    out = [prep.feed(raw[a:b]) for a, b in itertools.pairwise(bounds)]
    return "".join(out) + prep.finish()


# --- examples ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**The Vibrant World**\n\nContemporary art.", "The Vibrant World. Contemporary art."),
        ("# Heading\nText here.", "Heading. Text here."),
        ("## Heading:\nText.", "Heading: Text."),
        (
            "Some trends include:\n\n* **Abstract**: form.\n* **Digital**: works.",
            "Some trends include: Abstract: form. Digital: works.",
        ),
        ("- swords\n- shields\n+ helmets", "swords. shields. helmets"),
        ("• one\n• two", "one. two"),
        ("1. First item\n2) Second item", "1, First item. 2, Second item"),
        ("See [the docs](https://example.com/a_b) now.", "See the docs now."),
        ("![a map](map.png) of the realm", "a map of the realm"),
        ("An _emphasis_ and __strong__ and snake_case_name.", "An emphasis and strong and snake case name."),
        ("Use `code` here.", "Use code here."),
        ("Dragons 🐉 breathe fire 🔥!", "Dragons breathe fire !"),
        ("Family: 👨‍👩‍👧 done. Flag: 🇫🇷 ok. Thumb: 👍🏽 yes.", "Family: done. Flag: ok. Thumb: yes."),
        ("Keycap 1️⃣ stays a digit.", "Keycap 1 stays a digit."),
        ("a line that wraps\nin the middle", "a line that wraps in the middle"),
        ("The end\n\nthe start", "The end. the start"),
        ("# Title\nlowercase after heading", "Title. lowercase after heading"),
        ("Text\n---\nMore", "Text. More"),
        ("Title\n=====\nBody", "Title. Body"),
        ("> quoted line\n> more", "quoted line more"),
        ("Ünïcödé names like Ærenfell, Séverine and Zoë.", "Ünïcödé names like Ærenfell, Séverine and Zoë."),
        (
            "Visit library.example/scrolls or https://a.example/x.",
            "Visit library.example/scrolls or https://a.example/x.",
        ),
        ("3.50 gp at line start", "3.50 gp at line start"),
        ("1204 was the year.", "1204 was the year."),
        ("-5 degrees", "-5 degrees"),
        ("   lots   of\t\tspace  \r\n  here  ", "lots of space here"),
        ("lots of space  \r\n  Here  ", "lots of space. Here"),
        ("> quoted\n>\n> more", "quoted. more"),
        ("Ends with heading\n# H", "Ends with heading. H"),
        ("[not a link] and (parens)", "[not a link] and (parens)"),
        # voice tags: dropped, a space between words, no period inserted after them
        ("The innkeeper looks up. [voice:innkeeper] Rooms. [voice:] Ok.", "The innkeeper looks up. Rooms. Ok."),
        ("up.[voice:npc]Rooms", "up. Rooms"),
        ("Hello [voice:npc]\nWorld", "Hello World"),
        ("Hello\n[VOICE:npc] world", "Hello. world"),
        ("[sic] [voice: npc] [voice:two words] [voic:x]", "[sic] [voice: npc] [voice:two words] [voic:x]"),
        ("Ends with [voice", "Ends with [voice"),
        ("Ends with [voice:npc", "Ends with [voice:npc"),
        ("[voice:npc](x) and [a](http://u.example/[voice:npc]) too", "(x) and a too"),
        ('He said "stop"\nThen left.', 'He said "stop". Then left.'),
        ("", ""),
        ("  \n\n \t ", ""),
        ("***\n\n---\n", ""),
    ],
)
def test_examples(raw: str, spoken: str) -> None:
    assert prepare_text(raw) == spoken
    # and the same, one character at a time
    assert streamed(raw, list(range(1, len(raw)))) == spoken


def test_feed_holds_back_only_a_short_tail() -> None:
    prep = TextPreparer()
    assert prep.feed("Hello there, ") == "Hello there,"  # the space waits for the next word
    assert prep.feed("*") == ""  # may be "**" or a bullet... mid-line it is dropped anyway
    assert prep.feed("*brave*") == " brave"
    assert prep.feed("* traveller.\n") == " traveller."
    assert prep.feed("* ") == ""  # a line start: bullet?
    assert prep.pending == ""  # the "* " was a bullet mark, consumed
    assert prep.feed("Next") == " Next"
    assert prep.feed(" [link") == ""  # maybe a link
    assert prep.pending == "[link"
    assert prep.feed("](http://x.example)") == " link"
    assert prep.finish() == ""


def test_finish_resets_for_a_new_text() -> None:
    prep = TextPreparer()
    assert prep.feed("# One") == "One"
    assert prep.finish() == ""  # no period at the very end
    assert prep.feed("Two") == "Two"
    assert prep.finish() == ""


def test_llm_stream_markdown() -> None:
    raw = (
        "Here's an article:\n\n**The Vibrant World of Contemporary Sculpture**\n\n"
        "* **Abstract Sculpture**: Abstract sculpture emphasizes the idea.\n"
        "* **The Museum of Modern Art (MoMA) - New York City, USA**\n\n**Conclusion**\n\nDone"
    )
    assert prepare_text(raw) == (
        "Here's an article: The Vibrant World of Contemporary Sculpture. Abstract Sculpture: Abstract "
        "sculpture emphasizes the idea. The Museum of Modern Art (MoMA) - New York City, USA. "
        "Conclusion. Done"
    )


# --- properties ------------------------------------------------------------------------------------

MD_TOKENS = st.sampled_from(
    [
        "**", "*", "_", "__", "#", "## ", "`", "```", "\n", "\n\n", "- ", "* ", "+ ", "1. ", "12) ", "> ",
        "---", "===", "[", "]", "(", ")", "[a link](http://u.example/p)", "![img](x.png)", "🐉", "👍🏽",
        "👨‍👩‍👧", "1️⃣", "🇫🇷", "™", " ", "  ", "\t", ".", ",", "!", "?", ":", "—", "...", '"', "'",
        "Dr.", "3.50", "1,000", "snake_case", "Zoë", "Ærenfell", "word", "The", "and", "x", "\r\n",
        "[voice:npc]", "[Voice:]", "[voice:", "voice:", "npc", "[voice:a.b-c_9] ",
    ]
)  # fmt: skip
MD_TEXT = st.lists(MD_TOKENS, max_size=40).map("".join)
ANY_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from("*_#`[]()!\n -1.🐉"),
    max_size=120,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(MD_TEXT, ANY_TEXT), data=st.data())
def test_letters_and_digits_survive_in_order(raw: str, data: st.DataObject) -> None:
    out = prepare_text(raw)
    assert alnum(out) == expected_alnum(raw)
    assert forbidden_symbol(out) is None, out
    assert out == out.strip() and "  " not in out and "\n" not in out
    cuts = data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=12))
    assert streamed(raw, cuts) == out


@settings(max_examples=100, deadline=None)
@given(raw=ANY_TEXT)
def test_one_char_feeding_equals_whole(raw: str) -> None:
    assert streamed(raw, list(range(1, len(raw)))) == prepare_text(raw)


def test_unicode_letters_untouched() -> None:
    text = "Zoë, Ærenfell, Séverine, naïve café, Ünïcödé, ß, 東京, Ελλάδα, e\u0301 (decomposed)."
    assert prepare_text(text) == text


def test_large_text_is_linear() -> None:
    """Time grows linearly with size: the ratio of two sizes measured in one run, no absolute bound.

    CPU time of this process (not wall time) so other work on the machine does not count, best of
    two runs each. Linear gives a ratio of ~4 for 4x the text; quadratic would give ~16.
    """
    import time

    unit = "**Bold** text with a [link](http://x.example) and _emphasis_ 🐉.\n* item\n\n"

    def cost(size: int) -> float:
        raw = (unit * (size // len(unit) + 1))[:size]
        best = math.inf
        for _ in range(2):
            t0 = time.process_time()
            out = prepare_text(raw)
            best = min(best, time.process_time() - t0)
        assert alnum(out) == expected_alnum(raw)
        return best

    small, large = cost(100_000), cost(400_000)
    assert large / small < 9.0, f"100 kB: {small:.3f} s, 400 kB: {large:.3f} s (ratio {large / small:.1f})"

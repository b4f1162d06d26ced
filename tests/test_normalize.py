"""Narration text normalization: each rule, streaming, idempotence, source kept, the lexicon."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.text.chunker import SemanticChunker, SpeakingRate, plan_chunks
from actors.text.normalize import Lexicon, Normalizer, Spoken, normalize, normalize_pieces
from tests.test_chunker import PIPER_RATE

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


def alnum(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


# (written, spoken): each rule of the module docstring, at least once.
EXAMPLES = [
    # the list
    ("Henry VIII ruled.", "Henry the Eighth ruled."),
    ("Chapter IV begins.", "Chapter Four begins."),
    ("It cost $3,450.", "It cost three thousand four hundred and fifty dollars."),
    ("It was in 1492.", "It was in fourteen ninety-two."),
    ("The wall is 10 ft high.", "The wall is ten feet high."),
    ("On 12/03/2024 it rained.", "On twelve oh three twenty twenty-four it rained."),
    ("One thing, i.e. the key.", "One thing, that is the key."),
    ("Elves vs. orcs.", "Elves versus orcs."),
    ("Dr. Smith waits.", "Doctor Smith waits."),
    ("We met at St. Mary.", "We met at Saint Mary."),
    ("He lives on Main St. Then he left.", "He lives on Main Street. Then he left."),
    ("Mr. Pell and Mrs. Pell and Ms. Vane.", "Mister Pell and Missus Pell and Miz Vane."),
    ("Capt. Rook, Lt. Ash and Gen. Thorn.", "Captain Rook, Lieutenant Ash and General Thorn."),
    ("Prof. Quill and Sgt. Vale.", "Professor Quill and Sergeant Vale."),
    ("Roll 2d6.", "Roll two d six."),
    ("Roll a d20!", "Roll a d twenty!"),
    ("It deals 1d8+3 damage.", "It deals one d eight plus three damage."),
    ("Its AC 15 holds.", "Its armor class fifteen holds."),
    ("A DC 12 check.", "A difficulty class twelve check."),
    ("It has 45 HP left.", "It has forty-five hit points left."),
    ("A +2 longsword.", "A plus two longsword."),
    ("Rules from 5e.", "Rules from fifth edition."),
    # numbers
    ("1,492 arrows", "one thousand four hundred and ninety-two arrows"),
    ("pi is 3.14", "pi is three point one four"),
    ("It fell to -5 at night.", "It fell to minus five at night."),
    ("She came 3rd and he 21st.", "She came third and he twenty-first."),
    ("In the 1920s.", "In the nineteen twenties."),
    ("3–5 goblins", "three to five goblins"),
    ("half, 1/2, and 3/4", "half, one half, and three quarters"),
    ("a 50% chance", "a fifty percent chance"),
    ("12 rats", "twelve rats"),
    # money and coins
    ("It costs $3.50.", "It costs three dollars and fifty cents."),
    ("£5 and €20", "five pounds and twenty euros"),
    ("Pay 15 gp or 1 sp.", "Pay fifteen gold pieces or one silver piece."),
    ("a 100gp gem", "a one hundred gold piece gem"),
    ("a 10 ft pole and 10 ft of rope", "a ten foot pole and ten feet of rope"),
    # times and dates
    ("At 10:30 we march.", "At ten thirty we march."),
    ("At 10:05 we march.", "At ten oh five we march."),
    ("At 10:00 we march.", "At ten o'clock we march."),
    ("By 3 pm, dusk.", "By three P M, dusk."),
    ("On 2024-03-12 it began.", "On March twelfth, twenty twenty-four it began."),
    ("On March 12, it began.", "On March twelfth, it began."),
    ("On 12 March it began.", "On the twelfth of March it began."),
    ("Paid on Jan. 5th, and Sept. 3.", "Paid on January fifth, and September third."),
    ("On 31/12/2024 it ended.", "On the thirty-first of December, twenty twenty-four it ended."),
    # units
    ("1 ft away, 5 lb heavy, 3 km off.", "one foot away, five pounds heavy, three kilometers off."),
    ("At 60 mph, 2 hrs.", "At sixty miles per hour, two hours."),
    # Roman numerals only in context; "I" and "MIX" untouched
    ("I mix MIX well.", "I mix MIX well."),
    ("Then I left.", "Then I left."),
    ("Elizabeth I smiled.", "Elizabeth I smiled."),
    ("After World War II.", "After World War Two."),
    ("Act I, Scene III.", "Act One, Scene Three."),
    ("Louis XIV.", "Louis the Fourteenth."),
    ("The VI of spades.", "The VI of spades."),
    # abbreviations whose period also ends the sentence
    ("Swords, shields, etc. Then silence.", "Swords, shields, et cetera. Then silence."),
    ("Swords, shields, etc. and more.", "Swords, shields, et cetera and more."),
    ("Tools, e.g. rope.", "Tools, for example rope."),
    ("It weighs approx. 5 lb.", "It weighs approximately five pounds."),
    # untouched prose and typography
    ("The map — drawn in faded ink.", "The map — drawn in faded ink."),
    ("Zoë, Ærenfell, naïve café.", "Zoë, Ærenfell, naïve café."),
    ('"10 gp," she said.', '"ten gold pieces," she said.'),
    ("(in 1204)", "(in twelve oh four)"),
]


@pytest.mark.parametrize(("written", "spoken"), EXAMPLES)
def test_examples(written: str, spoken: str) -> None:
    assert normalize(written) == spoken


@pytest.mark.parametrize(("written", "spoken"), EXAMPLES)
def test_examples_one_char_at_a_time(written: str, spoken: str) -> None:
    n = Normalizer()
    pieces = [p for ch in written for p in n.feed(ch)] + n.finish()
    assert "".join(p.text for p in pieces) == spoken
    assert "".join(p.source for p in pieces) == written


@pytest.mark.parametrize(("written", "spoken"), EXAMPLES)
def test_idempotent_on_examples(written: str, spoken: str) -> None:
    assert normalize(spoken) == spoken


def test_abbreviations_no_longer_end_a_piper_sentence() -> None:
    """Piper (espeak-ng) splits sentences at a period followed by a space: none is left in a name."""
    for written in ("Dr. Smith", "St. Mary", "Mr. Pell", "Mrs. Pell", "Capt. Rook", "Prof. Quill", "elves vs. orcs"):
        assert "." not in normalize(written), written


# --- properties -------------------------------------------------------------------------------------

TOKENS = [
    "the", "dragon", "Henry", "VIII", "IV", "I", "MIX", "Chapter", "War", "II", "Dr.", "St.", "Mr.", "Main",
    "etc.", "e.g.", "i.e.", "vs.", "approx.", "1492", "1,492", "3.14", "-5", "+2", "3rd", "3–5", "1/2", "50%",
    "$3,450", "$3.50", "£5", "15", "gp", "10:30", "3", "pm", "2024-03-12", "12/03/2024", "March", "12,", "10",
    "ft", "lb", "km", "mph", "2d6", "d20", "1d8+3", "AC", "DC", "HP", "5e", "1920s", "Ærenfell", "—", "(1204)",
    '"10', 'gp,"', "007", "0", "100gp", "10ft", "Jr.", "&",
]  # fmt: skip
SEPS = [" ", " ", " ", ", ", ". ", "  ", "—"]


@st.composite
def notation_text(draw: st.DrawFn) -> str:
    n = draw(st.integers(0, 30))
    parts = []
    for _ in range(n):
        parts.append(draw(st.sampled_from(TOKENS)))
        parts.append(draw(st.sampled_from(SEPS)))
    return "".join(parts).strip()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=notation_text(), data=st.data())
def test_streamed_in_any_pieces_equals_whole(text: str, data: st.DataObject) -> None:
    whole = normalize_pieces(text)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=20))))
    n = Normalizer()
    pieces: list[Spoken] = []
    for a, b in itertools.pairwise([0, *cuts, len(text)]):
        pieces += n.feed(text[a:b])
    pieces += n.finish()
    assert "".join(p.text for p in pieces) == "".join(p.text for p in whole)
    assert "".join(p.source for p in pieces) == text  # the source is the input, exactly


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=notation_text())
def test_one_char_pieces_equal_whole(text: str) -> None:
    n = Normalizer()
    streamed = "".join(p.text for ch in text for p in n.feed(ch)) + "".join(p.text for p in n.finish())
    assert streamed == normalize(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(notation_text(), st.text(max_size=60)))
def test_idempotent(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=notation_text())
def test_no_digits_left_where_a_rule_applies(text: str) -> None:
    """Every rewritten piece is said in words: a rewritten piece never hands an engine a digit."""
    for p in normalize_pieces(text):
        if p.text != p.source:
            assert not any(ch.isdigit() for ch in p.text), p


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=notation_text(), data=st.data())
def test_chunk_sources_keep_every_letter_and_digit(text: str, data: st.DataObject) -> None:
    """Planned chunks: the concatenated ``source`` holds every letter and digit of the input, in
    order, streamed or not; ``text`` is the input normalized."""
    r = SpeakingRate(chars_per_s=PIPER_RATE)
    plans = plan_chunks(text, r)
    assert alnum("".join(p.source for p in plans)) == alnum(text)
    assert alnum("".join(p.text for p in plans)) == alnum(normalize(" ".join(text.split())))
    ch = SemanticChunker(r)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=20))))
    streamed = [p for a, b in itertools.pairwise([0, *cuts, len(text)]) for p in ch.feed(text[a:b])]
    assert streamed + ch.finish() == plans


def test_rewritten_tokens_and_glued_words_are_never_cut_apart() -> None:
    """Tight first-chunk bounds push cuts everywhere they are allowed: never inside "fourteen
    ninety-two", never between "ten" and "feet" or "Doctor" and "Smith"."""
    r = SpeakingRate(chars_per_s=PIPER_RATE)
    text = "In 1492 Dr. Smith walked 10 ft to Henry VIII and paid 15 gp for 3,450 arrows against AC 15. " * 3
    for plan in plan_chunks(text, r):
        for glued in ("fourteen ninety-two", "Doctor Smith", "ten feet", "Henry the Eighth", "fifteen gold pieces"):
            words = glued.split()
            for k in range(1, len(words)):
                head, tail = " ".join(words[:k]), " ".join(words[k:])
                assert not (plan.text.endswith(head) and not plan.text.endswith(glued)), (plan.text, glued)
                assert not (plan.text.startswith(tail) and not plan.text.startswith(glued)), (plan.text, glued)


# --- the lexicon --------------------------------------------------------------------------------------


def test_lexicon_from_a_file_reloaded_at_run_time(tmp_path: Path) -> None:
    path = tmp_path / "campaign.toml"
    path.write_text('[words]\n"Ærenfell" = "Airen-fell"\nsyl = "sill"\n', encoding="utf-8")
    lex = Lexicon.load(path)
    assert normalize("To Ærenfell, Syl!", lexicon=lex) == "To Airen-fell, sill!"
    os.utime(path, (1, 1))  # an edit with another modification time
    path.write_text('"Ærenfell" = "Erin-fell"\n', encoding="utf-8")
    os.utime(path, (2, 2))
    lex.reload()
    assert normalize("To Ærenfell.", lexicon=lex) == "To Erin-fell."
    assert len(lex) == 1


def test_lexicon_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('"two words" = "x"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.toml"):
        Lexicon.load(bad)
    with pytest.raises(ValueError, match=r"missing\.toml"):
        Lexicon.load(tmp_path / "missing.toml")


def test_lexicon_in_the_chunker() -> None:
    r = SpeakingRate(chars_per_s=PIPER_RATE)
    ch = SemanticChunker(r, lexicon=Lexicon({"Ærenfell": "Airen-fell"}))
    plans = ch.feed("Welcome to Ærenfell.") + ch.finish()
    assert [(p.text, p.source) for p in plans] == [("Welcome to Airen-fell.", "Welcome to Ærenfell.")]


def test_other_languages_get_the_lexicon_only() -> None:
    assert normalize("Louis XIV, 1492.", language="fr") == "Louis XIV, 1492."
    assert normalize("Ærenfell", language="de", lexicon=Lexicon({"Ærenfell": "Ärenfell"})) == "Ärenfell"


# --- the first chunk keeps phrases whole ----------------------------------------------------------

MAP = (
    "The map — drawn in faded ink on cracked vellum — shows three routes: one through the marsh, one over "
    "the pass, and one beneath the old king's road."
)


def test_map_paragraph_cut_at_pause_points_only() -> None:
    r = SpeakingRate(chars_per_s=PIPER_RATE)
    plans = plan_chunks(MAP, r)
    assert plans[0].text == "The map —"
    assert [p.boundary for p in plans[:-1]] and all(p.boundary in ("sentence", "clause") for p in plans[:-1])
    assert not any(p.text.endswith("faded") or p.text.startswith("ink") for p in plans)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(st.sampled_from(["dark", "old", "the", "road", "and", "stormy", "night", "a", "king", "walked"]),
                   min_size=3, max_size=14),
    pause=st.integers(1, 10),
    mark=st.sampled_from([",", " —", ";", ":"]),
)  # fmt: skip
def test_first_chunk_prefers_a_pause_point_over_a_word_cut(words: list[str], pause: int, mark: str) -> None:
    """Whenever a pause point lies within first_chunk_max_s (and is not a mere word or two), the first
    chunk ends at a pause point, never at a bare word boundary."""
    r = SpeakingRate(chars_per_s=PIPER_RATE)
    pause = min(pause, len(words) - 1)
    head = " ".join(words[:pause]) + mark
    text = head + " " + " ".join(words[pause:]) + " and then the long grey road went on and on into the hills."
    plans = plan_chunks(text, r)
    if len(plans) > 1 and 0.6 <= r.estimate(head) <= 2.5:
        assert plans[0].boundary in ("sentence", "clause", "conjunction"), (plans[0], head)


@pytest.mark.parametrize(
    "text",
    [
        "On a dark and stormy night the riders came down from the hills, and the village woke to their horns.",
        "The cold and bitter wind blew through the broken gate while the guards huddled around the fire.",
    ],
)
def test_conjunction_never_parts_an_adjective_from_its_noun(text: str) -> None:
    r = SpeakingRate(chars_per_s=PIPER_RATE)
    for p in plan_chunks(text, r):
        assert not p.text.endswith(("dark", "cold")), p.text


# --- the CLI ------------------------------------------------------------------------------------------


def test_skald_chunk_prints_spoken_and_source() -> None:
    """``skald chunk`` on a paragraph holding each item of the issue's list prints the spoken forms."""
    paragraph = (DATA / "normalization.txt").read_text(encoding="utf-8")
    env = dict(os.environ, SKALD_AUDIO_SINK="null")
    out = subprocess.run(
        [sys.executable, "-m", "actors.cli", "chunk"], input=paragraph, capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=120, check=True,
    ).stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    spoken = " ".join(row["text"] for row in rows)
    source = " ".join(row["source"] for row in rows)
    for said in (
        "Henry the Eighth", "Chapter Four", "three thousand four hundred and fifty dollars", "fourteen ninety-two",
        "ten feet", "that is", "versus", "Doctor Smith", "Saint Mary", "Mister Pell", "two d six", "d twenty",
        "armor class fifteen", "plus two longsword", "fifth edition",
    ):  # fmt: skip
        assert said in spoken, said
    assert alnum(source) == alnum(paragraph)


# --- XTTS: the same words, not expanded twice -------------------------------------------------------


def test_xtts_tokenizer_gets_the_normalized_text_unchanged() -> None:
    """The chunk text both engines get is the normalized one; coqui's own English cleaner (numbers,
    abbreviations, symbols) then finds nothing left to expand: the tiny random XTTS model's tokenizer
    only lowercases it. On the written text it would expand ("2d6" → "twodsix", "10:30" →
    "ten:thirty", "VIII" left as letters), which is what normalizing first prevents."""
    pytest.importorskip("TTS.tts.layers.xtts.tokenizer", reason="the xtts extra (coqui-tts) is not installed")
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

    from tests.support.xtts_random import cached_model_dir

    tok = VoiceBpeTokenizer(vocab_file=str(cached_model_dir("tiny") / "vocab.json"))
    paragraph = (DATA / "normalization.txt").read_text(encoding="utf-8")
    r = SpeakingRate(chars_per_s=PIPER_RATE)
    for written in [paragraph, *(w for w, _ in EXAMPLES)]:
        for plan in plan_chunks(written, r):  # what the worker hands to XTTS, chunk by chunk
            said = tok.preprocess_text(plan.text, "en")
            assert said_words(said) == said_words(plan.text.lower()), plan.text
            assert not any(ch.isdigit() for ch in said)
    assert said_words(tok.preprocess_text(paragraph, "en")) != said_words(paragraph.lower())


def said_words(text: str) -> list[str]:
    """The words (coqui drops quotes and some other punctuation; only the words matter here)."""
    return re.findall(r"[\w']+", text)


def test_skald_chunk_reads_the_configured_lexicon(tmp_path: Path) -> None:
    """``chunker.lexicon`` (here from the environment) names the file ``skald chunk`` and the worker read."""
    lexicon = tmp_path / "campaign.toml"
    lexicon.write_text('"Ærenfell" = "Airen-fell"\n', encoding="utf-8")
    env = dict(os.environ, SKALD_CHUNKER_LEXICON=str(lexicon))
    out = subprocess.run(
        [sys.executable, "-m", "actors.cli", "chunk"], input="The road to Ærenfell is long.", capture_output=True,
        text=True, env=env, cwd=ROOT, timeout=120, check=True,
    ).stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    said = [(r["text"], r["source"]) for r in rows]
    assert said == [("The road to Airen-fell is long.", "The road to Ærenfell is long.")]

"""Edge cases of the semantic chunker (seed §1.5) and its parts (cuts, plan, ranking, speaking_rate)
that tests/test_chunker*.py leave out: empty and whitespace-only text, a single huge word (with
and without a non-letter to cut at), a word between hard_min_s and the first-chunk limit, text
with no punctuation long enough to be planned in 8192-character slices (and a dash-quote at a
slice's end), words the lexicon says as nothing, abbreviations and unspaced dashes at the cut
classifier, a straight quote whose role is not known yet, and the speaking-rate edge cases.

Every plan is checked against the invariants of tests/test_chunker.check_plan and, where it is
streamed, against the batch plan of the same text (the chunker's central promise).
"""

from __future__ import annotations

import itertools

import pytest

from actors.text.chunker import ChunkerConfig, ChunkPlan, SemanticChunker, SpeakingRate, plan_chunks
from actors.text.cuts import QuoteSpans, classify_cut
from actors.text.normalize import Lexicon
from actors.text.plan import CLAUSE, CONJ, SENTENCE, WORD
from actors.text.speaking_rate import speech_units
from tests.test_chunker import PIPER_RATE, check_plan, stream_plan


def rate() -> SpeakingRate:
    return SpeakingRate(chars_per_s=PIPER_RATE)


def feed_words(chunker: SemanticChunker, text: str) -> list[ChunkPlan]:
    """Feed ``text`` word by word (each word with the space before it), as a model emits tokens."""
    out: list[ChunkPlan] = []
    for i, word in enumerate(text.split(" ")):
        out += chunker.feed(word if i == 0 else " " + word)
    return out + chunker.finish()


# ------------------------------------------------------------------------------------------------
# the chunker's public surface


def test_properties_name_the_rate_config_and_voice() -> None:
    r = rate()
    cfg = ChunkerConfig(first_sentence=True)
    chunker = SemanticChunker(r, cfg, rate_for=lambda name: None)
    assert chunker.rate is r
    assert chunker.config is cfg
    assert chunker.voice is None
    chunker.feed("Hello there. [voice:gandalf] You shall not pass")
    assert chunker.voice == "gandalf"
    chunker.finish()
    assert chunker.voice is None  # a new request is in the request's own voice again
    assert SemanticChunker(r).config == ChunkerConfig()


@pytest.mark.parametrize("text", ["", " ", "\n\n\t", "   .   "])
def test_empty_or_blank_text_plans_nothing_or_one_chunk(text: str) -> None:
    plans = plan_chunks(text, rate())
    check_plan(text, plans, rate())
    assert stream_plan(text, list(range(len(text))), rate()) == plans


# ------------------------------------------------------------------------------------------------
# huge words and no punctuation


def test_single_huge_word_without_any_break_is_cut_at_the_limit() -> None:
    r = rate()
    word = "z" * 700
    plans = plan_chunks(word, r)
    assert "".join(p.text for p in plans) == word  # nothing lost, nothing added
    assert all(p.boundary == "word" for p in plans[:-1]) and plans[-1].boundary == "end"
    assert plans[0].est_s <= ChunkerConfig().first_chunk_max_s
    assert all(p.est_s <= ChunkerConfig().hard_max_s for p in plans[1:])
    assert stream_plan(word, list(range(0, 700, 33)), r) == plans


def test_huge_url_like_word_is_cut_next_to_a_non_letter_and_keeps_every_character() -> None:
    r = rate()
    word = ".".join(["ab"] * 200)  # a dot after a letter costs a pause only where a chunk ends
    text = "Go " + word
    plans = plan_chunks(text, r)
    assert "".join(p.source for p in plans).replace(" ", "") == text.replace(" ", "")
    assert len(plans) > 3
    for p in plans[1:-1]:
        assert p.boundary == "word"
        assert p.est_s <= ChunkerConfig().hard_max_s  # the end-of-chunk pause of a final "." counted
    for a, b in itertools.pairwise(plans[1:]):
        assert a.text[-1] == "." or b.text[0] == "."  # cut beside a dot, never between two letters
    assert stream_plan(text, list(range(0, len(text), 7)), r) == plans


def test_one_word_between_hard_min_and_the_first_chunk_limit_is_one_chunk() -> None:
    cfg = ChunkerConfig(hard_min_s=0.5, target_min_s=1.0, first_chunk_s=0.6)
    word = "Supercalifragilisticexpialidocious"
    est = rate().estimate(word)
    assert cfg.hard_min_s < est <= cfg.first_chunk_max_s
    plans = plan_chunks(word, rate(), cfg)
    assert [(p.text, p.boundary) for p in plans] == [(word, "end")]


def _filler(length: int) -> str:
    """Plain two-letter words, no punctuation, exactly ``length`` characters ending in a space."""
    words = ("ab " * (length // 3 + 1))[: length - 1]
    return words.rstrip() + " " * (length - len(words.rstrip()))


@pytest.mark.parametrize("length", [8186, 8189, 8191])
def test_text_without_punctuation_across_8192_character_slices(length: int) -> None:
    # The batch plan takes its input in 8192-character slices; a slice may end right after a
    # dash and its closing quote ('said—"'), whose pause is known only when the next slice comes.
    text = _filler(length) + 'said—" and then more words.'
    assert len(text) == length + 27
    r = rate()
    plans = plan_chunks(text, r)
    check_plan(text, plans, r)
    assert {p.boundary for p in plans[:-1]} <= {"word", "conjunction"}  # nothing else to cut at
    assert stream_plan(text, list(range(0, len(text), 50)), r) == plans


# ------------------------------------------------------------------------------------------------
# words said as nothing, streamed a word at a time


def test_words_the_lexicon_says_as_nothing_keep_their_source() -> None:
    r = rate()
    lexicon = Lexicon({"um": ""})
    text = "So um um we go. um Then the long road north, and um the cold wind at our backs all day um long."
    streamed = feed_words(SemanticChunker(r, lexicon=lexicon), text)
    batch = SemanticChunker(r, lexicon=lexicon)
    assert streamed == batch.feed(text) + batch.finish()
    # Every written word is in a source (sources leave out the spaces between chunks).
    assert "".join(p.source for p in streamed).replace(" ", "") == text.replace(" ", "")
    assert " um " not in " ".join(p.text for p in streamed) and "um" not in streamed[0].text.split()


# ------------------------------------------------------------------------------------------------
# the cut classifier (actors.text.cuts) on its own


@pytest.mark.parametrize(
    ("buf", "c", "want"),
    [
        ("a  b", 2, (-1, False)),  # the second of two spaces: the cut is before the first
        ("word--word", 6, (CLAUSE, False)),  # after a typed double dash
        ("a--- b", 3, (-1, False)),  # inside a run of hyphens
        ("pages 1–2", 8, (-1, False)),  # an en dash between digits is a range, not a pause
        ("yes—)", 4, (-1, False)),  # a closer stays with the dash
        ("J. R. Tolkien", 2, (WORD, True)),  # an initial
        ("see vs. them", 7, (WORD, True)),  # an abbreviation
        ("He left. Then", 8, (SENTENCE, False)),
        ('"Wait!" she said', 7, (CLAUSE, False)),  # "!" before a lowercase word
        ("the dark and stormy", 8, (WORD, True)),  # a conjunction between adjectives
        ("he ran and hid", 6, (CONJ, False)),
        ("on the table", 6, (WORD, True)),  # after an article
    ],
)
def test_classify_cut(buf: str, c: int, want: tuple[int, bool]) -> None:
    assert classify_cut(buf, c, final=True) == want


def test_classify_cut_waits_for_the_next_word() -> None:
    assert classify_cut("he ran an", 6, final=False) is None  # "an" may still become "and"
    assert classify_cut("he ran ", 6, final=False) is None  # no next word yet
    assert classify_cut("he ran and hid", 6, final=False) == (CONJ, False)


def test_straight_quote_at_the_end_waits_for_its_context() -> None:
    spans = QuoteSpans()
    spans.advance('He said "', final=False)
    assert spans.protects(10, final=False) is False  # nothing opened yet: the quote is undecided
    spans.advance('He said "Run now" and left', final=False)
    assert spans.protects(12, final=False) is True  # now known: an opening quote, a short quotation
    assert spans.protects(20, final=False) is False  # after it closed
    closing = QuoteSpans()
    closing.advance('He said "Run now"', final=False)  # a closing quote at the end, context pending
    closing.advance('He said "Run now" ', final=False)
    assert closing.protects(12, final=False) is True


# ------------------------------------------------------------------------------------------------
# configuration and speaking rate


def test_first_sentence_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match=r"ChunkerConfig\.first_sentence must be a bool, got 1"):
        ChunkerConfig(first_sentence=1)  # type: ignore[arg-type]


def test_combining_marks_weigh_half_a_letter() -> None:
    assert speech_units("\u0301") == 1  # combining acute accent
    assert speech_units("e") == 2
    r = rate()
    assert r.estimate("cafe\u0301 noir") > r.estimate("cafe noir")
    assert r.estimate("cafe\u0301 noir") < r.estimate("cafee noir")


@pytest.mark.parametrize("bad", [-0.1, 5.1])
def test_utterance_overhead_must_be_0_to_5_s(bad: float) -> None:
    with pytest.raises(ValueError, match=f"utterance_s must be within 0..5 s, got {bad}"):
        SpeakingRate(utterance_s=bad)


def test_a_rate_faster_than_speech_is_refused() -> None:
    with pytest.raises(ValueError, match=r"chars_per_s=1000\.0 is too fast to be speech"):
        SpeakingRate(chars_per_s=1000.0)
    assert SpeakingRate(chars_per_s=40.0).chars_per_s == pytest.approx(40.0)


def test_bounds_hold_for_every_config_on_text_without_punctuation() -> None:
    r = rate()
    text = " ".join(itertools.islice(itertools.cycle(["north", "wind", "over", "grey", "hills"]), 300))
    for cfg in (ChunkerConfig(), ChunkerConfig(first_sentence=True), ChunkerConfig(1.0, 2.0, 0.5, 3.0, 0.4, 1.0)):
        plans = plan_chunks(text, r, cfg)
        check_plan(text, plans, r, cfg)
        assert stream_plan(text, list(range(0, len(text), 11)), r, cfg) == plans


def test_a_text_of_closing_marks_only_is_one_silent_chunk() -> None:
    """Closing marks with nothing before them: the end-pause fix finds no punctuation to pause
    on (every character is a closer), so the chunk is estimated at 0 s, not given a pause;
    after a sentence end the same closers carry that end's pause."""
    bare = SemanticChunker(SpeakingRate(15.0), ChunkerConfig(3, 7, 2.4, 8, 1.2, 2.5))
    plans = bare.feed('")') + bare.finish()
    assert [(p.source, p.est_s) for p in plans] == [('")', 0.0)]
    after = SemanticChunker(SpeakingRate(15.0), ChunkerConfig(3, 7, 2.4, 8, 1.2, 2.5))
    plans = after.feed('Go.")') + after.finish()
    assert len(plans) == 1 and plans[0].est_s > 0.0


def test_a_limit_inside_a_number_said_as_words_cuts_there_when_nothing_else_fits() -> None:
    """A config too tight for one spoken word, on a number the normalizer says as words ("1,000" →
    "one thousand"): no cut outside the rewritten token and no non-letter lies within reach, so
    the forced cut takes the limit itself (its last resort). Nothing is lost, and streaming cuts
    the same. (Hypothesis reached this only on some random examples, so the seed's 100 % line
    coverage of the chunker depended on the draw.)"""
    cfg = ChunkerConfig(target_min_s=0.5, target_max_s=1.0, hard_min_s=0.5, hard_max_s=1.0, first_chunk_s=0.05,
                        first_chunk_max_s=0.1, first_sentence=False)  # fmt: skip
    r = SpeakingRate(chars_per_s=8.0)
    plans = plan_chunks("1,000 gold", r, cfg)
    assert [p.text for p in plans] == ["o", "ne", "thousa", "nd", "gold"]
    assert [p.boundary for p in plans[:3]] == ["word"] * 3
    assert stream_plan("1,000 gold", list(range(1, 10)), r, cfg) == plans

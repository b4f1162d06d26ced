"""Inline voice tags: ``[voice:NAME]`` switches the voice at the next chunk, whole text or streamed.

Rules (actors/textprep.py and actors/chunker.py document them): a tag forces a chunk boundary and is
never spoken; ``[voice:]`` restores the request's voice (``ChunkPlan.voice`` None); anything that is
not exactly a tag stays text, including a tag still unterminated when the text ends; chunks after a
tag are sized with that voice's speaking rate (``rate_for``).
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.text.chunker import ChunkerConfig, ChunkPlan, SemanticChunker, SpeakingRate, plan_chunks
from actors.text.normalize import normalize
from actors.text.textprep import TextPreparer, VoiceSwitch, prepare_parts, prepare_text
from tests.test_chunker import PIPER_RATE, alnum, texts
from tests.test_chunker_streams import tagged_narration as tagged
from tests.test_chunker_streams import voice_rates
from tests.test_textprep import TAG_OR_LINK

CFG = ChunkerConfig()
EPS = 1e-9
INN = (
    'The innkeeper looks up. [voice:innkeeper] "Rooms are two silver. Meals are extra, and the stable costs a '
    'copper a night, but the hay is fresh." [voice:] He slides a key across the counter and turns back to the '
    "fire, where a kettle has begun to sing."
)
# A valid tag anywhere in a chunk would mean it was spoken.
SPOKEN_TAG = re.compile(r"\[voice:[A-Za-z0-9_.-]{0,64}\]", re.IGNORECASE)


def rate() -> SpeakingRate:
    return SpeakingRate(chars_per_s=PIPER_RATE)


def streamed(
    raw: str, cuts: list[int], r: SpeakingRate, rates: dict[str, SpeakingRate] | None = None
) -> list[ChunkPlan]:
    bounds = [0, *sorted(set(cuts)), len(raw)]
    ch = SemanticChunker(r, rate_for=None if rates is None else rates.get)
    out: list[ChunkPlan] = []
    for a, b in itertools.pairwise(bounds):
        out += ch.feed(raw[a:b])
    return out + ch.finish()


def voices(plans: list[ChunkPlan]) -> list[str | None]:
    return [p.voice for p in plans]


# --- the example from the brief ----------------------------------------------------------------------


def test_innkeeper_example() -> None:
    r = rate()
    slow = SpeakingRate(chars_per_s=9.0)
    plans = plan_chunks(INN, r, rate_for={"innkeeper": slow}.get)
    assert texts(plans) == [
        "The innkeeper looks up.",
        '"Rooms are two silver. Meals are extra,',
        'and the stable costs a copper a night, but the hay is fresh."',
        "He slides a key across the counter and turns back to the fire, where a kettle has begun to sing.",
    ]
    assert voices(plans) == [None, "innkeeper", "innkeeper", None]
    assert [p.boundary for p in plans] == ["voice", "clause", "voice", "end"]
    assert [p.index for p in plans] == [0, 1, 2, 3]
    for p in plans:
        assert p.est_s == (slow if p.voice == "innkeeper" else r).estimate(p.text)
    # every split gives the same plan, including one character at a time
    assert streamed(INN, list(range(1, len(INN))), r, {"innkeeper": slow}) == plans


# --- boundaries ---------------------------------------------------------------------------------------


def test_tag_forces_a_boundary_even_for_a_short_chunk() -> None:
    r = rate()
    raw = "Hi. [voice:npc] Well met, traveller."
    plans = plan_chunks(raw, r)
    assert texts(plans) == ["Hi.", "Well met, traveller."]
    assert voices(plans) == [None, "npc"]
    assert plans[0].est_s < CFG.hard_min_s  # no hard minimum at a voice switch
    assert plans[0].boundary == "voice"
    # without the tag the short text is one chunk
    assert texts(plan_chunks("Hi. Well met, traveller.", r)) == ["Hi. Well met, traveller."]


def test_text_before_a_tag_is_planned_as_a_whole_text() -> None:
    """Up to the tag, the usual rules hold: the short remainder is merged, not left short."""
    r = rate()
    narration = (
        "The rain had not stopped for three days, and the road to the abbey was a river of mud. They walked "
        "in silence through the dripping trees until the bell tower rose above them at last. It was late."
    )
    alone = plan_chunks(narration, r)
    plans = plan_chunks(narration + " [voice:monk] Who goes there?", r)
    assert texts(plans[:-1]) == texts(alone)
    assert [p.boundary for p in plans[:-1]] == [p.boundary for p in alone[:-1]] + ["voice"]
    assert plans[-1] == ChunkPlan(
        len(alone), "Who goes there?", r.estimate("Who goes there?"), "end", "monk", source="Who goes there?"
    )


def test_no_chunk_spans_a_voice_change() -> None:
    r = rate()
    raw = " ".join(f"Line {i} is spoken here by someone. [voice:v{i % 3}]" for i in range(30))
    plans = plan_chunks(raw, r)
    for p in plans:
        assert p.text.count("Line") == 1, p.text
        i = int(p.source.split()[1])
        assert p.voice == (None if i == 0 else f"v{(i - 1) % 3}")


def test_chunk_is_emitted_when_the_tag_closes() -> None:
    r = rate()
    ch = SemanticChunker(r)
    assert ch.feed("The innkeeper looks up. [voi") == []
    assert ch.pending_text.endswith("[voi")  # the partial tag is held back, not planned
    got = ch.feed("ce:npc")
    assert got == []
    got = ch.feed("]")
    assert texts(got) == ["The innkeeper looks up."] and got[0].boundary == "voice"
    assert ch.voice == "npc"
    rest = ch.feed(" Rooms are two silver.") + ch.finish()
    assert texts(rest) == ["Rooms are two silver."] and voices(rest) == ["npc"]
    assert ch.voice is None  # finish() starts a new request with the request's voice


def test_tag_at_start_end_and_repeated() -> None:
    r = rate()
    # a tag before any text: the new voice speaks chunk 0 (with the first-chunk rule)
    long = "The torchlight flickers across the wet stone as you step into the crypt, and the air is cold."
    plans = plan_chunks("[voice:npc] " + long, r)
    assert plans == [ChunkPlan(p.index, p.text, p.est_s, p.boundary, "npc", p.source) for p in plan_chunks(long, r)]
    assert plans[0].est_s <= CFG.first_chunk_max_s
    # a tag at the very end: the text before it is flushed, nothing follows
    plans = plan_chunks("Goodbye. [voice:npc]", r)
    assert texts(plans) == ["Goodbye."] and plans[0].boundary == "voice" and plans[0].voice is None
    # a tag naming the voice in effect changes nothing (no boundary); so does [voice:] at the start
    assert plan_chunks("[voice:]Hi there. [voice:] Friend.", r) == plan_chunks("Hi there. Friend.", r)
    plans = plan_chunks("[voice:npc] Hi there. [voice:npc] Friend.", r)
    assert texts(plans) == ["Hi there. Friend."] and voices(plans) == ["npc"]
    # back-to-back tags: the last one wins; a voice with no text gives no chunk
    plans = plan_chunks("One. [voice:a][voice:b] Two. [voice:c]\n[voice:] Three.", r)
    assert texts(plans) == ["One.", "Two.", "Three."]
    assert voices(plans) == [None, "b", None]
    assert [p.index for p in plans] == [0, 1, 2]


def test_voice_restored_and_keyword_case() -> None:
    r = rate()
    plans = plan_chunks("A. [VOICE:Guard_2] B. [Voice:guard.2-b] C. [vOiCe:] D.", r)
    assert texts(plans) == ["A.", "B.", "C.", "D."]
    assert voices(plans) == [None, "Guard_2", "guard.2-b", None]  # names keep their case


def test_new_request_and_reset_restore_the_voice() -> None:
    r = rate()
    ch = SemanticChunker(r)
    ch.feed("[voice:npc] Hello there.")
    assert ch.voice == "npc"
    ch.reset()
    assert ch.voice is None and ch.pending_text == ""
    out = ch.feed("Plain again.") + ch.finish()
    assert voices(out) == [None]


# --- tags never spoken; malformed tags stay text -------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("He wrote it [sic] badly.", "He wrote it [sic] badly."),
        ("Spaces [voice: npc] are not allowed.", "Spaces [voice: npc] are not allowed."),
        ("Two [voice:two words] words.", "Two [voice:two words] words."),
        ("Typo [voic:npc] here.", "Typo [voic:npc] here."),
        ("Too long [voice:" + "x" * 65 + "] name.", "Too long [voice:" + "x" * 65 + "] name."),
        ("Bad [voice:n@pc] char.", "Bad [voice:n@pc] char."),
        ("Unterminated at the end [voice", "Unterminated at the end [voice"),
        ("Unterminated at the end [voice:npc", "Unterminated at the end [voice:npc"),
        ("Unterminated [voice:npc\nnext line.", "Unterminated [voice:npc next line."),
    ],
)
def test_malformed_tags_stay_text(raw: str, spoken: str) -> None:
    r = rate()
    for plans in (plan_chunks(raw, r), streamed(raw, list(range(1, len(raw))), r)):
        assert " ".join(texts(plans)) == spoken
        assert set(voices(plans)) == {None}
        assert all(p.boundary != "voice" for p in plans)


def test_sixty_four_character_name_is_a_tag() -> None:
    name = "N" * 64
    plans = plan_chunks(f"Before. [voice:{name}] After.", rate())
    assert texts(plans) == ["Before.", "After."] and voices(plans) == [None, name]


def test_tag_wins_over_link_syntax_and_links_keep_their_urls_dropped() -> None:
    plans = plan_chunks("Look [voice:npc](here) now. And [a map](http://x.example/[voice:npc]) too.", rate())
    assert texts(plans) == ["Look", "(here) now. And a map too."]
    assert voices(plans) == [None, "npc"]


@pytest.mark.parametrize(
    "pieces",
    [
        ["Hello. [voi", "ce:npc] Hello"],
        ["Hello. [", "voice:npc", "] Hello"],
        ["Hello. [voice:npc", "]", " Hello"],
        ["Hello. !", "[voice:npc] Hello"],  # "!" may start an image: held back, then plain text
        ["Hello. [voice:n", "pc]Hello"],
    ],
)
def test_tag_split_across_pieces(pieces: list[str]) -> None:
    r = rate()
    ch = SemanticChunker(r)
    plans = [p for piece in pieces for p in ch.feed(piece)] + ch.finish()
    assert plans == plan_chunks("".join(pieces), r)
    assert voices(plans)[-1] == "npc" and plans[-1].text == "Hello"


# --- per-voice speaking rate ---------------------------------------------------------------------


def test_chunks_are_sized_with_their_voices_rate() -> None:
    r = rate()
    slow = SpeakingRate(chars_per_s=7.0)
    speech = (
        "Listen well, for I will say this only once. The road north is closed, the bridge has fallen, and "
        "the wolves have come down from the hills. Take the old path by the river, keep the water on your "
        "left, and do not stop until you see the lights of the mill."
    )
    raw = "The old woman leans closer. [voice:crone] " + speech
    plans = plan_chunks(raw, r, rate_for={"crone": slow}.get)
    npc = [p for p in plans if p.voice == "crone"]
    assert len(npc) >= 3
    for p in npc:
        assert p.est_s == slow.estimate(p.text)
        assert p.est_s <= CFG.hard_max_s + EPS  # within the bounds by *her* rate
    for p in npc[:-1]:
        assert p.est_s >= CFG.hard_min_s - EPS
    # the same speech with the narrator's (faster) rate is cut into fewer, longer chunks
    fast = [p for p in plan_chunks(raw, r) if p.voice == "crone"]
    assert len(fast) < len(npc)
    assert max(len(p.text) for p in fast) > max(len(p.text) for p in npc)


def test_rate_for_is_asked_once_per_switch_and_none_keeps_the_rate() -> None:
    r = rate()
    slow = SpeakingRate(chars_per_s=7.0)
    asked: list[str] = []

    def rate_for(name: str) -> SpeakingRate | None:
        asked.append(name)
        return slow if name == "npc" else None

    raw = "Narrator here. [voice:npc] Slow words. [voice:ghost] Still slow. [voice:] Fast again."
    plans = plan_chunks(raw, r, rate_for=rate_for)
    assert asked == ["npc", "ghost"]  # never asked for the request's own voice
    assert voices(plans) == [None, "npc", "ghost", None]
    assert [p.est_s for p in plans] == [
        r.estimate("Narrator here."),
        slow.estimate("Slow words."),
        slow.estimate("Still slow."),  # unknown voice: the worker keeps the current voice, so its rate
        r.estimate("Fast again."),
    ]
    # without rate_for every voice is sized with the request's rate
    assert [p.est_s for p in plan_chunks(raw, r)] == [r.estimate(t) for t in texts(plans)]


# --- the text preparer's part of it --------------------------------------------------------------


def test_prepare_parts() -> None:
    assert prepare_parts(INN) == [
        "The innkeeper looks up.",
        VoiceSwitch("innkeeper"),
        ' "Rooms are two silver. Meals are extra, and the stable costs a copper a night, but the hay is fresh."',
        VoiceSwitch(None),
        " He slides a key across the counter and turns back to the fire, where a kettle has begun to sing.",
    ]
    assert prepare_text(INN) == prepare_text(SPOKEN_TAG.sub(" ", INN))
    # a line break after a tag adds no period (it would start the new voice's text); before one it does
    assert prepare_parts("Hello [voice:x]\nWorld") == ["Hello", VoiceSwitch("x"), " World"]
    assert prepare_parts("Hello\n[voice:x]\nWorld") == ["Hello.", VoiceSwitch("x"), " World"]
    assert prepare_parts("# Title [voice:x]\n* item") == ["Title", VoiceSwitch("x"), " item"]


def test_preparer_holds_back_only_a_partial_tag() -> None:
    prep = TextPreparer()
    assert prep.feed_parts("Hello [voi") == ["Hello"]
    assert prep.pending == "[voi"
    assert prep.feed_parts("ce:npc]") == [VoiceSwitch("npc")]  # complete: not held as a possible link
    assert prep.pending == ""
    assert prep.feed_parts(" there [voice") == [" there"]
    assert prep.finish_parts() == [" [voice"]  # unterminated at the end: text
    assert prep.feed("Again [voice:npc] ok") == "Again ok"  # the plain API drops tags


# --- properties ------------------------------------------------------------------------------------


def segments(
    raw: str, r: SpeakingRate, rates: dict[str, SpeakingRate], spoken: bool = True
) -> list[tuple[str | None, str, SpeakingRate]]:
    """(voice, prepared text, rate) of each voice's stretch as the chunker sees them (no-op tags
    merged); an unknown voice keeps the rate in effect, also one set by a voice that said nothing."""
    out: list[tuple[str | None, str, SpeakingRate]] = [(None, "", r)]
    for part in prepare_parts(raw):
        voice, text, vr = out[-1]
        if isinstance(part, str):
            out[-1] = (voice, text + part, vr)
        elif part.voice != voice:
            out.append((part.voice, "", r if part.voice is None else rates.get(part.voice, vr)))
    # Each voice's text is normalized on its own (a switch ends the text before it).
    return [(v, normalize(text) if spoken else text, vr) for v, text, vr in out if text.strip()]


def spec_segments(raw: str) -> list[tuple[str | None, str]]:
    """(voice, letters and digits) of each voice's stretch, straight from the tag syntax."""
    out: list[tuple[str | None, str]] = [(None, "")]
    pos = 0
    for m in TAG_OR_LINK.finditer(raw):
        out[-1] = (out[-1][0], out[-1][1] + alnum(raw[pos : m.start()]))
        pos = m.end()
        if m.group("tag") is None:
            out[-1] = (out[-1][0], out[-1][1] + alnum(m.group("text")))
            continue
        voice = m.group("tag")[7:-1] or None
        if voice != out[-1][0]:
            out.append((voice, ""))
    out[-1] = (out[-1][0], out[-1][1] + alnum(raw[pos:]))
    return [(v, t) for v, t in out if t]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=tagged())
def test_tagged_plan_invariants(raw: str) -> None:
    r = rate()
    rates = voice_rates()
    plans = plan_chunks(raw, r, rate_for=rates.get)
    assert [p.index for p in plans] == list(range(len(plans)))
    # the preparer splits the text where the tag syntax says, and keeps every letter in between
    prepared = segments(raw, r, rates, spoken=False)
    assert [(v, alnum(t)) for v, t, _ in prepared if alnum(t)] == spec_segments(raw)
    segs = segments(raw, r, rates)
    # chunks tile each voice's text, in order, and carry its voice: no chunk spans a switch
    it = iter(plans)
    for k, (voice, text, voice_rate) in enumerate(segs):
        pos = 0
        seg_plans: list[ChunkPlan] = []
        while text[pos:].strip():
            p = next(it)
            start = text.index(p.text, pos)
            assert text[pos:start].strip() == ""
            pos = start + len(p.text)
            seg_plans.append(p)
        assert seg_plans
        for p in seg_plans:
            assert p.voice == voice
            assert p.text and p.text == p.text.strip()
            assert not SPOKEN_TAG.search(p.text), p.text
            assert p.est_s == voice_rate.estimate(p.text)
            assert p.est_s <= (max(CFG.first_chunk_max_s, CFG.hard_min_s) if p.index == 0 else CFG.hard_max_s) + EPS
        assert all(p.boundary not in ("end", "voice") for p in seg_plans[:-1])
        # the last chunk of a voice's text ends at the next switch, or at the end of the text
        assert seg_plans[-1].boundary == ("end" if k == len(segs) - 1 and not ends_with_switch(raw) else "voice")
    assert next(it, None) is None


def ends_with_switch(raw: str) -> bool:
    """Whether the text after the last voice change is silent (so the last chunk ended at a tag)."""
    voice: str | None = None
    silent_since_change = False
    for part in prepare_parts(raw):
        if isinstance(part, VoiceSwitch):
            if part.voice != voice:
                voice = part.voice
                silent_since_change = True
        elif part.strip():
            silent_since_change = False
    return silent_since_change


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=tagged(max_words=50), data=st.data())
def test_tagged_preparer_streaming_equals_whole(raw: str, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=30))
    bounds = [0, *sorted(set(cuts)), len(raw)]
    prep = TextPreparer()
    parts = [x for a, b in itertools.pairwise(bounds) for x in prep.feed_parts(raw[a:b])] + prep.finish_parts()
    joined: list[str | VoiceSwitch] = []
    for x in parts:
        if isinstance(x, str) and joined and isinstance(joined[-1], str):
            joined[-1] += x
        else:
            joined.append(x)
    assert joined == prepare_parts(raw)

"""The first-chunk rule for voices that stream within a chunk (``ChunkerConfig.first_sentence``):
the first chunk is the first whole sentence ending in the first-chunk window, else the old rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.text.chunker import ChunkerConfig, SemanticChunker, SpeakingRate, plan_chunks
from config.settings import load_settings
from tests.test_chunker import PIPER_RATE, alnum, check_plan, configs, narration, sources, stream_plan

ROOT = Path(__file__).resolve().parent.parent
STREAMING = ChunkerConfig.from_settings(load_settings(env={}).chunker, streaming=True)
WHOLE_CHUNK = ChunkerConfig.from_settings(load_settings(env={}).chunker)


def rate() -> SpeakingRate:
    return SpeakingRate(chars_per_s=PIPER_RATE)


def test_worker_configs_differ_only_in_the_first_chunk() -> None:
    assert STREAMING.first_sentence and not WHOLE_CHUNK.first_sentence
    assert STREAMING.first_chunk_max_s == WHOLE_CHUNK.target_max_s  # a whole sentence up to 7 s
    assert dataclasses.replace(STREAMING, first_sentence=False, first_chunk_max_s=2.5) == WHOLE_CHUNK


def test_crypt_first_chunk_is_its_first_sentence() -> None:
    text = (ROOT / "config" / "samples" / "crypt.txt").read_text(encoding="utf-8")
    whole = plan_chunks(text, rate(), WHOLE_CHUNK)
    streaming = plan_chunks(text, rate(), STREAMING)
    first_sentence = "The torchlight flickers across the wet stone as you step into the crypt."
    assert streaming[0].text == first_sentence and streaming[0].boundary == "sentence"
    assert len(whole[0].text) < len(first_sentence)  # the whole-chunk rule cuts it short for latency
    assert alnum("".join(sources(streaming))) == alnum(text)


def test_a_short_first_sentence_takes_the_next_one_with_it() -> None:
    text = "Yes. The door creaks open and a cold draft carries the smell of stone. Then silence falls."
    plans = plan_chunks(text, rate(), STREAMING)
    assert plans[0].text == "Yes. The door creaks open and a cold draft carries the smell of stone."


def test_no_sentence_end_in_the_window_falls_back_to_the_first_clause() -> None:
    long_sentence = (
        "The corridor bends to the left, and beyond the bend the torches gutter in a wind that comes from "
        "nowhere, while far below something heavy is dragged across the flagstones and the echoes fold "
        "back on themselves until no one could say where the sound began."
    )
    plans = plan_chunks(long_sentence, rate(), STREAMING)
    assert plans[0].text == "The corridor bends to the left,"
    assert plans[0].boundary == "clause"


def test_streamed_text_waits_for_the_sentence_end() -> None:
    """Token by token, a clause seen first must not be cut while the sentence may still end in time."""
    ch = SemanticChunker(rate(), STREAMING)
    assert ch.feed("The torchlight flickers across the wet stone, cold and slick,") == []
    plans = ch.feed(" as you step into the crypt. Somewhere ahead")
    assert [p.text for p in plans] == [
        "The torchlight flickers across the wet stone, cold and slick, as you step into the crypt."
    ]


@st.composite
def streaming_configs(draw: st.DrawFn, feasible: bool = False) -> ChunkerConfig:
    return dataclasses.replace(draw(configs(feasible=feasible)), first_sentence=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=narration(max_words=100), cfg=streaming_configs(), cps=st.floats(8.0, 30.0), data=st.data())
def test_streamed_plans_equal_batch_plans(raw: str, cfg: ChunkerConfig, cps: float, data: st.DataObject) -> None:
    r = SpeakingRate(chars_per_s=cps)
    plans = plan_chunks(raw, r, cfg)
    cuts = data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=40))
    assert stream_plan(raw, cuts, r, cfg) == plans
    assert alnum("".join(sources(plans))) == alnum(raw)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=narration(max_words=100), cfg=streaming_configs(feasible=True), cps=st.floats(14.0, 30.0))
def test_plan_invariants_hold(raw: str, cfg: ChunkerConfig, cps: float) -> None:
    r = SpeakingRate(chars_per_s=cps)
    check_plan(raw, plan_chunks(raw, r, cfg), r, cfg)

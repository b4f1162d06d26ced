"""Turns through the text actors: in-process (``TextSourceActor`` with a ``send`` list) and
through a real ``skald serve`` whose prelude and narrative actors run the transformers backend.

The model is ``tests.tiny_lm`` (tiny, random, built locally, never downloaded): its text is
gibberish, which is all these tests need -- they check the order of pieces, the opener's word
limit, the hand-over from prelude to narrative, cancellation and errors, never the prose.
"""

from __future__ import annotations

import ast
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import wire
from actors.text.llm import OpenAIChatGenerator, TransformersGenerator
from actors.text_source import NARRATIVE, PRELUDE, TextSourceActor
from config.settings import TextActorSettings
from tests import tiny_lm


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CONTEXT = "The crypt is cold. Water drips somewhere ahead."
ACTION = "I raise the torch and step inside."


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_lm.build(tmp_path_factory.getbasetemp() / "tiny-lm")


@pytest.fixture(scope="module")
def generators(tiny_lm_dir: Path) -> dict[str, TransformersGenerator]:
    """One loaded model per role, as in the two actor processes."""
    return {role: TransformersGenerator(str(tiny_lm_dir), device="cpu") for role in (PRELUDE, NARRATIVE)}


def _settings(**kw: object) -> TextActorSettings:
    return TextActorSettings(backend="transformers", **kw)  # type: ignore[arg-type]


class Pair:
    """A prelude and a narrative actor wired as the supervisor wires them: ``PreludeDone``
    from the prelude goes to the narrative. Every message either sends lands in ``log``."""

    def __init__(
        self,
        generators: dict[str, TransformersGenerator],
        prelude: TextActorSettings | None = None,
        narrative: TextActorSettings | None = None,
    ) -> None:
        self.log: list[wire.Message] = []
        self.narrative = TextSourceActor(
            NARRATIVE, "transformers", self.log.append, narrative or _settings(max_tokens=40), generators[NARRATIVE]
        )

        def relay(msg: wire.Message) -> None:
            self.log.append(msg)
            if isinstance(msg, wire.PreludeDone):
                self.narrative.handle(msg)

        self.prelude = TextSourceActor(
            PRELUDE, "transformers", relay, prelude or _settings(max_words=6, max_tokens=40), generators[PRELUDE]
        )
        self.prelude.start()
        self.narrative.start()

    def turn(self, request_id: str, **kw: object) -> wire.Turn:
        msg = wire.Turn(request_id=request_id, context=CONTEXT, player_action=ACTION, **kw)  # type: ignore[arg-type]
        self.narrative.handle(msg)  # the supervisor forwards it to both at the same moment
        self.prelude.handle(msg)
        return msg

    def cancel(self, request_id: str = "", all: bool = False) -> None:
        msg = wire.Cancel(request_id=request_id, all=all)
        for actor in (self.narrative, self.prelude):
            actor.cancel(msg)  # what the IO thread's eager hook does the moment it arrives

    def of(self, request_id: str) -> list[wire.Message]:
        return [m for m in list(self.log) if getattr(m, "request_id", None) == request_id]

    def pieces(self, request_id: str, source: str) -> list[wire.TextPiece]:
        return [m for m in self.of(request_id) if isinstance(m, wire.TextPiece) and m.source == source]

    def wait(self, pred: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out; log: {self.log}"
            time.sleep(0.005)

    def finished(self, request_id: str) -> bool:
        return any(p.final for p in self.pieces(request_id, NARRATIVE))

    def close(self) -> None:
        self.prelude.close()
        self.narrative.close()


@pytest.fixture
def pair(generators: dict[str, TransformersGenerator]) -> Iterator[Pair]:
    pair = Pair(generators)
    yield pair
    pair.close()


def test_turn_prelude_pieces_then_prelude_done_then_narrative(pair: Pair) -> None:
    pair.turn("t1")
    pair.wait(lambda: pair.finished("t1"))
    msgs = pair.of("t1")
    prelude = pair.pieces("t1", PRELUDE)
    narrative = pair.pieces("t1", NARRATIVE)
    done = [m for m in msgs if isinstance(m, wire.PreludeDone)]
    # The opener: streamed in pieces, then one final, then PreludeDone with exactly its text.
    assert [p.final for p in prelude] == [False] * (len(prelude) - 1) + [True]
    assert len(prelude) >= 2 and prelude[-1].text == ""
    assert len(done) == 1 and done[0].text == "".join(p.text for p in prelude)
    assert 1 <= len(done[0].text.split()) <= 6
    assert msgs.index(prelude[-1]) < msgs.index(done[0])
    # The narrative: only after the prelude is done, in several pieces, one final at the end.
    assert msgs.index(done[0]) < msgs.index(narrative[0])
    assert [p.final for p in narrative] == [False] * (len(narrative) - 1) + [True]
    assert len([p for p in narrative if p.text]) >= 3
    assert not narrative[0].text[:1].isspace()  # the worker puts the space at the seam
    assert not any(isinstance(m, wire.Error) for m in msgs)


def test_narrative_starts_at_once_with_a_prefill(generators: dict[str, TransformersGenerator]) -> None:
    sent: list[wire.Message] = []
    generator = generators[NARRATIVE]
    actor = TextSourceActor(NARRATIVE, "transformers", sent.append, _settings(max_tokens=12), generator)
    actor.start()
    try:
        actor.handle(wire.Turn(request_id="p1", context=CONTEXT, player_action=ACTION))
        deadline = time.monotonic() + 10
        while generator._prefilled is None:  # prompt prefix in the KV cache before the prelude exists
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert sent == [m for m in sent if isinstance(m, wire.Metrics)]  # nothing spoken yet
        actor.handle(wire.PreludeDone(request_id="p1", text="You raise the torch and"))
        while not any(isinstance(m, wire.TextPiece) and m.final for m in sent):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert generator._prefilled is None  # consumed by the continuation
    finally:
        actor.close()


def test_cancel_during_narrative_sends_nothing_more(generators: dict[str, TransformersGenerator]) -> None:
    pair = Pair(generators, narrative=_settings(max_tokens=4000))
    try:
        pair.turn("c1")
        pair.wait(lambda: len(pair.pieces("c1", NARRATIVE)) >= 3)
        pair.cancel("c1")
        sent_at_cancel = len(pair.of("c1"))
        # The worker is free again: the next turn runs to its end (on the same generation thread,
        # so by then the cancelled one has unwound: anything it still sent would be in the log).
        pair.narrative.settings = _settings(max_tokens=10)
        pair.turn("c2")
        pair.wait(lambda: pair.finished("c2"))
        assert len(pair.of("c1")) == sent_at_cancel, "pieces were sent after the cancel was handled"
        assert not pair.finished("c1")
    finally:
        pair.close()


def test_cancel_all_stops_queued_and_waiting_turns(pair: Pair) -> None:
    for rid in ("q1", "q2", "q3"):
        pair.turn(rid)
    pair.cancel(all=True)
    counts = {rid: len(pair.of(rid)) for rid in ("q1", "q2", "q3")}
    assert not any(pair.narrative._jobs) and not any(pair.prelude._jobs)
    pair.turn("q4")
    pair.wait(lambda: pair.finished("q4"))  # the generation threads got past every cancelled turn
    assert {rid: len(pair.of(rid)) for rid in counts} == counts


def test_cancel_while_the_narrative_waits_for_its_prelude(generators: dict[str, TransformersGenerator]) -> None:
    sent: list[wire.Message] = []
    actor = TextSourceActor(NARRATIVE, "transformers", sent.append, _settings(max_tokens=8), generators[NARRATIVE])
    actor.start()
    try:
        actor.handle(wire.Turn(request_id="w1", context=CONTEXT, player_action=ACTION))
        deadline = time.monotonic() + 10
        while actor.current != "w1":  # the generation thread took it and waits for its prelude
            assert time.monotonic() < deadline
            time.sleep(0.005)
        actor.handle(wire.Cancel(request_id="w1"))
        actor.handle(wire.PreludeDone(request_id="w1", text="Too late."))
        actor.handle(wire.Turn(request_id="w2", context=CONTEXT, player_action=ACTION))
        actor.handle(wire.PreludeDone(request_id="w2", text="In time."))
        deadline = time.monotonic() + 10
        while not any(isinstance(m, wire.TextPiece) and m.final and m.request_id == "w2" for m in sent):
            assert time.monotonic() < deadline, sent
            time.sleep(0.005)
        assert not [m for m in sent if getattr(m, "request_id", "") == "w1"]
    finally:
        actor.close()


def test_a_cancel_that_overtakes_its_turn_in_the_inbox_wins(generators: dict[str, TransformersGenerator]) -> None:
    """The IO thread applies a Cancel eagerly while the Turn before it still waits in the inbox:
    that Turn must not start when the loop gets to it."""
    sent: list[wire.Message] = []
    actor = TextSourceActor(PRELUDE, "transformers", sent.append, _settings(max_tokens=8), generators[PRELUDE])
    actor.start()
    try:
        for cancel in (wire.Cancel(request_id="o1"), wire.Cancel(all=True)):
            actor.on_eager(cancel)  # arrives; the Turn below was queued before it
            actor.handle(wire.Turn(request_id="o1", player_action=ACTION))
            actor.handle(cancel)  # the ordered copy
        actor.handle(wire.Turn(request_id="o2", player_action=ACTION))  # after the cancels: runs
        deadline = time.monotonic() + 10
        while not any(isinstance(m, wire.PreludeDone) for m in sent):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert {getattr(m, "request_id", "") for m in sent} - {""} == {"o2"}
    finally:
        actor.close()


def test_server_down_becomes_an_error_then_a_final_piece() -> None:
    sent: list[wire.Message] = []
    dead = OpenAIChatGenerator(f"http://127.0.0.1:{free_port()}/v1", "m")
    actor = TextSourceActor(NARRATIVE, "openai", sent.append, TextActorSettings(backend="openai"), dead)
    actor.start()
    try:
        actor.handle(wire.Turn(request_id="e1", context="", player_action=ACTION))
        actor.handle(wire.PreludeDone(request_id="e1", text="Well."))
        deadline = time.monotonic() + 10
        while not any(isinstance(m, wire.TextPiece) for m in sent):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        mine = [m for m in sent if getattr(m, "request_id", "") == "e1"]
        assert isinstance(mine[0], wire.Error) and mine[0].kind == "model_unavailable"
        assert mine[0].actor == NARRATIVE and "is the server running" in mine[0].message
        assert mine[1:] == [wire.TextPiece(request_id="e1", source="narrative", text="", final=True)]
    finally:
        actor.close()


def test_missing_model_dir_fails_each_turn_but_the_prelude_still_hands_over(tmp_path: Path) -> None:
    sent: list[wire.Message] = []
    settings = _settings(model=str(tmp_path / "missing"))
    actor = TextSourceActor(PRELUDE, "transformers", sent.append, settings)
    assert "not a model directory" in actor.ready_info()["load_error"]
    actor.start()
    try:
        actor.handle(wire.Turn(request_id="m1", player_action=ACTION))
        deadline = time.monotonic() + 5
        while not any(isinstance(m, wire.PreludeDone) for m in sent):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        kinds = [type(m).__name__ for m in sent if getattr(m, "request_id", "") == "m1"]
        assert kinds == ["Error", "TextPiece", "PreludeDone"]
        assert sent[-1] == wire.PreludeDone(request_id="m1", text="")  # the narrative goes on without it
    finally:
        actor.close()


def test_text_backend_answers_a_turn_instead_of_hanging() -> None:
    sent: list[wire.Message] = []
    actor = TextSourceActor(NARRATIVE, "text", sent.append)
    actor.handle(wire.Turn(request_id="x1", player_action=ACTION))
    assert [type(m).__name__ for m in sent] == ["Error", "TextPiece"]
    assert sent[1] == wire.TextPiece(request_id="x1", source="narrative", text="", final=True)


def _alnum(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


@pytest.mark.slow
def test_turn_through_a_real_server_speaks_the_prelude_first(make_server: Any, tiny_lm_dir: Path) -> None:
    model = str(tiny_lm_dir)
    server = make_server(
        SKALD_AUDIO_SINK="null",
        SKALD_ACTORS_PRELUDE_BACKEND="transformers",
        SKALD_ACTORS_PRELUDE_MODEL=model,
        SKALD_ACTORS_PRELUDE_DEVICE="cpu",
        SKALD_ACTORS_PRELUDE_MAX_WORDS="5",
        SKALD_ACTORS_NARRATIVE_BACKEND="transformers",
        SKALD_ACTORS_NARRATIVE_MODEL=model,
        SKALD_ACTORS_NARRATIVE_DEVICE="cpu",
        SKALD_ACTORS_NARRATIVE_MAX_TOKENS="12",
        SKALD_ACTORS_PRELUDE_THREADS="1",  # leave the TTS worker a core on a 2-core CI machine
        SKALD_ACTORS_NARRATIVE_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    with server.client(timeout_s=10) as client:
        accepted = client.request(wire.Turn(context=CONTEXT, player_action=ACTION))
        assert isinstance(accepted, wire.Accepted)
        rid = accepted.request_id
        finished, events = client.wait_for(rid, timeout_s=60)
        mine = [e for e in events if getattr(e, "request_id", "") == rid]
        assert finished.status == "done", (finished, mine, server.log()[-3000:])
        assert not [e for e in mine if isinstance(e, wire.Error)], mine
        chunks = [e for e in mine if isinstance(e, wire.ChunkPlanned)]
        assert chunks and any(isinstance(e, wire.PlaybackStarted) for e in mine)
        found = re.search(rf"turn {rid} opener \(\d+ words\): (.+)$", server.log(), re.MULTILINE)
        assert found, server.log()[-3000:]
        opener = ast.literal_eval(found.group(1))
        assert 1 <= len(opener.split()) <= 5
        # source: the opener as the model wrote it (text is normalized: "3" is said "three")
        spoken = _alnum("".join(c.source for c in sorted(chunks, key=lambda c: c.index)))
        assert spoken.startswith(_alnum(opener)) and len(spoken) > len(_alnum(opener)), (opener, chunks)
        # A cancel in the middle of a turn ends it at once.
        accepted = client.request(wire.Turn(context=CONTEXT, player_action="I run."))
        assert isinstance(accepted, wire.Accepted)
        client.cancel(accepted.request_id)
        finished, _ = client.wait_for(accepted.request_id, timeout_s=10)
        assert finished.status == "cancelled"
    assert server.stop() == 0

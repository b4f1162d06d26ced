"""Wire protocol: round trips, and every kind of bad input becomes a WireError, never a crash."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import wire


def test_every_message_round_trips() -> None:
    samples = [
        wire.Speak(request_id="r1", text="Hello.", voice="v", priority=2, streaming=True, prelude="Hm."),
        wire.Turn(request_id="t1", context="A crypt.", player_action="I open the door.", barge_in="interrupt"),
        wire.Append(request_id="r1", text=" more"),
        wire.End(request_id="r1"),
        wire.Cancel(all=True),
        wire.StatusQuery(),
        wire.Accepted(request_id="r1", t_accepted=1.5),
        wire.ChunkPlanned(request_id="r1", index=0, text="Hello.", est_s=0.4),
        wire.ChunkSynthesized(request_id="r1", index=0, dur_s=0.5, synth_ms=12.0, engine="piper"),
        wire.Subscribed(subscribers=2),
        wire.PlaybackStarted(request_id="r1", ttfa_ms=90.0),
        wire.Underrun(request_id="r1", frames=256, count=1),
        wire.RequestFinished(request_id="r1", status="done", audio_s=1.0),
        wire.Silenced(request_id="r1", t_silent=2.5),
        wire.Error(kind="bad_request", message="no", actor="supervisor", request_id="r1"),
        wire.Status(actors={"a": {"pid": 1}}, requests=[], ring={}, uptime_s=1.0),
        wire.Ready(role=wire.Role.TTS_WORKER, pid=1, info={"x": 1}),
        wire.OpenRequest(request_id="r1"),
        wire.TextPiece(request_id="r1", source="narrative", text="a", final=True),
        wire.Segment(request_id="r1", index=0, start=0, end=10, last=False),
        wire.PreludeDone(request_id="t1", text="The door creaks."),
        wire.Skip(start=10, end=20, reopen=["r1"], reason="preempted"),
        wire.Shutdown(reason="x"),
        wire.Metrics(role=wire.Role.TTS_WORKER, values={"q": 1}),
        wire.ConfigGet(key="prebuffer.start_s"),
        wire.ConfigSet(values={"prebuffer.start_s": "1.0"}),
        wire.ConfigValues(values={"prebuffer.start_s": 0.5}, live=["prebuffer.start_s"], origins={}),
        wire.ConfigChanged(changed={"prebuffer.start_s": 1.0}, previous={"prebuffer.start_s": 0.5}, source="x"),
        wire.ConfigUpdate(settings={"prebuffer": {"start_s": 1.0}}, changed=["prebuffer.start_s"], log_level=20),
        wire.MetricsQuery(),
        wire.MetricsText(text="skald_requests_active 0.0\n"),
        wire.AudioOutputRestored(device="pulse", down_s=4.2, held=True, replayed_s=1.9),
    ]
    assert {type(m) for m in samples} == set(wire.MESSAGE_TYPES.values())
    for msg in samples:
        assert wire.decode(wire.encode(msg)) == msg


def test_payload_is_plain_msgpack_with_version() -> None:
    kind, payload = wire.encode(wire.Speak(text="Hi."))
    assert kind == b"speak"
    decoded = msgpack.unpackb(payload)
    assert decoded["v"] == wire.PROTOCOL_VERSION and decoded["text"] == "Hi."
    # A client using only the msgpack package can build requests, with fields omitted.
    assert wire.decode([b"speak", msgpack.packb({"v": 1, "text": "Hi."})]) == wire.Speak(text="Hi.")


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    payload = msgpack.packb({"v": 1, "text": "Hi.", "field_from_the_future": [1, 2]})
    assert isinstance(wire.decode([b"speak", payload]), wire.Speak)


@pytest.mark.parametrize(
    ("frames", "kind"),
    [
        ([b"speak", b"\xc1\xff\x00garbage"], "malformed"),
        ([b"speak", msgpack.packb({"v": 1, "text": 5})], "malformed"),
        ([b"speak", msgpack.packb([1, 2, 3])], "malformed"),
        ([b"speak", b"\xa3\xff\xfe\xfd"], "malformed"),  # msgpack str holding invalid UTF-8
        ([b"speak", msgpack.packb({"v": 1, "text": b"\xff\xfe".decode("latin-1").encode("latin-1")})], "malformed"),
        ([b"launch_missiles", msgpack.packb({"v": 1})], "unknown_kind"),
        ([b"speak", msgpack.packb({"v": 99, "text": "Hi."})], "wrong_version"),
        ([b"speak"], "malformed"),
        ([b"speak", b"", b""], "malformed"),
    ],
)
def test_bad_frames_raise_wire_error(frames: list[bytes], kind: str) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.decode(frames)
    assert info.value.kind == kind
    assert info.value.message


def test_oversized_payload_is_rejected_before_decoding() -> None:
    frames = wire.encode(wire.Speak(text="x" * 2000))
    with pytest.raises(wire.WireError) as info:
        wire.decode(frames, max_payload=1024)
    assert info.value.kind == "oversized" and "1024" in info.value.message


@given(st.binary(max_size=512), st.sampled_from(sorted(wire.MESSAGE_TYPES)))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_escape_as_other_exceptions(payload: bytes, kind: bytes) -> None:
    try:
        wire.decode([kind, payload])
    except wire.WireError:
        pass


@pytest.mark.parametrize(
    ("text", "kind", "fragment"),
    [
        ("", "bad_request", "empty"),
        ("   \n\t ", "bad_request", "empty"),
        ("x" * 101, "oversized", "limit is 100"),
        ("bell\x07here", "bad_request", "U+0007 at offset 4"),
        ("nul\x00", "bad_request", "U+0000"),
        ("c1\x85", "bad_request", "U+0085"),
    ],
)
def test_validate_text_rejects_what_cannot_be_narration(text: str, kind: str, fragment: str) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.validate_text(text, 100)
    assert info.value.kind == kind and fragment in info.value.message


def test_validate_text_accepts_narration_with_newlines_tabs_and_unicode() -> None:
    wire.validate_text("Zoë and Ærenfell —\n\tthe end.\r\n", 100)


def test_numpy_scalars_encode_as_plain_numbers() -> None:
    import numpy as np

    msg = wire.PlaybackStarted(request_id="r1", ttfa_ms=np.float64(81.5))  # type: ignore[arg-type]
    assert wire.decode(wire.encode(msg)) == wire.PlaybackStarted(request_id="r1", ttfa_ms=81.5)
    seg = wire.Segment(request_id="r1", index=np.int64(2), start=np.int64(0), end=np.int64(5))  # type: ignore[arg-type]
    assert wire.decode(wire.encode(seg)).end == 5


@pytest.mark.parametrize(
    ("kind", "fields", "where"),
    [
        (b"speak", {"request_id": "r7", "text": "Hi.", "barge_in": "shout"}, "$.barge_in"),
        (b"turn", {"request_id": "r7", "player_action": "I run.", "barge_in": 3}, "$.barge_in"),
        (b"request_finished", {"request_id": "r7", "status": "maybe"}, "$.status"),
        (b"text_piece", {"request_id": "r7", "source": "tts_worker", "text": "a"}, "$.source"),
        (b"error", {"request_id": "r7", "kind": "oops", "message": "m"}, "$.kind"),
        (b"metrics", {"role": "mixer"}, "$.role"),
    ],
)
def test_a_value_outside_an_enum_field_is_a_bad_request_naming_the_field(
    kind: bytes, fields: dict[str, object], where: str
) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.decode([kind, msgpack.packb({"v": 1, **fields})])
    # A string outside the set is well-formed but meaningless (bad_request, as the supervisor's own
    # check answered before); a value of the wrong type is malformed.
    expected = "malformed" if fields.get("barge_in") == 3 else "bad_request"
    assert info.value.kind == expected and where in info.value.message
    if expected == "bad_request":
        assert info.value.request_id == fields.get("request_id", "")


def test_roles_and_enum_fields_travel_as_plain_strings() -> None:
    _kind, payload = wire.encode(wire.Metrics(role=wire.Role.AUDIO_CONSUMER))
    assert msgpack.unpackb(payload)["role"] == "audio_consumer"
    decoded = wire.decode([b"ready", msgpack.packb({"v": 1, "role": "prelude", "pid": 3})])
    assert isinstance(decoded, wire.Ready) and decoded.role is wire.Role.PRELUDE
    assert wire.ERROR_KINDS[0] == "malformed" and "internal" in wire.ERROR_KINDS


def test_chunk_span_is_one_type_from_the_worker_to_the_event() -> None:
    span = wire.ChunkSpan(out_start=100, out_end=900, lead_pad=3, src_start=7, kept=780, overlap_in=20)
    event = wire.ChunkSynthesized.of("r1", 2, 0.5, 12.0, "piper", span)
    received = wire.decode(wire.encode(event))
    assert isinstance(received, wire.ChunkSynthesized) and received.span == span
    # Flat on the wire, as older clients read it.
    assert msgpack.unpackb(wire.encode(event)[1])["out_end"] == 900
    assert wire.ChunkSynthesized.of("r1", 3, 0.0, 1.0, "none", None).span is None


def test_endpoints_come_from_one_rule() -> None:
    assert wire.endpoints("/run/x") == wire.Endpoints(
        "ipc:///run/x/control.sock", "ipc:///run/x/events.sock", "ipc:///run/x/actors.sock"
    )
    moved = wire.endpoints("/run/x", control="tcp://127.0.0.1:5555", events="tcp://127.0.0.1:5556")
    assert (moved.control, moved.events, moved.actors) == (
        "tcp://127.0.0.1:5555",
        "tcp://127.0.0.1:5556",
        "ipc:///run/x/actors.sock",
    )

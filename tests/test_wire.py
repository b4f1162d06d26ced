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
        wire.PlaybackStarted(request_id="r1", ttfa_ms=90.0),
        wire.Underrun(request_id="r1", frames=256, count=1),
        wire.RequestFinished(request_id="r1", status="done", audio_s=1.0),
        wire.Silenced(request_id="r1", t_silent=2.5),
        wire.Error(kind="bad_request", message="no", actor="supervisor", request_id="r1"),
        wire.Status(actors={"a": {"pid": 1}}, requests=[], ring={}, uptime_s=1.0),
        wire.Ready(role="tts_worker", pid=1, info={"x": 1}),
        wire.OpenRequest(request_id="r1"),
        wire.TextPiece(request_id="r1", source="narrative", text="a", final=True),
        wire.Segment(request_id="r1", index=0, start=0, end=10, last=False),
        wire.PreludeDone(request_id="t1", text="The door creaks."),
        wire.Skip(start=10, end=20, reopen=["r1"], reason="preempted"),
        wire.Shutdown(reason="x"),
        wire.Metrics(role="tts_worker", values={"q": 1}),
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

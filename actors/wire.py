"""Every message that crosses a process boundary in skald, typed, in one place.

Wire format (one ZeroMQ multipart message per skald message)::

    frame 0: kind      ASCII name, e.g. b"speak"  -- receivers dispatch on it before decoding
    frame 1: payload   msgpack map of the message's fields, always with "v" (protocol version)

Why msgspec: it decodes msgpack straight into typed ``Struct`` classes and validates every
field's type in C while doing so, so a malformed message becomes one ``WireError`` at the
socket edge instead of a ``KeyError`` deep inside an actor. The bytes on the wire are plain
msgpack: any client with a msgpack library can talk to skald (``docs/protocol.md`` uses the
``msgpack`` package on purpose to show it).

Compatibility rules: fields are only ever appended, always with a default; unknown fields
are ignored on decode, so an older peer can read a newer message. A message whose ``v`` is
greater than ``PROTOCOL_VERSION`` is rejected with an error event (its meaning may have
changed). PCM never travels here; it goes through ``shm.PcmRing``.
"""

from __future__ import annotations

import enum
import re
from typing import Any, ClassVar, Literal, NamedTuple, get_args

import msgspec

PROTOCOL_VERSION = 1


class Role(enum.StrEnum):
    """The actor processes, by role: the DEALER identity on ``actors.sock``, the process title
    (``skald::<role>``), ``Ready.role``/``Metrics.role`` and ``Error.actor``. Defined once, here,
    because the supervisor, the actors and the clients all import this module."""

    PRELUDE = "prelude"
    NARRATIVE = "narrative"
    TTS_WORKER = "tts_worker"
    AUDIO_CONSUMER = "audio_consumer"
    #: A second TTS worker, started with the HTTP gateway: it synthesizes renders (audio sent to
    #: HTTP clients, never played on the stage) into a ring of its own, at a lower OS priority.
    TTS_RENDER = "tts_render"
    #: The HTTP gateway (``skald serve --http``): OpenAI-compatible speech API, native narration API.
    WEB = "web"


#: The text actors (where a request's text comes from), prelude first.
TEXT_ROLES: tuple[Role, Role] = (Role.PRELUDE, Role.NARRATIVE)

# Enum-like wire fields are Literals: msgspec rejects any other value while decoding, so a bad
# value becomes one error reply at the socket edge (see ``decode``) instead of a string checked by
# hand somewhere inside.
BargeIn = Literal["queue", "interrupt"]
RequestStatus = Literal["done", "cancelled", "failed"]
#: Where a request's audio goes: the stage (skald's own output, the live narration) or a render
#: (synthesized for one HTTP client by the render worker; never played on the stage).
Output = Literal["stage", "render"]
TextSource = Literal["prelude", "narrative"]
ErrorKind = Literal[
    "malformed",  # payload is not msgpack / fields of the wrong type / invalid UTF-8
    "unknown_kind",  # first frame names no message
    "wrong_version",  # v > PROTOCOL_VERSION
    "oversized",  # payload or text over the configured limit
    "bad_request",  # well-formed but meaningless (empty text, control characters, unknown id, bad enum value)
    "actor_crashed",  # a child process died; it is being restarted
    "actor_failed",  # a child process could not be (re)started; giving up
    "synthesis_failed",  # the engine raised on a chunk (and on its retry, with no fallback)
    "engine_failed",  # the main engine failed a chunk twice: the fallback engine finishes the request
    "engine_unavailable",  # the main engine could not be loaded (no CUDA, model files missing)
    "model_unavailable",  # a language model cannot be loaded or its server cannot be reached
    "generation_failed",  # a language model failed mid-turn (HTTP error, broken stream, timeout)
    "audio_output",  # the sink failed (device lost, ...)
    "internal",
]
#: The text source each text actor speaks for (``TextPiece.source``).
TEXT_SOURCE_OF: dict[Role, TextSource] = {Role.PRELUDE: "prelude", Role.NARRATIVE: "narrative"}


class Endpoints(NamedTuple):
    """Where a supervisor listens: ``control`` (ROUTER, requests), ``events`` (XPUB, events) and
    ``actors`` (ROUTER, the actor processes)."""

    control: str
    events: str
    actors: str


def endpoints(run_dir: str, control: str = "", events: str = "") -> Endpoints:
    """The one rule for a supervisor's endpoints: the configured ones (``supervisor.control_endpoint``,
    ``supervisor.events_endpoint``) when set, else ipc sockets in its run dir. The supervisor binds
    these and every client derives them the same way."""
    return Endpoints(
        control=control or f"ipc://{run_dir}/control.sock",
        events=events or f"ipc://{run_dir}/events.sock",
        actors=f"ipc://{run_dir}/actors.sock",
    )


#: Hard cap on a payload the decoder will even look at; the configured limit is usually lower.
ABSOLUTE_MAX_PAYLOAD = 64 * 1024 * 1024


class WireError(Exception):
    """A message could not be accepted. ``kind`` is the error kind reported to the sender."""

    def __init__(self, kind: ErrorKind, message: str, request_id: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.request_id = request_id


class Message(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Base of every wire message. ``KIND`` is the first ZeroMQ frame."""

    KIND: ClassVar[bytes] = b""
    v: int = PROTOCOL_VERSION


# --------------------------------------------------------------------------------------------
# Requests: orchestrator client -> supervisor
# --------------------------------------------------------------------------------------------


class Speak(Message, kw_only=True):
    """Speak ``text``. With ``streaming=True`` more text follows in ``Append`` and ``End``.

    ``request_id`` may be empty: the supervisor then assigns one and returns it in ``Accepted``.
    ``priority``: higher is served first among queued requests (0 = normal).
    ``prelude``: optional opener spoken before ``text`` (the prelude actor's input).
    ``output``: ``"render"`` is for the HTTP gateway (``Role.WEB``): the render worker synthesizes
    it into the gateway's ring; it is never played and never barges in on the stage.
    """

    KIND: ClassVar[bytes] = b"speak"
    request_id: str = ""
    text: str = ""
    voice: str = ""
    priority: int = 0
    streaming: bool = False
    prelude: str = ""
    barge_in: BargeIn = "queue"  # "queue": after what is playing; "interrupt": cancel everything first
    output: Output = "stage"  # "render": synthesized for the HTTP gateway, not played (web actor only)
    speed: float = 1.0  # speaking rate, 0.25-4.0 (Piper length scale, XTTS speed)


class Turn(Message, kw_only=True):
    """A game turn: the prelude model speaks a short opener at once while the narrative model
    writes the continuation; both are spoken as one request (prelude first, no gap).

    ``context`` is the story so far (or a summary), ``player_action`` what the player just did.
    Needs language-model backends on both text actors (``actors.prelude/narrative.backend``).
    """

    KIND: ClassVar[bytes] = b"turn"
    request_id: str = ""
    context: str = ""
    player_action: str
    voice: str = ""
    priority: int = 0
    barge_in: BargeIn = "queue"


class Append(Message, kw_only=True):
    """More text for a streaming request (e.g. tokens from a language model)."""

    KIND: ClassVar[bytes] = b"append"
    request_id: str
    text: str


class End(Message, kw_only=True):
    """No more text will follow for a streaming request."""

    KIND: ClassVar[bytes] = b"end"
    request_id: str


class Cancel(Message, kw_only=True):
    """Stop a request (or every request with ``all=True``) at once: nothing more of it is heard."""

    KIND: ClassVar[bytes] = b"cancel"
    request_id: str = ""
    all: bool = False
    # Supervisor -> audio consumer only: the requests an ``all`` cancel stops, so that each gets
    # its ``Silenced`` even when none of its audio had reached the consumer yet.
    request_ids: list[str] = msgspec.field(default_factory=list)


class StatusQuery(Message, kw_only=True):
    """Ask for a ``Status`` reply."""

    KIND: ClassVar[bytes] = b"status"


# --------------------------------------------------------------------------------------------
# Events: supervisor -> clients (published; replies to the sender use the same types)
# --------------------------------------------------------------------------------------------


class Accepted(Message, kw_only=True):
    """The request was accepted; ``t_accepted`` is CLOCK_MONOTONIC seconds on the server."""

    KIND: ClassVar[bytes] = b"accepted"
    request_id: str
    t_accepted: float


class ChunkPlanned(Message, kw_only=True):
    """The chunker decided a chunk (text as it will be spoken, estimated seconds)."""

    KIND: ClassVar[bytes] = b"chunk_planned"
    request_id: str
    index: int
    text: str
    est_s: float
    voice: str = ""  # set when an inline [voice:NAME] tag chose another voice for this chunk
    source: str = ""  # the characters as written ("1492" where text says "fourteen ninety-two")


class ChunkSpan(msgspec.Struct, frozen=True, kw_only=True):
    """Where one chunk lies in its request's joined audio, in frames from the request's first
    frame: output frame ``out_start + lead_pad + i`` is engine frame ``src_start + i`` for
    ``0 <= i < kept``; the first ``overlap_in`` and last ``overlap_out`` frames are crossfaded with
    the neighbours (``overlap_out`` is known only once the next chunk is mixed).

    The one span type from the worker to the report: the worker builds it from the joiner's
    ``ChunkSpan``, ``ChunkSynthesized`` carries exactly these fields (flat, for older clients),
    and ``RequestRecord.chunks`` and the ``speak --report`` JSON hold it as is."""

    out_start: int
    out_end: int
    lead_pad: int = 0
    src_start: int = 0
    kept: int = 0
    overlap_in: int = 0
    overlap_out: int = 0


class ChunkSynthesized(Message, kw_only=True):
    """A chunk's audio is in the ring: real duration, the engine's compute time (``synth_ms``)
    and, apart, how long pushing it waited for ring space (``wait_ms``: backpressure from the
    overfill guard on a paced sink, no part of the engine's cost).

    The span fields are ``ChunkSpan``'s, flat on the wire (``span`` reads them back as one);
    ``out_end`` is -1 when the chunk produced no audio.
    """

    KIND: ClassVar[bytes] = b"chunk_synthesized"
    request_id: str
    index: int
    dur_s: float
    synth_ms: float
    engine: str = ""
    # Where the chunk lies in the request's joined audio (frames from the request's first frame):
    # output frame out_start + lead_pad + i is engine frame src_start + i for 0 <= i < kept; the
    # first overlap_in and last overlap_out frames are crossfaded with the neighbours.
    out_start: int = -1
    out_end: int = -1
    lead_pad: int = 0
    src_start: int = 0
    kept: int = 0
    overlap_in: int = 0
    overlap_out: int = 0
    wait_ms: float = 0.0  # the worker's wait for ring space while pushing this chunk

    @classmethod
    def of(
        cls,
        request_id: str,
        index: int,
        dur_s: float,
        synth_ms: float,
        engine: str,
        span: ChunkSpan | None,
        wait_ms: float = 0.0,
    ) -> ChunkSynthesized:
        fields = msgspec.structs.asdict(span) if span is not None else {}
        return cls(
            request_id=request_id, index=index, dur_s=dur_s, synth_ms=synth_ms, engine=engine, wait_ms=wait_ms, **fields
        )

    @property
    def span(self) -> ChunkSpan | None:
        if self.out_end < 0:
            return None
        return ChunkSpan(**{f: getattr(self, f) for f in ChunkSpan.__struct_fields__})


class PlaybackStarted(Message, kw_only=True):
    """The request's first sample reached the sink. ``ttfa_ms`` runs from acceptance to the
    moment the first sample is audible (PortAudio's ``outputBufferDacTime`` on a device)."""

    KIND: ClassVar[bytes] = b"playback_started"
    request_id: str
    ttfa_ms: float


class Underrun(Message, kw_only=True):
    """The sink needed audio that was not there while a request was playing."""

    KIND: ClassVar[bytes] = b"underrun"
    request_id: str
    frames: int
    count: int


class RequestFinished(Message, kw_only=True):
    """Terminal event of a request. ``status``: ``done`` | ``cancelled`` | ``failed``."""

    KIND: ClassVar[bytes] = b"request_finished"
    request_id: str
    status: RequestStatus
    audio_s: float = 0.0
    underruns: int = 0
    ttfa_ms: float = -1.0
    reason: str = ""
    device_underflows: int = 0  # the device itself ran dry (callback late): a gap skald did not cause
    resumed: int = 0  # times the request was picked up again after its TTS worker died


class Silenced(Message, kw_only=True):
    """A cancelled request's audio has stopped: ``t_silent`` (server CLOCK_MONOTONIC seconds) is
    when the end of its fade-out reaches the speaker, by the device's DAC clock. A client that
    noted ``time.monotonic()`` when it sent the cancel gets cancel-to-silence as the difference.
    ``was_audible`` is false when nothing of the request had been heard yet."""

    KIND: ClassVar[bytes] = b"silenced"
    request_id: str
    t_silent: float
    was_audible: bool = True
    t_cancel_seen: float = 0.0  # when the audio consumer applied the cancel (same clock)


class Error(Message, kw_only=True):
    """An error, as data. ``kind`` is machine-readable (see ``ERROR_KINDS``)."""

    KIND: ClassVar[bytes] = b"error"
    kind: ErrorKind
    message: str
    actor: str = ""
    request_id: str = ""


class Status(Message, kw_only=True):
    """Reply to ``StatusQuery``: actors, active requests, ring fill and counters."""

    KIND: ClassVar[bytes] = b"status_reply"
    actors: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    requests: list[dict[str, Any]] = msgspec.field(default_factory=list)
    ring: dict[str, Any] = msgspec.field(default_factory=dict)
    uptime_s: float = 0.0
    gpu: dict[str, Any] = msgspec.field(default_factory=dict)  # detection, tier, configuration in force
    recent: dict[str, Any] = msgspec.field(default_factory=dict)  # TTFA p50/p95, underruns, RTF: last minutes


class Subscribed(Message, kw_only=True):
    """Published each time a client subscribes to the events socket. Receiving any event proves a
    subscription is live, so a client that waits for this one after connecting (``SkaldClient``
    does) never misses the events of its first request (ZeroMQ's "slow joiner"). Carries nothing
    a client must read; clients that do not know it ignore it."""

    KIND: ClassVar[bytes] = b"subscribed"
    subscribers: int = 0  # subscriptions the server has seen since it started


ERROR_KINDS: tuple[str, ...] = get_args(ErrorKind)


# --------------------------------------------------------------------------------------------
# Internal: supervisor <-> actors
# --------------------------------------------------------------------------------------------


class Ready(Message, kw_only=True):
    """Startup handshake: the actor is built and listening. ``info`` is role-specific."""

    KIND: ClassVar[bytes] = b"ready"
    role: Role
    pid: int
    info: dict[str, Any] = msgspec.field(default_factory=dict)


class OpenRequest(Message, kw_only=True):
    """Supervisor -> tts worker: a request exists; its text arrives as ``TextPiece``s."""

    KIND: ClassVar[bytes] = b"open_request"
    request_id: str
    voice: str = ""
    priority: int = 0
    t_accepted: float = 0.0
    has_prelude: bool = False
    speed: float = 1.0  # speaking rate handed to the engine (``Speak.speed``)
    first_index: int = 0  # a resumed request's first chunk index (the chunks before it were spoken)


class TextPiece(Message, kw_only=True):
    """Text actor -> tts worker: the next piece of a request's text, in order.

    ``source`` is ``prelude`` or ``narrative``; the worker speaks the whole prelude first.
    ``final`` marks the last piece from that source.
    """

    KIND: ClassVar[bytes] = b"text_piece"
    request_id: str
    source: TextSource
    text: str
    final: bool = False


class Segment(Message, kw_only=True):
    """Tts worker -> audio consumer: ring frames ``[start, end)`` hold chunk ``index`` of a
    request. Sent after the frames are pushed, so the consumer never plays audio it has not
    been told about. ``last`` marks the request's final audio."""

    KIND: ClassVar[bytes] = b"segment"
    request_id: str
    index: int
    start: int
    end: int
    last: bool = False
    t_accepted: float = 0.0


class Skip(Message, kw_only=True):
    """Tts worker -> audio consumer: never play ring frames ``[start, end)``; an urgent request
    goes first and the worker pushes that audio again after it. ``reopen`` lists requests whose
    end the consumer must wait for again (a new ``Segment`` with ``last`` will come)."""

    KIND: ClassVar[bytes] = b"skip"
    start: int
    end: int
    reopen: list[str] = msgspec.field(default_factory=list)
    reason: str = ""


class PreludeDone(Message, kw_only=True):
    """Prelude actor -> narrative actor (relayed by the supervisor): the full opener that was
    spoken, so the narrative continues it instead of repeating it."""

    KIND: ClassVar[bytes] = b"prelude_done"
    request_id: str
    text: str


class Shutdown(Message, kw_only=True):
    """Supervisor -> actor: finish the current block and exit cleanly."""

    KIND: ClassVar[bytes] = b"shutdown"
    reason: str = ""


class Metrics(Message, kw_only=True):
    """Actor -> supervisor: periodic figures for ``status`` (rss, queue depth, ring fill...)."""

    KIND: ClassVar[bytes] = b"metrics"
    role: Role
    values: dict[str, Any] = msgspec.field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Runtime settings (``skald config``): client -> supervisor -> actors
# --------------------------------------------------------------------------------------------


class ConfigGet(Message, kw_only=True):
    """Ask for the settings in force (one dotted ``key``, or all when empty); replied ``ConfigValues``."""

    KIND: ClassVar[bytes] = b"config_get"
    key: str = ""


class ConfigSet(Message, kw_only=True):
    """Change settings of a running server: dotted key -> value (a string is read like a
    ``SKALD_*`` variable: ``"1.0"``, ``"true"``). Validated like start-up configuration; a key
    that needs a restart is refused. Replied ``ConfigChanged`` (also published), or ``Error``."""

    KIND: ClassVar[bytes] = b"config_set"
    values: dict[str, Any] = msgspec.field(default_factory=dict)


class ConfigValues(Message, kw_only=True):
    """Reply to ``ConfigGet``: ``values`` by dotted key, the ``live`` ones among them (changeable
    without a restart) and where each non-default value came from (``origins``)."""

    KIND: ClassVar[bytes] = b"config_values"
    values: dict[str, Any] = msgspec.field(default_factory=dict)
    live: list[str] = msgspec.field(default_factory=list)
    origins: dict[str, str] = msgspec.field(default_factory=dict)


class ConfigChanged(Message, kw_only=True):
    """Settings changed on a running server (``config_changed`` event, and the reply to
    ``ConfigSet``): ``changed`` new values and ``previous`` ones by dotted key; ``source`` is
    ``skald config set`` or ``SIGHUP <file>``; ``restart_needed`` lists keys a re-read file
    changed that only a restart applies (left as they were)."""

    KIND: ClassVar[bytes] = b"config_changed"
    changed: dict[str, Any] = msgspec.field(default_factory=dict)
    previous: dict[str, Any] = msgspec.field(default_factory=dict)
    source: str = ""
    restart_needed: list[str] = msgspec.field(default_factory=list)


class ConfigUpdate(Message, kw_only=True):
    """Supervisor -> actors: the settings now in force (``Settings.to_dict()``, validated), the
    keys that ``changed``, the audio consumer's start threshold (the GPU tier's pre-buffer, or
    ``prebuffer.start_s`` on the CPU tier) and the ``logging`` level for every process."""

    KIND: ClassVar[bytes] = b"config_update"
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    changed: list[str] = msgspec.field(default_factory=list)
    prebuffer_start_s: float = -1.0  # -1: unchanged
    log_level: int = 0  # 0: unchanged
# Added later (appended, so older peers keep their kinds): metrics for any control client
# --------------------------------------------------------------------------------------------


class MetricsQuery(Message, kw_only=True):
    """Ask for a ``MetricsText`` reply: the server's Prometheus metrics, so a control client (an
    HTTP gateway's ``/metrics``) can serve them without a port of its own on the supervisor."""

    KIND: ClassVar[bytes] = b"metrics_query"


class MetricsText(Message, kw_only=True):
    """Reply to ``MetricsQuery``: the Prometheus text exposition format (version 0.0.4)."""

    KIND: ClassVar[bytes] = b"metrics_text"
    text: str = ""


class AudioOutputRestored(Message, kw_only=True):
    """Audio consumer -> clients: the output device lost earlier (an ``audio_output`` error) plays
    again. ``down_s``: from the loss to the new stream; ``held``: the narration waited for it, and
    went on from the start of the chunk the loss cut (``replayed_s`` of audio played again)."""

    KIND: ClassVar[bytes] = b"audio_output_restored"
    device: str
    down_s: float = 0.0
    held: bool = True
    replayed_s: float = 0.0


_ALL: tuple[type[Message], ...] = (
    Speak,
    Turn,
    Append,
    End,
    Cancel,
    StatusQuery,
    Accepted,
    ChunkPlanned,
    ChunkSynthesized,
    PlaybackStarted,
    Underrun,
    RequestFinished,
    Silenced,
    Error,
    Status,
    Subscribed,
    Ready,
    OpenRequest,
    TextPiece,
    Segment,
    Skip,
    PreludeDone,
    Shutdown,
    Metrics,
    ConfigGet,
    ConfigSet,
    ConfigValues,
    ConfigChanged,
    ConfigUpdate,
    MetricsQuery,
    MetricsText,
    AudioOutputRestored,
)

MESSAGE_TYPES: dict[bytes, type[Message]] = {cls.KIND: cls for cls in _ALL}
_DECODERS: dict[bytes, msgspec.msgpack.Decoder[Any]] = {
    kind: msgspec.msgpack.Decoder(cls) for kind, cls in MESSAGE_TYPES.items()
}


def _encode_extra(obj: Any) -> Any:
    """numpy scalars (a float64 from a timing computation, an int64 index) go out as plain
    numbers: a stray numpy type must never take an actor down while it reports."""
    item = getattr(obj, "item", None)
    if callable(item):
        value = item()
        if isinstance(value, (int, float, bool)):
            return value
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_encode_extra)

#: Requests a client may send to the supervisor's control socket.
CLIENT_REQUESTS: frozenset[bytes] = frozenset(
    {
        Speak.KIND,
        Turn.KIND,
        Append.KIND,
        End.KIND,
        Cancel.KIND,
        StatusQuery.KIND,
        ConfigGet.KIND,
        ConfigSet.KIND,
        MetricsQuery.KIND,
    }
)


class _RequestIdOnly(msgspec.Struct):
    request_id: str = ""


_REQUEST_ID_DECODER = msgspec.msgpack.Decoder(_RequestIdOnly)


def _request_id_of(payload: bytes) -> str:
    """The request id of a payload that failed validation elsewhere, so its error names it."""
    try:
        return _REQUEST_ID_DECODER.decode(payload).request_id
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, ValueError):
        return ""


def encode(msg: Message) -> list[bytes]:
    """Return the multipart frames ``[kind, payload]`` for ``msg``."""
    return [msg.KIND, _ENCODER.encode(msg)]


def decode(frames: list[bytes], max_payload: int = ABSOLUTE_MAX_PAYLOAD) -> Message:
    """Decode ``[kind, payload]`` frames into a typed message, or raise ``WireError``.

    Never raises anything else for any input bytes: the caller turns ``WireError`` into an
    ``Error`` event for the sender and carries on.
    """
    if len(frames) != 2:
        raise WireError("malformed", f"expected 2 frames [kind, payload], got {len(frames)}")
    kind, payload = bytes(frames[0]), frames[1]
    decoder = _DECODERS.get(kind)
    if decoder is None:
        shown = kind[:40].decode("ascii", "backslashreplace")
        known = ", ".join(sorted(k.decode() for k in MESSAGE_TYPES))
        raise WireError("unknown_kind", f"unknown message kind {shown!r}; known kinds: {known}")
    if len(payload) > min(max_payload, ABSOLUTE_MAX_PAYLOAD):
        raise WireError(
            "oversized",
            f"{kind.decode()} payload is {len(payload)} bytes; the limit is {max_payload} bytes "
            "(protocol.max_message_bytes)",
        )
    try:
        msg: Message = decoder.decode(payload)
    except msgspec.ValidationError as exc:
        if str(exc).startswith("Invalid enum value"):
            # Well-formed, but a value outside an enum-like field's set (barge_in, status, ...).
            raise WireError("bad_request", f"{kind.decode()}: {exc}", _request_id_of(payload)) from None
        raise WireError("malformed", f"{kind.decode()}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError) as exc:
        raise WireError("malformed", f"{kind.decode()}: payload is not valid msgpack: {exc}") from None
    if msg.v > PROTOCOL_VERSION or msg.v < 1:
        raise WireError(
            "wrong_version",
            f"{kind.decode()} has protocol version {msg.v}; this server speaks version {PROTOCOL_VERSION}",
            getattr(msg, "request_id", ""),
        )
    return msg


# Unicode category Cc minus tab, newline and carriage return: C0/C1 controls and DEL are
# never speech and usually mean a binary payload or a broken encoder upstream.
_FORBIDDEN_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def validate_text(text: str, max_chars: int, *, allow_empty: bool = False, request_id: str = "") -> None:
    """Raise ``WireError`` if ``text`` cannot be narration: empty, too long, or with controls."""
    if not text.strip() and not allow_empty:
        raise WireError("bad_request", "text is empty; nothing to speak", request_id)
    if len(text) > max_chars:
        raise WireError(
            "oversized",
            f"text is {len(text)} characters; the limit is {max_chars} (protocol.max_text_chars). "
            "Send long narration as a streaming request (speak streaming=true, then append pieces).",
            request_id,
        )
    bad = _FORBIDDEN_CONTROL.search(text)
    if bad is not None:
        raise WireError(
            "bad_request",
            f"text contains control character U+{ord(bad.group()):04X} at offset {bad.start()}",
            request_id,
        )

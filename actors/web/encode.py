"""Streaming encoders for ``POST /v1/audio/speech``: float32 PCM blocks → bytes of one ``response_format``.

The web actor receives mono float32 blocks at the engine's ring rate as they are synthesized and
sends each block's bytes at once, so the client hears the first sentence while the rest is still
being rendered. ``make_encoder(fmt, input_rate)`` returns one ``StreamEncoder`` per response:
``encode(block)`` returns the bytes ready now (the first call always includes the container
header), ``finish()`` flushes codec and trailer. Encoders share nothing: one per render, any
number at once, each used from one thread at a time.

Formats, as OpenAI sends them (and Kokoro-FastAPI):

- ``pcm``: raw signed 16-bit little-endian mono at 24 kHz (``OUTPUT_RATE``), no header.
- ``wav``: a 44-byte RIFF/WAVE header (PCM 16-bit mono 24 kHz) whose RIFF and data sizes are
  0xFFFFFFFF, "length unknown", as ffmpeg and Kokoro-FastAPI write a streamed WAV, then ``pcm``.
- ``opus``: Opus in Ogg, 48 kHz, 20 ms frames; Ogg pages are closed every ``OGG_PAGE_DURATION_US``
  (the muxer's default is one second, which would hold the first audio back that long).
- ``mp3``: MPEG-2 Layer III at 24 kHz (576-sample frames), after an ID3v2 tag.
- ``aac``: AAC-LC in ADTS (self-framed, so it streams) at 24 kHz, after an ID3v2 tag: ADTS has no
  header, and the encoder needs two 1024-sample frames before its first packet, so the tag is
  what the first call returns (ffmpeg, browsers and HLS players skip ID3 in front of ADTS).
- ``flac``: FLAC at 24 kHz, 16-bit, 1152-sample blocks (48 ms; the default would be 96 ms). The
  STREAMINFO's length and MD5 stay zero ("unknown"): the stream is never rewound to fill them in.

Every format resamples with soxr (``actors.audio.resample.Resampler``, HQ, tens of ms of delay) to
its own rate; the compressed ones go through PyAV: an output container writing into an in-memory
sink that is drained after every mux, with PyAV's frame-size rechunking and sample-format
conversion in front of the codec. NaN samples become silence and ±inf full scale before anything
else sees them (a NaN inside soxr's filter or a codec would spread).

Latency, as input audio needed before the first audio bytes (Piper's 22.05 kHz fed in 50 ms
blocks; bounds derived from frame, priming, page and resampler delay in tests/test_web_encode.py):
pcm and wav 50 ms (the first block), mp3 and flac 100 ms, opus and aac 150 ms. Cost: about 1 ms
of CPU per 50 ms block for mp3, opus and aac, 0.1-0.25 ms for flac, wav and pcm.
"""

from __future__ import annotations

import contextlib
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from actors.audio.output import float_to_int16
from actors.audio.pcm import Audio, check_any_rate, to_mono
from actors.audio.resample import Resampler

__all__ = [
    "CONTENT_TYPES",
    "FORMATS",
    "OGG_PAGE_DURATION_US",
    "OUTPUT_RATE",
    "StreamEncoder",
    "make_encoder",
    "wav_stream_header",
]

FORMATS: tuple[str, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# OpenAI's pcm is 16-bit LE mono at 24 kHz; wav, mp3, aac and flac use the same rate.
OUTPUT_RATE = 24_000
# An Ogg page closes when the next packet would make it longer than this: with 20 ms Opus
# frames, a page of two or three packets, ~40-60 ms of audio behind the encoder (the muxer's
# default is 1 s). Shorter pages cost ~28 bytes of page header each (11 kbit/s at 20 ms).
OGG_PAGE_DURATION_US = 40_000
UNKNOWN_SIZE = 0xFFFFFFFF


def wav_stream_header(rate: int = OUTPUT_RATE, channels: int = 1, bits: int = 16) -> bytes:
    """A canonical 44-byte RIFF/WAVE PCM header whose RIFF and data sizes say "unknown length"."""
    block_align = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", UNKNOWN_SIZE)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block_align, block_align, bits)
        + b"data"
        + struct.pack("<I", UNKNOWN_SIZE)
    )


def _clean(x: Audio) -> Audio:
    """NaN → 0 (silence: a NaN carries no level), ±inf → ±1 (full scale), like the int16 conversion."""
    if np.isfinite(x).all():
        return x
    return np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).astype(np.float32, copy=False)


class StreamEncoder(ABC):
    """One response's encoder: ``encode`` each block as it arrives, ``finish`` once at the end.

    ``encode(block)`` takes mono float32 (±1.0 full scale; any shape ``to_mono`` accepts) at
    ``input_rate`` and returns the bytes ready to send now; the first call's bytes begin with the
    format's header (``pcm`` has none). ``finish()`` returns the rest: the resampler's and
    codec's tail and the container's trailer; afterwards the encoder takes nothing more.
    ``close()`` drops everything without a trailer (client gone); it is idempotent.
    """

    fmt: str
    content_type: str
    output_rate: int

    def __init__(self, fmt: str, input_rate: int, output_rate: int) -> None:
        self.fmt = fmt
        self.content_type = CONTENT_TYPES[fmt]
        self.input_rate = check_any_rate(input_rate, "input rate")
        self.output_rate = output_rate
        self._resampler = Resampler(self.input_rate, output_rate)
        self._done = False

    def encode(self, block: npt.ArrayLike) -> bytes:
        """Encode one block; return the bytes ready now (b"" only while the codec fills a frame)."""
        self._check_open("encode")
        x = _clean(to_mono(block, "audio block"))
        return self._encode(self._resampler.process(x))

    def finish(self) -> bytes:
        """End of stream: the codec's tail and the trailer. Call once."""
        self._check_open("finish")
        tail = self._resampler.flush()
        self._done = True
        return self._finish(tail)

    def close(self) -> None:
        """Drop the stream without finishing it (the client went away)."""
        self._done = True
        self._release()

    def _check_open(self, what: str) -> None:
        if self._done:
            raise RuntimeError(f"{self.fmt} encoder: {what}() after finish() or close(); make a new encoder per stream")

    @abstractmethod
    def _encode(self, x: Audio) -> bytes: ...

    @abstractmethod
    def _finish(self, tail: Audio) -> bytes: ...

    def _release(self) -> None:  # noqa: B027 — only the codec encoders hold anything to release
        pass


class PcmEncoder(StreamEncoder):
    """``pcm`` (and, with ``header``, ``wav``): soxr to 24 kHz, then int16 little-endian."""

    def __init__(self, fmt: str, input_rate: int, header: bytes = b"") -> None:
        super().__init__(fmt, input_rate, OUTPUT_RATE)
        self._header = header

    def _pcm(self, x: Audio) -> bytes:
        return float_to_int16(x).astype("<i2", copy=False).tobytes() if len(x) else b""

    def _take_header(self) -> bytes:
        header, self._header = self._header, b""
        return header

    def _encode(self, x: Audio) -> bytes:
        return self._take_header() + self._pcm(x)

    def _finish(self, tail: Audio) -> bytes:
        return self._take_header() + self._pcm(tail)


@dataclass(frozen=True)
class _CodecPlan:
    """How one compressed format is made: muxer, codec, rate and the options that make it stream."""

    container: str
    codec: str
    rate: int
    bit_rate: int | None
    container_options: dict[str, str] = field(default_factory=dict)
    codec_options: dict[str, str] = field(default_factory=dict)


_PLANS: dict[str, _CodecPlan] = {
    "opus": _CodecPlan(
        "ogg", "libopus", 48_000, 32_000, {"page_duration": str(OGG_PAGE_DURATION_US)}, {"frame_duration": "20"}
    ),
    # write_xing=0: the Xing/LAME frame can only be filled in by seeking back, which a stream can't.
    "mp3": _CodecPlan("mp3", "libmp3lame", OUTPUT_RATE, 64_000, {"id3v2_version": "4", "write_xing": "0"}),
    "aac": _CodecPlan("adts", "aac", OUTPUT_RATE, 64_000, {"write_id3v2": "1"}),
    # No padding block: it only serves rewriting the metadata in place, and a stream is never rewound.
    "flac": _CodecPlan("flac", "flac", OUTPUT_RATE, None, {"metadata_header_padding": "0"}, {"frame_size": "1152"}),
}


class _Sink:
    """Write-only file object for the muxer. No seek/tell: PyAV then marks the output unseekable,
    so no muxer plans to rewind and rewrite a header, and FFmpeg flushes after every packet."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: Any) -> int:
        self._buf += data
        return len(data)

    def drain(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class AvEncoder(StreamEncoder):
    """``opus``, ``mp3``, ``aac``, ``flac``: soxr to the codec's rate, then PyAV encode + mux into a sink."""

    def __init__(self, fmt: str, input_rate: int) -> None:
        plan = _PLANS[fmt]
        super().__init__(fmt, input_rate, plan.rate)
        self._sink = _Sink()
        # bitexact: the same input gives the same bytes (a fixed Ogg serial, no version strings).
        options = {"fflags": "+bitexact", **plan.container_options}
        self._container: Any = av.open(self._sink, mode="w", format=plan.container, options=options)
        try:
            stream: Any = self._container.add_stream(plan.codec, rate=plan.rate, layout="mono")
            if plan.bit_rate is not None:
                stream.bit_rate = plan.bit_rate
            stream.codec_context.options = {"flags": "+bitexact", **plan.codec_options}
            self._stream = stream
            self._container.start_encoding()  # the header goes into the sink now; encode() sends it
        except Exception:
            self._container.close()
            raise
        self._pts = 0

    def _frame(self, x: Audio) -> Any:
        frame = av.AudioFrame.from_ndarray(np.clip(x, -1.0, 1.0)[None, :], format="flt", layout="mono")
        frame.sample_rate = self.output_rate
        frame.pts = self._pts
        self._pts += len(x)
        return frame

    def _encode(self, x: Audio) -> bytes:
        if len(x):
            self._container.mux(self._stream.encode(self._frame(x)))
        return self._sink.drain()

    def _finish(self, tail: Audio) -> bytes:
        if len(tail):
            self._container.mux(self._stream.encode(self._frame(tail)))
        self._container.mux(self._stream.encode(None))
        self._container.close()  # writes the trailer (Ogg's last page, FLAC's last frame…)
        return self._sink.drain()

    def _release(self) -> None:
        with contextlib.suppress(Exception):  # abandoning a stream: whatever the muxer says is moot
            self._container.close()
        self._sink.drain()


def make_encoder(fmt: str, input_rate: int) -> StreamEncoder:
    """The encoder for ``response_format`` ``fmt`` fed mono float32 at ``input_rate`` Hz."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown response_format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if fmt == "pcm":
        return PcmEncoder(fmt, input_rate)
    if fmt == "wav":
        return PcmEncoder(fmt, input_rate, header=wav_stream_header())
    return AvEncoder(fmt, input_rate)

"""The web actor's streaming encoders (actors/web/encode.py), on real Piper speech fed in 50 ms blocks.

For every ``response_format``: the first ``encode`` returns bytes; audio bytes follow the header
within a bound derived from the format's resampler delay, codec frame, priming and Ogg page (input
audio, never wall clock); the concatenated stream decodes with PyAV (ffmpeg) to mono audio of the
input's duration within one codec frame plus priming, and carries the input (cross-correlation).
``pcm`` and ``wav`` match the input resampled to 24 kHz at ≥ 0.999 correlation, ``flac`` too.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import cache

import av
import numpy as np
import numpy.typing as npt
import pytest

from actors.audio.resample import resample
from actors.web.encode import (
    CONTENT_TYPES,
    FORMATS,
    OUTPUT_RATE,
    StreamEncoder,
    make_encoder,
)

F32 = npt.NDArray[np.float32]
TEXT = "The lamp burned low in the crypt. Nobody had come down those stairs for a hundred years."
BLOCK_S = 0.05
# soxr HQ holds back at most ~41 ms of output (Resampler.delay_frames, 22.05 → 24/48 kHz).
RESAMPLER_DELAY_S = 0.045


@dataclass(frozen=True)
class Codec:
    """What bounds a format's latency and length: frame, priming (decoder output before the
    input's first sample, or padding a decoder keeps), and the Ogg page that holds packets back."""

    rate: int  # the rate the stream decodes at
    frame: int  # samples per codec frame at ``rate``
    priming: int  # encoder delay a decoder may leave in, samples at ``rate``
    page_s: float = 0.0  # Ogg: a page closes when the packet after pref_duration arrives
    lossless: bool = False

    def first_audio_bound_s(self) -> float:
        """Input needed before audio bytes: the resampler's delay, the codec's priming and one
        frame (to be encoded), the page (plus the packet that closes it), and one block of
        granularity, since output is only looked at between blocks."""
        frame_s = self.frame / self.rate
        page = self.page_s + frame_s if self.page_s else 0.0
        return RESAMPLER_DELAY_S + (self.priming + self.frame) / self.rate + page + BLOCK_S

    def length_tolerance(self) -> int:
        return self.frame + self.priming


CODECS: dict[str, Codec] = {
    "pcm": Codec(OUTPUT_RATE, 1, 0, lossless=True),
    "wav": Codec(OUTPUT_RATE, 1, 0, lossless=True),
    # FLAC: 1152-sample blocks, no priming; lossless at 16 bits.
    "flac": Codec(OUTPUT_RATE, 1152, 0, lossless=True),
    # MPEG-2 Layer III: 576-sample granules; LAME's delay 576 + 529 (no LAME tag in a stream to undo it).
    "mp3": Codec(OUTPUT_RATE, 576, 1105),
    # AAC-LC: 1024-sample frames, 1024 of priming (ADTS has nowhere to say so).
    "aac": Codec(OUTPUT_RATE, 1024, 1024),
    # Opus: 20 ms frames at 48 kHz, 312 samples of lookahead (pre-skip); 40 ms Ogg pages.
    "opus": Codec(48_000, 960, 312, page_s=0.040),
}


@cache
def speech() -> tuple[F32, int]:
    """Two sentences from the project's Piper voice, generator noise off (deterministic)."""
    from actors.tts.base import CancelToken
    from actors.tts.piper import PiperEngine

    engine = PiperEngine(noise_scale=0.0, noise_w_scale=0.0)
    info = engine.load_voice("")
    audio = np.concatenate(list(engine.synthesize(TEXT, "", CancelToken())))
    engine.close()
    return audio.astype(np.float32), info.sample_rate


@dataclass
class Encoded:
    header: bytes  # what a first encode() of an empty block returns
    chunks: list[bytes]  # one per 50 ms block, then finish()
    first_audio_s: float  # input fed when the output first grew beyond the header

    @property
    def data(self) -> bytes:
        return self.header + b"".join(self.chunks)


def blocks(x: F32, rate: int) -> list[F32]:
    n = round(BLOCK_S * rate)
    return [x[i : i + n] for i in range(0, len(x), n)]


def encode_all(fmt: str, x: F32, rate: int) -> Encoded:
    enc = make_encoder(fmt, rate)
    header = enc.encode(np.zeros(0, np.float32))
    chunks: list[bytes] = []
    fed, first = 0, float("inf")
    for b in blocks(x, rate):
        chunks.append(enc.encode(b))
        fed += len(b)
        if first == float("inf") and sum(map(len, chunks)) > 0:
            first = fed / rate
    chunks.append(enc.finish())
    return Encoded(header, chunks, first)


def decode(fmt: str, data: bytes) -> tuple[F32, int]:
    """Decode with ffmpeg's demuxer for the format; mono float32 and its rate."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0, OUTPUT_RATE
    demuxer = {"opus": "ogg", "aac": "aac", "mp3": "mp3", "flac": "flac", "wav": "wav"}[fmt]
    with av.open(io.BytesIO(data), mode="r", format=demuxer) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.channels == 1, f"{fmt}: {stream.codec_context.channels} channels"
        rate = stream.codec_context.sample_rate
        frames = [f.to_ndarray().astype(np.float32).reshape(-1) for f in container.decode(stream)]
    return (np.concatenate(frames) if frames else np.zeros(0, np.float32)), rate


def best_correlation(y: F32, ref: F32, max_lag: int) -> tuple[float, int]:
    """Normalized cross-correlation of ``y`` against ``ref`` at the best lag in [0, max_lag]
    (``y`` later than ``ref`` by lag samples, as priming makes it)."""
    n = len(ref) + max_lag
    y = np.pad(y[:n], (0, max(0, n - len(y))))
    size = 1 << (2 * n - 1).bit_length()
    xc = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(ref, size)), size)[: max_lag + 1]
    lag = int(np.argmax(xc))
    seg = y[lag : lag + len(ref)]
    return float(xc[lag] / (np.linalg.norm(seg) * np.linalg.norm(ref) + 1e-12)), lag


@pytest.fixture(scope="module")
def piper() -> tuple[F32, int]:
    return speech()


@pytest.mark.parametrize("fmt", FORMATS)
def test_stream_starts_at_once_and_decodes_to_the_input(fmt: str, piper: tuple[F32, int]) -> None:
    x, rate = piper
    codec = CODECS[fmt]
    assert len(x) > 3 * rate, "two sentences of speech"

    enc = make_encoder(fmt, rate)
    first = enc.encode(blocks(x, rate)[0])
    assert first, f"{fmt}: the first encode() returned nothing"
    assert enc.content_type == CONTENT_TYPES[fmt]
    enc.close()

    out = encode_all(fmt, x, rate)
    assert fmt == "pcm" or out.header, f"{fmt}: no header before the audio"
    bound = codec.first_audio_bound_s()
    assert bound < 1.0
    assert out.first_audio_s <= bound, (
        f"{fmt}: first audio bytes after {out.first_audio_s:.3f} s of input, bound {bound:.3f} s"
    )

    y, out_rate = decode(fmt, out.data)
    assert out_rate == codec.rate
    expected = round(len(x) * out_rate / rate)
    assert abs(len(y) - expected) <= codec.length_tolerance(), (
        f"{fmt}: decoded {len(y)} samples, input is {expected} at {out_rate} Hz, tolerance {codec.length_tolerance()}"
    )

    ref = resample(x, rate, out_rate)
    corr, lag = best_correlation(y, ref, codec.length_tolerance())
    if codec.lossless:
        assert lag == 0 and corr >= 0.999, f"{fmt}: correlation {corr:.5f} at lag {lag}"
    else:
        # Lossy codecs at speech bitrates keep the waveform closely, though not exactly.
        assert corr >= 0.9, f"{fmt}: correlation {corr:.4f} at lag {lag}"
        assert lag <= codec.priming + codec.frame


def test_pcm_is_the_resampled_input_as_int16_le(piper: tuple[F32, int]) -> None:
    x, rate = piper
    data = encode_all("pcm", x, rate).data
    ref = resample(x, rate, OUTPUT_RATE)
    expected = np.clip(np.rint(ref * 32767.0), -32768, 32767).astype("<i2").tobytes()
    assert data == expected


def test_wav_header_says_24k_mono_16bit_unknown_length(piper: tuple[F32, int]) -> None:
    x, rate = piper
    out = encode_all("wav", x, rate)
    h = out.header
    assert len(h) == 44
    riff, riff_size, wave, fmt_id, fmt_size = struct.unpack("<4sI4s4sI", h[:20])
    tag, channels, sample_rate, byte_rate, align, bits = struct.unpack("<HHIIHH", h[20:36])
    data_id, data_size = struct.unpack("<4sI", h[36:44])
    assert (riff, wave, fmt_id, data_id) == (b"RIFF", b"WAVE", b"fmt ", b"data")
    assert (riff_size, data_size) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert (fmt_size, tag, channels, sample_rate, bits) == (16, 1, 1, 24_000, 16)
    assert (byte_rate, align) == (48_000, 2)
    assert out.data[44:] == encode_all("pcm", x, rate).data


def test_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        make_encoder("ogg", 22050)
    for fmt in FORMATS:
        assert fmt in str(err.value)
    assert set(CONTENT_TYPES) == set(FORMATS)


@pytest.mark.parametrize("fmt", ["pcm", "wav", "flac"])
def test_empty_input_is_a_valid_empty_stream(fmt: str) -> None:
    data = make_encoder(fmt, 22050).finish()
    y, _ = decode(fmt, data)
    assert len(y) == 0
    assert (fmt == "pcm") == (data == b"")


@pytest.mark.parametrize("fmt", ["mp3", "aac", "opus"])
def test_empty_input_ends_with_the_header_alone(fmt: str) -> None:
    """No valid empty stream exists here: MP3 and ADTS are nothing but their frames (a decoder
    finds the format from the first one), and FFmpeg's Ogg muxer writes no end-of-stream page
    without a packet. So finish() adds nothing after the header: no silence is invented."""
    enc = make_encoder(fmt, 22050)
    header = enc.encode(np.zeros(0, np.float32))
    assert header
    assert enc.finish() == b""
    with pytest.raises(av.error.FFmpegError):
        decode(fmt, header)


@pytest.mark.parametrize("fmt", FORMATS)
def test_encoders_share_nothing(fmt: str, piper: tuple[F32, int]) -> None:
    """Two renders at once, blocks interleaved, give the bytes each gives alone."""
    x, rate = piper
    other = x[::-1].copy()
    alone_a, alone_b = encode_all(fmt, x, rate).data, encode_all(fmt, other, rate).data
    a, b = make_encoder(fmt, rate), make_encoder(fmt, rate)
    out_a, out_b = [a.encode(np.zeros(0, np.float32))], [b.encode(np.zeros(0, np.float32))]
    for ba, bb in zip(blocks(x, rate), blocks(other, rate), strict=True):
        out_a.append(a.encode(ba))
        out_b.append(b.encode(bb))
    out_a.append(a.finish())
    out_b.append(b.finish())
    assert b"".join(out_a) == alone_a
    assert b"".join(out_b) == alone_b


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_is_silence_and_inf_full_scale(fmt: str, piper: tuple[F32, int]) -> None:
    """A NaN must not spread through the resampler or codec: the stream equals the one with NaN → 0, ±inf → ±1."""
    x, rate = piper
    x = x[:rate].copy()
    bad = x.copy()
    bad[1000:1100] = np.nan
    bad[2000] = np.inf
    bad[3000] = -np.inf
    clean = x.copy()
    clean[1000:1100] = 0.0
    clean[2000], clean[3000] = 1.0, -1.0
    assert encode_all(fmt, bad, rate).data == encode_all(fmt, clean, rate).data


def test_encode_after_finish_is_refused() -> None:
    enc: StreamEncoder = make_encoder("opus", 22050)
    enc.finish()
    with pytest.raises(RuntimeError, match="new encoder"):
        enc.encode(np.zeros(100, np.float32))

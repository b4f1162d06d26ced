"""Piper on streaming VITS decoding: a chunk's first audio leaves before the chunk is decoded.

Built on the PyPI package ``streaming-vits`` (``streaming_vits``). A Piper voice's ``.onnx``
is split once into a *frontend* graph (text encoder, duration predictor, alignment, prior
noise: cheap at sentence scale, run once per sentence) and a *decoder* graph (flow + HiFi-GAN,
a finite receptive field over frames). The decoder then runs in windows over the frame axis,
each with ``left``/``right`` margin frames that are decoded and dropped, so the windows
concatenate to the full decode (both noise draws live in the frontend, so overlapping windows
see the same noise). Blocks leave ``synthesize`` as each window finishes; the cancel token is
checked before every window.

What skald does itself, and why:

* **Phonemes** come from piper-tts (``PiperVoice.phonemize`` / ``phonemes_to_ids``), the
  same ids the whole-chunk path speaks; ``streaming_vits``' own phonemizer needs the
  ``espeak-ng`` binary or ``piper-phonemize``, and its ids can differ from piper-tts 1.8's. So
  ``StreamingTTS`` is built by ``_SkaldStreamingTTS`` (same attributes, no phonemizer of its
  own); its decoding, calibration and verification code is the library's.
* **Caches** go to skald's cache directory, keyed by model hash and machine, never next to the
  model (``actors.tts.piper_streaming_cache``).
* **Level**: whole-chunk Piper peak-normalizes each sentence after decoding it, which a stream
  cannot do. The streaming engine applies one gain per voice instead, ``STREAM_PEAK`` over the
  peak of a deterministic decode of the calibration sentence (so sentences are no longer
  levelled one by one; the fallback path still is).

Calibration (``skald voice calibrate``, ``actors.tts.piper_streaming_calibrate``) runs the library's
``calibrate`` (margins: a model property; decode schedule: a device property) and stores the
profile keyed by model hash and machine. Until a profile exists the built-in conservative one
(``BUILTIN_PROFILE``) is used; skald never calibrates in the background (about a minute of
full CPU beside real-time synthesis on a small machine would starve it). A profile from another
machine or model, or for the other decoder kind, is ignored with a log line.

Degradation: when a voice cannot be split, its profile is unreadable or invalid, or the
windowed decode does not reproduce the full decode at load (margins too small), that voice is
spoken by the whole-chunk Piper path and the reason is queued in ``degradations`` (the worker
sends each as an ``engine_unavailable`` error event).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actors.tts.base import CALIBRATION_TEXT, CancelToken, EngineError
from actors.tts.piper import DEFAULT_VOICE, PiperEngine
from actors.tts.piper_streaming_cache import (
    VoiceCache,
    builtin_profile,
    default_cache_dir,
    ensure_split,
    load_profile,
    validate_profile,
)

log = logging.getLogger("skald.tts.piper_streaming")

#: Peak of a deterministic decode of ``CALIBRATION_TEXT`` after the voice's gain (whole-chunk
#: Piper normalizes every sentence to 1.0; a little headroom keeps louder sentences unclipped).
STREAM_PEAK = 0.9
#: Largest |windowed − full| accepted when a voice is opened (the acceptance bound is 1e-4 with
#: the library's calibrated margins; this only catches a broken profile).
VERIFY_TOLERANCE = 1e-3

#: onnxruntime's intra-op threads spin-wait between runs by default (see the session options).
ORT_SPINNING = False

#: Queued audio from which a chunk starts with the largest window: its decode (256 frames, 3 s of
#: audio, plus margins) takes 0.15 s on the 2-core VM and stays under this at 8 times that load.
BIG_WINDOWS_AHEAD_S = 1.5

#: The speaker embedding fed to a single-speaker voice's cached-state decoder (its zero convs).
_NO_SPEAKER = np.zeros((1, 1, 1), dtype=np.float32)


def _streaming_tts_class() -> type:
    from streaming_vits import StreamingTTS

    class _SkaldStreamingTTS(StreamingTTS):
        """``StreamingTTS`` over skald's cache and piper-tts's phonemes (see the module docstring)."""

        def __init__(self, model_path: Path, voice: Any, cache: VoiceCache, profile: Any, threads: int) -> None:
            import onnxruntime as ort

            self.model_path = model_path
            self.config = {
                "audio": {"sample_rate": int(voice.config.sample_rate)},
                "inference": {
                    "noise_scale": voice.config.noise_scale,
                    "length_scale": voice.config.length_scale,
                    "noise_w": voice.config.noise_w_scale,
                },
            }
            self.meta = ensure_split(cache, int(voice.config.sample_rate))
            self.dir = cache.graphs
            self.hop = self.meta.hop
            self.sample_rate = self.meta.sample_rate
            self.profile = profile
            self.threads = threads
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            # No arena here (unlike whole-chunk Piper, piper.session_options): it would grow to the
            # largest window seen, and release_memory cannot shrink these two graphs without a
            # run of each; the windows are short (<= 256 frames), so their buffers are a few MB.
            opts.enable_cpu_mem_arena = False
            if not ORT_SPINNING:
                # Many short runs per chunk: idle intra-op threads would spin between them, burning
                # the CPU the audio callback and the other actors share.
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            cpu = ["CPUExecutionProvider"]
            self.fe = ort.InferenceSession(str(self.dir / self.meta.frontend), opts, providers=cpu)
            self.dec = ort.InferenceSession(str(self.dir / self.meta.decoder), opts, providers=cpu)
            seam = self.meta.seam
            self._in = [seam.z_p, seam.mask] + ([seam.g] if seam.g else [])
            self.multi_speaker = seam.g is not None
            self.cached = None
            self.piper_voice = voice
            self.phonemizer = None

        def use_cached_decoder(self, path: Path) -> None:
            from streaming_vits.cached import CachedDecoder

            self.cached = CachedDecoder(path, self.threads, "cpu")

        def frontend(self, ids: Any, sid: int = 0, scales: Any = None) -> tuple[Any, Any, Any]:
            z_p, mask, g = super().frontend(ids, sid, scales)
            return z_p, mask, self._speaker(g)

        def seeded_frontend(self, ids: Any, sid: int = 0, scales: Any = None, seed: int = 1234) -> tuple[Any, Any, Any]:
            z_p, mask, g = super().seeded_frontend(ids, sid, scales, seed)
            return z_p, mask, self._speaker(g)

        def _speaker(self, g: Any) -> Any:
            # A single-speaker voice has no embedding; its cached-state decoder takes a zero one
            # (the windowed decoder's feed drops it: its graph has no such input).
            return _NO_SPEAKER if g is None and self.cached is not None else g

        def phoneme_ids(self, text: str) -> tuple[np.ndarray, int]:
            """All sentences' ids in one utterance (calibration measures one long input)."""
            voice = self.piper_voice
            ids: list[int] = []
            for phonemes in voice.phonemize(text):
                if phonemes:
                    sentence = voice.phonemes_to_ids(phonemes)
                    ids.extend(sentence if not ids else sentence[1:])  # one BOS
            return np.array([ids], dtype=np.int64), 0

    return _SkaldStreamingTTS


@dataclass
class VoiceStream:
    """One voice's streaming decoder, profile and level."""

    tts: Any  # _SkaldStreamingTTS
    cache: VoiceCache
    profile_origin: str
    gain: float = 1.0
    verify_error: float = 0.0
    windows: int = 0  # decode windows run (tests: a cancel stops within one)
    schedule: list[int] = field(default_factory=list)  # the profile's, first windows merged (``first_window_s``)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def decoder(self) -> str:
        return "cached-state" if self.tts.cached is not None else "windowed"

    def describe(self) -> dict[str, Any]:
        p = self.tts.profile
        return {
            "decoder": self.decoder,
            "profile": self.profile_origin,
            "margins": [p.left, p.right],
            "schedule": list(p.schedule),
            "schedule_used": list(self.schedule),
            "threads": self.tts.threads,
            "gain": round(self.gain, 4),
            "verify_max_abs_diff": self.verify_error,
            "cache": str(self.cache.root),
        }


def merged_schedule(schedule: list[int], first_frames: int) -> list[int]:
    """``schedule`` with its leading windows merged until the first is at least ``first_frames``."""
    out = list(schedule)
    while len(out) > 1 and out[0] < first_frames:
        out[0:2] = [out[0] + out[1]]
    if out[0] < first_frames:  # one window left: it repeats, so it may simply grow
        out[0] = first_frames
    return out


class StreamingPiperEngine(PiperEngine):
    """Piper voices decoded in windows (``streaming_vits``); per voice, whole-chunk Piper when
    streaming cannot be set up (the reason lands in ``degradations``)."""

    def __init__(
        self,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int = 0,
        use_cached_decoder: bool = True,
        first_window_s: float = 0.0,
    ) -> None:
        """``first_window_s``: the schedule's leading windows are merged until the first holds this
        much audio. Playback waits for the pre-buffer (``Settings.stage_start_s``) anyway, so smaller
        first windows would only add margin frames (decoded and dropped) without sound sooner."""
        super().__init__(noise_scale, noise_w_scale)
        self.first_window_s = first_window_s
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.threads = threads
        self.use_cached_decoder = use_cached_decoder
        self.streams: dict[str, VoiceStream] = {}
        self.degradations: list[str] = []  # drained by the worker into error events
        self._degradations_lock = threading.Lock()

    def streams_voice(self, voice: str) -> bool:
        """Whether ``voice`` (loaded) is decoded in windows, not by whole-chunk Piper."""
        return (voice or DEFAULT_VOICE) in self.streams

    def take_degradations(self) -> list[str]:
        with self._degradations_lock:
            taken, self.degradations = self.degradations, []
        return taken

    def load_voice(self, voice: str) -> Any:
        voice = voice or DEFAULT_VOICE
        if voice in self._info:
            return self._info[voice]
        info = super().load_voice(voice)  # whole-chunk model: phonemes, the fallback, warm-up
        try:
            self.streams[voice] = self.open_stream(voice)
        except Exception as exc:  # a split, profile or verification failure never loses the voice
            reason = (
                f"piper streaming off for voice {voice!r} ({type(exc).__name__}: {exc}); whole-chunk Piper speaks it"
            )
            log.warning("%s", reason)
            with self._degradations_lock:
                self.degradations.append(reason)
        return info

    def _threads(self) -> int:
        return self.threads or min(4, os.cpu_count() or 1)

    def open_stream(self, voice: str, profile: Any | None = None) -> VoiceStream:
        """Split (cached), profile, sessions; then verify the windowed decode and set the level."""
        model = self._voices[voice]
        cache = VoiceCache.for_model(self.cache_dir, self._model_path(voice))
        threads = self._threads()
        tts = _streaming_tts_class()(cache.model_path, model, cache, builtin_profile(threads), threads)
        if self.use_cached_decoder and cache.cached_decoder.is_file():
            try:
                tts.use_cached_decoder(cache.cached_decoder)
            except Exception as exc:  # the windowed decoder stays: it needs nothing exported
                log.warning("cached-state decoder %s not used: %s", cache.cached_decoder, exc)
        decoder = "cached-state" if tts.cached is not None else "windowed"
        origin = "given"
        if profile is None:
            profile, origin = load_profile(cache, decoder, threads)
        validate_profile(profile)
        tts.profile = profile
        if profile.threads != threads and origin != "given":
            log.info("streaming profile calibrated with %d threads; running with %d", profile.threads, threads)
        first = int(np.ceil(self.first_window_s * tts.sample_rate / tts.hop))
        stream = VoiceStream(tts, cache, origin, schedule=merged_schedule(list(profile.schedule), first))
        # Verification doubles as the decoder's warm-up and measures the level.
        ids = self._sentence_ids(voice, CALIBRATION_TEXT)[0]
        z_p, mask, g = tts.frontend(ids, 0, self._scales(voice, deterministic=True))
        full = tts.decode_all(z_p, mask, g)
        streamed = np.concatenate(list(self._windows(stream, z_p, mask, g, CancelToken(), count=False)))
        if len(streamed) != len(full):
            raise EngineError(f"windowed decode gave {len(streamed)} samples, the full decode {len(full)}")
        stream.verify_error = float(np.abs(streamed - full).max())
        if not stream.verify_error <= VERIFY_TOLERANCE:
            raise EngineError(
                f"windowed decode differs from the full decode by {stream.verify_error:.2e} "
                f"(> {VERIFY_TOLERANCE:g}): margins L{profile.left}/R{profile.right} too small; "
                "run `skald voice calibrate`"
            )
        peak = float(np.abs(full).max())
        stream.gain = STREAM_PEAK / peak if peak > 1e-6 else 1.0
        return stream

    # ------------------------------------------------------------------ synthesis
    def _scales(self, voice: str, deterministic: bool = False) -> np.ndarray:
        cfg = self._voices[voice].config  # type: ignore[attr-defined]
        noise = 0.0 if deterministic else (cfg.noise_scale if self._noise_scale is None else self._noise_scale)
        noise_w = 0.0 if deterministic else (cfg.noise_w_scale if self._noise_w_scale is None else self._noise_w_scale)
        return np.array([noise, cfg.length_scale, noise_w], dtype=np.float32)

    def _sentence_ids(self, voice: str, text: str) -> list[np.ndarray]:
        """Piper's own sentence split and phoneme ids (what whole-chunk Piper speaks)."""
        model = self._voices[voice]
        return [
            np.array([model.phonemes_to_ids(phonemes)], dtype=np.int64)  # type: ignore[attr-defined]
            for phonemes in model.phonemize(text)  # type: ignore[attr-defined]
            if phonemes
        ]

    def _windows(
        self, stream: VoiceStream, z_p: Any, mask: Any, g: Any, cancel: CancelToken, start: int = 0, count: bool = True
    ) -> Iterator[np.ndarray]:
        """One sentence's audio, window by window (schedule position ``start``); the cancel token
        is read before every window, so a cancel costs at most the window in flight."""
        tts = stream.tts
        schedule = stream.schedule
        if tts.cached is not None:
            with stream.lock:  # the cached-state decoder carries state: one utterance at a time
                for chunk in tts._stream_cached(z_p, g, schedule[start:] or schedule[-1:], time.perf_counter()):
                    if count:
                        stream.windows += 1
                    yield np.asarray(chunk.audio, dtype=np.float32)
                    if cancel.cancelled:
                        return
            return
        frames = z_p.shape[2]
        a, i = 0, start
        while a < frames and not cancel.cancelled:
            b = min(a + schedule[min(i, len(schedule) - 1)], frames)
            audio = tts.decode_chunk(z_p, mask, g, a, b)
            if count:
                stream.windows += 1
            yield np.asarray(audio, dtype=np.float32)
            a, i = b, i + 1

    def synthesize(self, text: str, voice: str, cancel: CancelToken, speed: float = 1.0) -> Iterator[np.ndarray]:
        if speed != 1.0:
            # Another speed is another length scale for the frontend: whole-chunk Piper speaks it.
            return super().synthesize(text, voice, cancel, speed=speed)
        return self.synthesize_ahead(text, voice, cancel, 0.0)

    def synthesize_ahead(self, text: str, voice: str, cancel: CancelToken, ahead_s: float) -> Iterator[np.ndarray]:
        """``synthesize`` for a chunk that ``ahead_s`` seconds of queued audio will cover: with at
        least ``BIG_WINDOWS_AHEAD_S`` queued (a request's later chunks, while earlier ones play)
        the small first windows buy nothing, so it starts at the schedule's largest window and
        decodes far fewer margin frames."""
        voice = voice or DEFAULT_VOICE
        stream = self.streams.get(voice)
        if stream is None:
            yield from super().synthesize(text, voice, cancel)
            return
        scales = self._scales(voice)
        # The schedule goes on across a chunk's sentences: later ones take big windows.
        position = len(stream.schedule) - 1 if ahead_s >= BIG_WINDOWS_AHEAD_S else 0
        for ids in self._sentence_ids(voice, text):
            if cancel.cancelled:
                return
            z_p, mask, g = stream.tts.frontend(ids, 0, scales)
            for audio in self._windows(stream, z_p, mask, g, cancel, start=position):
                position += 1
                yield np.clip(audio * stream.gain, -1.0, 1.0).astype(np.float32, copy=False)
                if cancel.cancelled:
                    return

    def full_decode(self, text: str, voice: str = "") -> np.ndarray:
        """The same text through one full decode per sentence (same frontend call, same gain):
        what the streamed blocks must add up to with deterministic noise (tests, benchmarks)."""
        voice = voice or DEFAULT_VOICE
        stream = self.streams[voice]
        parts = []
        for ids in self._sentence_ids(voice, text):
            z_p, mask, g = stream.tts.frontend(ids, 0, self._scales(voice))
            parts.append(np.clip(stream.tts.decode_all(z_p, mask, g) * stream.gain, -1.0, 1.0).astype(np.float32))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def close(self) -> None:
        self.streams.clear()
        super().close()

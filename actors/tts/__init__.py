"""TTS engines behind one interface (``actors.tts.base.TtsEngine``).

Engines are imported lazily so the audio consumer, which never synthesizes, never loads
onnxruntime or torch.

* ``piper``: ONNX on CPU, the embedded default voice (``actors.tts.piper``); with
  ``tts.piper_streaming`` decoded in windows so a chunk's first audio leaves early
  (``actors.tts.piper_streaming``, on the ``streaming-vits`` package).
* ``xtts``: XTTS v2 on CUDA (or CPU for offline rendering) with cloned voice profiles
  (``actors.tts.xtts``; its model directory in ``actors.tts.xtts_model``; profiles in
  ``actors.tts.voices``). Random-weight models for tests and benchmarks are built by
  ``python -m tests.support.xtts_random``, outside the engine room.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.tts.base import CancelToken, EngineError, TtsEngine, VoiceInfo

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = ["CancelToken", "EngineError", "TtsEngine", "VoiceInfo", "create_engine", "engine_sample_rate"]

ENGINES = ("piper", "xtts")


def create_engine(name: str, settings: Settings | None = None) -> TtsEngine:
    """Build the engine called ``name``; ``EngineError`` lists the available ones."""
    if name == "piper":
        from actors.tts.piper import PiperEngine

        if settings is None:
            return PiperEngine()
        tts = settings.tts
        noise = tts.noise_scale if tts.noise_scale >= 0 else None
        noise_w = tts.noise_w_scale if tts.noise_w_scale >= 0 else None
        if tts.piper_streaming:
            from actors.tts.piper_streaming import StreamingPiperEngine, default_cache_dir

            return StreamingPiperEngine(
                noise,
                noise_w,
                cache_dir=default_cache_dir(tts.piper_cache_dir),
                first_window_s=settings.stage_start_s,
            )
        return PiperEngine(noise, noise_w, threads=tts.piper_threads, spinning=tts.piper_spinning)
    if name == "xtts":
        from actors.tts.xtts import XttsEngine
        from config.settings import load_settings

        # Without settings, the defaults plus SKALD_* variables (SKALD_XTTS_MODEL_DIR ...).
        return XttsEngine.from_settings(settings if settings is not None else load_settings())
    raise EngineError(f"unknown TTS engine {name!r}; available: {', '.join(ENGINES)}")


def engine_sample_rate(name: str, voice: str) -> int:
    """The output rate of ``voice`` without loading the model (the supervisor sizes the ring)."""
    if name == "piper":
        from actors.tts.piper import voice_sample_rate

        return voice_sample_rate(voice)
    if name == "xtts":
        from actors.tts.xtts import SAMPLE_RATE  # a constant: no torch, no model load

        return SAMPLE_RATE
    raise EngineError(f"unknown TTS engine {name!r}; available: {', '.join(ENGINES)}")
